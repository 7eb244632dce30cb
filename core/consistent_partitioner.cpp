#include "core/consistent_partitioner.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>

#include "core/partition_hash.hpp"

namespace keyway::core {

consistent_partitioner::consistent_partitioner(std::size_t slots, std::uint64_t seed)
    : seed_(seed), shift_(64 - static_cast<unsigned>(std::countr_zero(slots))), table_(slots, 0) {
  assert(slots >= 2 && std::has_single_bit(slots));
}

std::uint32_t consistent_partitioner::do_pick(std::span<const std::byte> key) noexcept {
  return ids_[table_[detail::key_hash(key, seed_) >> shift_]];
}

double consistent_partitioner::score(std::size_t m, std::uint32_t slot) const noexcept {
  // 52 bits, so that h + 0.5 is exact and u below stays strictly inside (0, 1).
  const std::uint64_t h = detail::pair_hash(slot, ids_[m], seed_) >> 12;
  if (uniform_) return static_cast<double>(h);  // -w / ln(u) is increasing in h for fixed w
  const double u = (static_cast<double>(h) + 0.5) * 0x1p-52;
  return -weights_[m] / std::log(u);
}

std::size_t consistent_partitioner::find(std::uint32_t member) const noexcept {
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (ids_[i] == member && weights_[i] > 0) return i;
  }
  return ids_.size();
}

void consistent_partitioner::refresh_uniform() noexcept {
  double first = 0;
  uniform_ = true;
  for (const double w : weights_) {
    if (w == 0) continue;
    if (first == 0) first = w;
    if (w != first) {
      uniform_ = false;
      return;
    }
  }
}

result<void> consistent_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  if (find(member) != ids_.size()) return unexpected(errc::duplicate_member);
  if (live_ == max_members) return unexpected(errc::invalid_argument);

  std::size_t m;
  if (!free_.empty()) {
    m = free_.back();
    free_.pop_back();
    ids_[m] = member;
    weights_[m] = weight;
  } else {
    m = ids_.size();
    free_.reserve(m + 1);  // so that remove() never allocates
    ids_.push_back(member);
    weights_.push_back(weight);
  }
  ++live_;
  refresh_uniform();

  if (live_ == 1) {
    std::fill(table_.begin(), table_.end(), static_cast<std::uint16_t>(m));
    return {};
  }
  // The newcomer takes exactly the slots where it outscores the current owner.
  for (std::uint32_t s = 0; s < table_.size(); ++s) {
    const std::size_t owner = table_[s];
    if (beats(m, score(m, s), owner, score(owner, s))) table_[s] = static_cast<std::uint16_t>(m);
  }
  return {};
}

result<void> consistent_partitioner::remove(std::uint32_t member) {
  const std::size_t m = find(member);
  if (m == ids_.size()) return unexpected(errc::unknown_member);
  weights_[m] = 0;
  --live_;
  free_.push_back(static_cast<std::uint16_t>(m));
  refresh_uniform();
  if (live_ == 0) return {};

  std::vector<std::size_t> live;
  live.reserve(live_);
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (weights_[i] > 0) live.push_back(i);
  }
  // Only the leaver's slots are re-elected; every other slot keeps its owner, which
  // still outscores everyone left.
  for (std::uint32_t s = 0; s < table_.size(); ++s) {
    if (table_[s] != m) continue;
    std::size_t best = live[0];
    double best_score = score(best, s);
    for (std::size_t k = 1; k < live.size(); ++k) {
      const double sc = score(live[k], s);
      if (beats(live[k], sc, best, best_score)) {
        best = live[k];
        best_score = sc;
      }
    }
    table_[s] = static_cast<std::uint16_t>(best);
  }
  return {};
}

std::size_t consistent_partitioner::slots_owned(std::uint32_t member) const noexcept {
  const std::size_t m = find(member);
  if (m == ids_.size()) return 0;
  return static_cast<std::size_t>(std::count(table_.begin(), table_.end(), m));
}

}  // namespace keyway::core
