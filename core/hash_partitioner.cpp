#include "core/hash_partitioner.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <iterator>

#include "core/partition_hash.hpp"

namespace keyway::core {
namespace {

__extension__ using uint128 = unsigned __int128;  // g++/clang builtin; __extension__ for -Wpedantic

}  // namespace

std::uint32_t hash_partitioner::do_pick(std::span<const std::byte> key) noexcept {
  const std::uint64_t h = detail::key_hash(key, seed_);
  if (uniform_) return ids_[static_cast<std::size_t>((uint128{h} * ids_.size()) >> 64)];
  const auto it = std::upper_bound(thresholds_.begin(), thresholds_.end(), h);
  return ids_[static_cast<std::size_t>(it - thresholds_.begin())];
}

result<void> hash_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  const auto it = std::lower_bound(ids_.begin(), ids_.end(), member);
  if (it != ids_.end() && *it == member) return unexpected(errc::duplicate_member);
  const auto at = it - ids_.begin();
  weights_.insert(weights_.begin() + at, weight);
  ids_.insert(ids_.begin() + at, member);
  rebuild();
  return {};
}

result<void> hash_partitioner::remove(std::uint32_t member) {
  const auto it = std::lower_bound(ids_.begin(), ids_.end(), member);
  if (it == ids_.end() || *it != member) return unexpected(errc::unknown_member);
  weights_.erase(weights_.begin() + (it - ids_.begin()));
  ids_.erase(it);
  rebuild();
  return {};
}

void hash_partitioner::rebuild() {
  uniform_ =
      std::adjacent_find(weights_.begin(), weights_.end(), std::not_equal_to<>()) == weights_.end();
  thresholds_.clear();
  if (uniform_ || ids_.empty()) return;
  double total = 0;
  for (const double w : weights_) total += w;
  // Member i owns [thresholds_[i-1], thresholds_[i]); the last one owns up to 2^64.
  double cum = 0;
  for (std::size_t i = 0; i + 1 < weights_.size(); ++i) {
    cum += weights_[i];
    const double f = cum / total;
    thresholds_.push_back(f >= 1.0 ? UINT64_MAX : static_cast<std::uint64_t>(f * 0x1p64));
  }
}

}  // namespace keyway::core
