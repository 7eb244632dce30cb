// hash_partitioner: XXH3 of the key scaled onto the members (DESIGN.md: "XXH3 mod n").
//
// Members are kept sorted by id, so the mapping is a pure function of the member set.
// Equal weights: member = ids[(XXH3(key) * n) >> 64], the multiply-shift form of
// "mod n" (uniform, and no division on the hot path). Unequal weights: the 64-bit hash
// space is cut into consecutive intervals proportional to the weights and the key's
// interval is found by binary search.
// Movement: a join or leave changes n and with it every interval boundary, so a large
// fraction of all keys moves: measured 25-40% of the keys, i.e. 3x the ideal 1/n at 8
// members, 25x at 64, 75x at 256 (bench/partitioner_bench.cpp).
// Use `consistent` when members come and go; `hash` suits a fixed set where the cheapest
// even spread is all that counts.
//
// Threads: owned by one thread (see partitioner.hpp).
// Cost: pick is O(1) with equal weights, O(log n) otherwise; add and remove are O(n).
// Memory: 20 bytes per member.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class hash_partitioner final : public partitioner {
 public:
  explicit hash_partitioner(std::uint64_t seed) : seed_(seed) {}

  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return ids_.size(); }
  partition_strategy strategy() const noexcept override { return partition_strategy::hash; }
  bool key_affine() const noexcept override { return true; }

 private:
  std::uint32_t do_pick(std::span<const std::byte> key) noexcept override;
  void rebuild();

  std::uint64_t seed_;
  std::vector<std::uint32_t> ids_;         // sorted
  std::vector<double> weights_;            // weights_[i] belongs to ids_[i]
  std::vector<std::uint64_t> thresholds_;  // n - 1 interval ends, when weights differ
  bool uniform_ = true;
};

}  // namespace keyway::core
