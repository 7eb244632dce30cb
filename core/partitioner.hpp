// partitioner: maps a key (any bytes) to one member of a set. The same code maps keys to
// workers, keys to the members of a queue group and, later, keys to nodes (DESIGN.md,
// "Partitioners"). Members are std::uint32_t ids (need not be dense: queue-group members
// are subscription ids), each with a weight (default 1.0).
//
// Strategies:
//   consistent   (default) rendezvous-hashed slot table, see consistent_partitioner.hpp.
//                O(1) pick; on a join or a leave only the ideal minimum of keys moves.
//   hash         XXH3 of the key scaled onto the members, see hash_partitioner.hpp.
//                O(1) pick; a membership change moves 25-40% of all keys.
//   range        split points on the key bytes, see range_partitioner.hpp.
//   round_robin  cycles through the members; NO key affinity (key_affine() is false).
//
// Threads: a partitioner belongs to the one thread that uses it (a worker, or the control
// task that builds it). There is no internal locking and nothing is atomic: hand it to
// another thread only with a happens-before edge (e.g. a mesh message), never share it.
//
// Cost: pick() is the hot path: no allocation, no exceptions, no locks; O(1) for
// consistent/hash (one XXH3 of the key plus a table load) and round_robin, O(log k) for
// range. add()/remove() are control-path calls that may allocate; their cost is given in
// each strategy's header.
//
// Seeds: partitioners stacked on the same keys (node -> worker -> group member) must use
// different seeds. With equal seeds the inner table sees only the slots the outer one sent
// it, which correlates the two choices and spoils the inner balance.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/result.hpp>
#include "core/errc.hpp"

namespace keyway::core {

/// consistent is the default (and the value-initialised state).
enum class partition_strategy { consistent, hash, range, round_robin };

/// "consistent", "hash", "range" or "round_robin"; anything else is errc::invalid_argument.
result<partition_strategy> parse_partition_strategy(std::string_view name);
std::string_view to_string(partition_strategy s) noexcept;

/// How `consistent` is laid out. slot_table is the default and the one to use; vnode_ring
/// is the classic ring, kept for comparison (it balances and looks up worse; see
/// bench/partitioner_bench.cpp).
enum class consistent_layout { slot_table, vnode_ring };

struct partitioner_options {
  /// Hash seed of consistent and hash. Must be equal wherever two parties must agree on
  /// the mapping; must differ between stacked layers (see the top of this file).
  std::uint64_t seed = 0;
  /// consistent/slot_table: number of slots, a power of two in [2, 2^24]. Memory is
  /// 2 bytes per slot. Load balance is bounded by slots per member: a member's share has
  /// a relative standard deviation of about sqrt(members / slots), so peak-to-mean is
  /// about 1 + sqrt(2 ln(members) * members / slots) (measured at 65536 slots: 1.002 at
  /// 2 members, 1.01 at 8, 1.06-1.08 at 64, 1.15-1.18 at 256). add/remove cost O(slots).
  std::size_t slots = 65536;
  consistent_layout layout = consistent_layout::slot_table;
  /// consistent/vnode_ring: virtual nodes per unit of weight, in [1, 65536].
  std::size_t vnodes = 160;
  /// range: strictly increasing split points, compared as unsigned bytes. k points make
  /// k + 1 ranges; see range_partitioner.hpp.
  std::vector<std::string> split_points;
};

/// An empty string if `opt` is valid for `s`, else a message that names the field, the
/// value, the limit and the fix (for the config loader to show).
std::string partitioner_options_error(partition_strategy s, const partitioner_options& opt);

/// Weights must be finite and greater than zero (else errc::invalid_weight).
bool valid_weight(double weight) noexcept;

class partitioner {
 public:
  partitioner() = default;
  partitioner(const partitioner&) = delete;
  partitioner& operator=(const partitioner&) = delete;
  virtual ~partitioner();

  /// The member that owns `key`. Precondition: size() > 0 (asserted; callers check
  /// size() first, e.g. a queue group with no members has nobody to deliver to).
  /// Hot path: never allocates, never throws.
  std::uint32_t pick(std::span<const std::byte> key) noexcept {
    assert(size() > 0);
    return do_pick(key);
  }
  std::uint32_t pick(std::string_view key) noexcept {
    return pick(std::as_bytes(std::span<const char>(key.data(), key.size())));
  }

  /// errc::invalid_weight, errc::duplicate_member, or a strategy-specific error
  /// (errc::not_supported, errc::invalid_argument); on error nothing changes.
  virtual result<void> add(std::uint32_t member, double weight = 1.0) = 0;
  /// errc::unknown_member if `member` is not present; on error nothing changes.
  virtual result<void> remove(std::uint32_t member) = 0;

  virtual std::size_t size() const noexcept = 0;
  virtual partition_strategy strategy() const noexcept = 0;
  /// True if equal keys go to the same member while the membership is unchanged.
  virtual bool key_affine() const noexcept = 0;

 private:
  virtual std::uint32_t do_pick(std::span<const std::byte> key) noexcept = 0;
};

/// Builds an empty partitioner; errc::invalid_argument if partitioner_options_error()
/// would complain. Control path (allocates the consistent slot table).
result<std::unique_ptr<partitioner>> make_partitioner(partition_strategy s,
                                                      const partitioner_options& opt = {});

}  // namespace keyway::core
