// consistent_partitioner: the default strategy. A rendezvous-hashed (HRW) slot table.
//
// A key goes to slot = top log2(S) bits of XXH3(key, seed). Each of the S slots is owned by
// the member with the highest weighted score for that slot:
//     u = XXH3(slot, member) mapped into (0, 1),   score = -weight / ln(u)
// (ties, which need equal 52-bit hashes, go to the higher id). With -ln(u) exponential,
// P(member wins a slot) = weight / total weight exactly, and the owner of a slot is a pure
// function of the member set: insertion order and history do not matter.
//
// Movement: a slot changes owner only when its winner joins or leaves, so a join moves
// exactly the newcomer's slots and a leave moves exactly the leaver's slots, the ideal
// minimum (about 1/(n+1) and 1/n of the keys).
// Balance: a member's slot count is binomial, relative standard deviation about
// sqrt(n / S), so peak-to-mean is bounded by slots per member: about
// 1 + sqrt(2 ln(n) * n / S). Measured at the default S = 65536: 1.002 at n=2, 1.01 at 8,
// 1.06-1.08 at 64, 1.15-1.18 at 256; raise S (the `slots` option) for many members
// (2^18 slots: ~1.03 at 64, ~1.1 at 256).
//
// Threads: owned by one thread (see partitioner.hpp).
// Cost: pick is O(1): XXH3 of the key, a load from the 2-byte-per-slot table and a load
// from the id array. add is O(S) (two 8-byte XXH3 per slot, plus two logs per slot when
// weights differ); remove is O(S) (re-elects only the leaver's slots over the n remaining
// members); at S = 65536 each takes about 1 ms on the bench machine, on the owner's
// thread, so membership changes are control-path events. Memory: 2 * S bytes + 14 bytes
// per member. At most 65536 members.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class consistent_partitioner final : public partitioner {
 public:
  static constexpr std::size_t max_members = 65536;

  /// Precondition: slots is a power of two in [2, 2^24] (make_partitioner checks it).
  consistent_partitioner(std::size_t slots, std::uint64_t seed);

  /// Adds errc::invalid_argument when max_members are present.
  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return live_; }
  partition_strategy strategy() const noexcept override { return partition_strategy::consistent; }
  bool key_affine() const noexcept override { return true; }

  std::size_t slots() const noexcept { return table_.size(); }
  /// Slots owned by `member` (0 if absent): its exact share of uniformly hashed keys is
  /// slots_owned / slots. O(S); for tests and benchmarks.
  std::size_t slots_owned(std::uint32_t member) const noexcept;

 private:
  std::uint32_t do_pick(std::span<const std::byte> key) noexcept override;
  /// Score of member index `m` for `slot`; higher wins, ties go to the higher id.
  double score(std::size_t m, std::uint32_t slot) const noexcept;
  bool beats(std::size_t a, double score_a, std::size_t b, double score_b) const noexcept {
    return score_a != score_b ? score_a > score_b : ids_[a] > ids_[b];
  }
  std::size_t find(std::uint32_t member) const noexcept;  // index, or ids_.size()
  void refresh_uniform() noexcept;

  std::uint64_t seed_;
  unsigned shift_;                    // 64 - log2(S)
  std::vector<std::uint16_t> table_;  // slot -> member index
  std::vector<std::uint32_t> ids_;    // member index -> id
  std::vector<double> weights_;       // member index -> weight; 0 marks a free index
  std::vector<std::uint16_t> free_;   // free member indexes, reused by add
  std::size_t live_ = 0;
  // All weights equal: the score is then the raw 52-bit hash (same order as -w/ln(u),
  // without the logarithms).
  bool uniform_ = true;
};

}  // namespace keyway::core
