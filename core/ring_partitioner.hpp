// ring_partitioner: the classic consistent-hash ring, kept as the vnode_ring layout of the
// `consistent` strategy for comparison with the default slot table.
//
// Each member puts round(vnodes * weight) (at least 1) points XXH3(member, i) on a 64-bit
// ring; a key goes to the first point clockwise of XXH3(key). Equal points are ordered by
// member id, so the ring is a pure function of the member set. A join moves only keys to
// the newcomer and a leave only the leaver's keys, but a member's share has a relative
// standard deviation of about 1/sqrt(vnodes) (8% at 160), so balance is worse than the
// slot table's at equal memory, and lookup is a binary search (see
// bench/partitioner_bench.cpp for the measured comparison).
//
// Threads: owned by one thread (see partitioner.hpp).
// Cost: pick is O(log P) over P = sum of points (cache misses on each step); add is
// O(P log P); remove is O(P). Memory: 12 bytes per point. At most 2^24 points.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class ring_partitioner final : public partitioner {
 public:
  static constexpr std::size_t max_points = std::size_t{1} << 24;

  /// Precondition: vnodes in [1, 65536] (make_partitioner checks it).
  ring_partitioner(std::size_t vnodes, std::uint64_t seed);

  /// Adds errc::invalid_argument when the member's points would exceed max_points.
  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return members_.size(); }
  partition_strategy strategy() const noexcept override { return partition_strategy::consistent; }
  bool key_affine() const noexcept override { return true; }

  std::size_t points() const noexcept { return points_.size(); }

 private:
  std::uint32_t do_pick(std::span<const std::byte> key) noexcept override;

  std::uint64_t seed_;
  std::size_t vnodes_;
  std::vector<std::uint32_t> members_;  // unordered
  std::vector<std::uint64_t> points_;   // sorted ring positions
  std::vector<std::uint32_t> owners_;   // owners_[i] owns points_[i]
};

}  // namespace keyway::core
