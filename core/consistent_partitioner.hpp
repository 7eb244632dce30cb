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
// from the id array. A member id is found through an open-addressing table (id -> member
// index), so add and remove do no per-member search. add is O(S) (two 8-byte XXH3 per
// slot, plus two logs per slot when weights differ) plus amortised O(1) for the id table;
// remove is O(S + m) (a scan of the table and of the m member indexes ever used, m <= the
// most members there were at once) plus re-electing only the leaver's slots (about S/n of
// them) over the n remaining members: O(S) expected. At S = 65536 each takes about 1 ms on
// the bench machine, on the owner's thread, so membership changes are control-path events.
// remove never allocates.
// Memory: 2 * S bytes for the table, plus per member 16 bytes of arrays and 4 to 16 bytes of
// id table (arrays grow by doubling, so up to twice that just after a growth), and a map
// node per distinct weight.
// At most max_members (65536) members: add refuses more with an error value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class consistent_partitioner final : public partitioner {
 public:
  static constexpr std::size_t max_members = 65536;
  /// index_of() of a member that is not present.
  static constexpr std::size_t no_index = static_cast<std::size_t>(-1);

  /// Precondition: slots is a power of two in [2, 2^24] (make_partitioner checks it).
  consistent_partitioner(std::size_t slots, std::uint64_t seed);

  /// errc::invalid_weight, errc::duplicate_member, or errc::invalid_argument when
  /// max_members are present; on error nothing changes.
  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return live_; }
  partition_strategy strategy() const noexcept override { return partition_strategy::consistent; }
  bool key_affine() const noexcept override { return true; }

  std::size_t slots() const noexcept { return table_.size(); }
  /// Slots owned by `member` (0 if absent): its exact share of uniformly hashed keys is
  /// slots_owned / slots. O(S); for tests and benchmarks.
  std::size_t slots_owned(std::uint32_t member) const noexcept;

  /// Member indexes, for a caller that keeps per-member data in an array: a member keeps
  /// its index from add() to remove(); a removed member's index is reused by a later add.
  /// Every index is below index_bound(), which never exceeds max_members.
  /// The member's index, or no_index. O(1) expected.
  std::size_t index_of(std::uint32_t member) const noexcept;
  std::size_t index_bound() const noexcept { return ids_.size(); }
  /// The index of pick(key). Precondition: size() > 0. Hot path, like pick().
  std::size_t pick_index(std::span<const std::byte> key) const noexcept;

 private:
  std::uint32_t do_pick(std::span<const std::byte> key) noexcept override;
  /// Score of member index `m` for `slot`; higher wins, ties go to the higher id.
  double score(std::size_t m, std::uint32_t slot) const noexcept;
  bool beats(std::size_t a, double score_a, std::size_t b, double score_b) const noexcept {
    return score_a != score_b ? score_a > score_b : ids_[a] > ids_[b];
  }
  // The id table: open addressing with linear probing over id_slots_ (a power of two,
  // at least twice the live members); an entry is a member index + 1, 0 is empty.
  std::size_t home(std::uint32_t member) const noexcept;
  void index_insert(std::size_t m);   // member index m, whose id is not present
  void index_erase(std::size_t pos);  // backward-shift deletion, no tombstones
  void index_grow();

  std::uint64_t seed_;
  unsigned shift_;                                 // 64 - log2(S)
  std::vector<std::uint16_t> table_;               // slot -> member index
  std::vector<std::uint32_t> ids_;                 // member index -> id
  std::vector<double> weights_;                    // member index -> weight; 0 marks a free index
  std::vector<std::uint16_t> free_;                // free member indexes, reused by add
  std::vector<std::uint16_t> live_scratch_;        // remove(): the live member indexes
  std::vector<std::uint32_t> id_slots_;            // id table, see above
  std::map<double, std::uint32_t> weight_counts_;  // live members per distinct weight
  std::size_t live_ = 0;
  // All weights equal: the score is then the raw 52-bit hash (same order as -w/ln(u),
  // without the logarithms).
  bool uniform_ = true;
};

}  // namespace keyway::core
