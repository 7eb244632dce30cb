// range_partitioner: ordered ranges of key bytes, cut by configured split points.
//
// k strictly increasing split points s[0] < ... < s[k-1] (compared as unsigned bytes,
// lexicographically; a proper prefix sorts first) make k + 1 ranges:
//     range 0 = keys < s[0],  range i = s[i-1] <= key < s[i],  range k = keys >= s[k-1].
// A key equal to a split point goes to the UPPER range (s[i] is the first key of range i+1).
//
// Members: range r belongs to members[r % n], where members are kept in the order they
// were added. With n = k + 1 (the intended layout) member i owns exactly range i; with
// fewer members the ranges are dealt out round-robin so that every key still has an owner.
// add() beyond k + 1 members is errc::not_supported (no range would be left for it; add
// split points instead). remove() keeps the order of the others, so the ranges after the
// leaver shift down by one member: range layouts are meant to be fixed, and moving keys
// on a membership change is not minimal. Weights are checked but otherwise ignored.
//
// Threads: owned by one thread (see partitioner.hpp).
// Cost: pick is a binary search over the split points' first 8 bytes, kept as big-endian
// integers (O(log k) integer compares; the full bytes are compared only on a tie of those
// 8 bytes); add and remove are O(k).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class range_partitioner final : public partitioner {
 public:
  /// Precondition: split points strictly increasing (make_partitioner checks it).
  explicit range_partitioner(std::vector<std::string> split_points);

  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return members_.size(); }
  partition_strategy strategy() const noexcept override { return partition_strategy::range; }
  bool key_affine() const noexcept override { return true; }

  std::size_t ranges() const noexcept { return splits_.size() + 1; }
  /// The range `key` falls into, in [0, ranges()). No allocation.
  std::size_t range_of(std::span<const std::byte> key) const noexcept;

 private:
  std::uint32_t do_pick(std::span<const std::byte> key) noexcept override {
    return owners_[range_of(key)];
  }
  void rebuild();

  std::vector<std::string> splits_;
  std::vector<std::uint64_t> prefixes_;  // first 8 bytes of each split, big-endian, 0-padded
  std::vector<std::uint32_t> members_;   // in order of add
  std::vector<std::uint32_t> owners_;    // range -> member
};

/// Compares two byte strings as unsigned bytes, lexicographically: <0, 0 or >0.
int compare_key_bytes(std::span<const std::byte> a, std::span<const std::byte> b) noexcept;

}  // namespace keyway::core
