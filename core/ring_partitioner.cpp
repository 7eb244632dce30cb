#include "core/ring_partitioner.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>

#include "core/partition_hash.hpp"

namespace keyway::core {

ring_partitioner::ring_partitioner(std::size_t vnodes, std::uint64_t seed)
    : seed_(seed), vnodes_(vnodes) {
  assert(vnodes >= 1 && vnodes <= 65536);
}

std::uint32_t ring_partitioner::do_pick(std::span<const std::byte> key) noexcept {
  const std::uint64_t h = detail::key_hash(key, seed_);
  const auto it = std::upper_bound(points_.begin(), points_.end(), h);
  return it == points_.end() ? owners_.front()
                             : owners_[static_cast<std::size_t>(it - points_.begin())];
}

result<void> ring_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  if (std::find(members_.begin(), members_.end(), member) != members_.end()) {
    return unexpected(errc::duplicate_member);
  }
  const double want = std::max(1.0, std::round(static_cast<double>(vnodes_) * weight));
  if (want > static_cast<double>(max_points - points_.size())) {
    return unexpected(errc::invalid_argument);
  }
  const auto count = static_cast<std::uint32_t>(want);

  std::vector<std::pair<std::uint64_t, std::uint32_t>> ring;
  ring.reserve(points_.size() + count);
  for (std::size_t i = 0; i < points_.size(); ++i) ring.emplace_back(points_[i], owners_[i]);
  for (std::uint32_t i = 0; i < count; ++i) {
    ring.emplace_back(detail::pair_hash(member, i, seed_), member);
  }
  std::sort(ring.begin(), ring.end());  // by point, then member id: independent of history

  members_.push_back(member);
  points_.resize(ring.size());
  owners_.resize(ring.size());
  for (std::size_t i = 0; i < ring.size(); ++i) {
    points_[i] = ring[i].first;
    owners_[i] = ring[i].second;
  }
  return {};
}

result<void> ring_partitioner::remove(std::uint32_t member) {
  const auto it = std::find(members_.begin(), members_.end(), member);
  if (it == members_.end()) return unexpected(errc::unknown_member);
  members_.erase(it);
  std::size_t out = 0;
  for (std::size_t i = 0; i < points_.size(); ++i) {
    if (owners_[i] == member) continue;
    points_[out] = points_[i];
    owners_[out] = owners_[i];
    ++out;
  }
  points_.resize(out);
  owners_.resize(out);
  return {};
}

}  // namespace keyway::core
