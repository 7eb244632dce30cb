// placement: the first level of two-level placement, key → node (the second,
// node's key → core, is each node's own worker partitioner). Built from a
// ring (the active nodes' ids, cluster/membership.hpp) with the same
// consistent partitioner as the cores (core/partitioner.hpp) but its own seed,
// so that the two choices are independent. Every node that builds a placement
// from the same ring gets the same owner for every key; when a node joins or
// leaves, only the keys it gains or loses move (the consistent partitioner's
// minimum).
//
// A node's member id in the partitioner is a 32-bit hash of its id, not its
// position in the ring, so a join does not renumber (and move the keys of)
// the others. Two ids with the same hash are refused by build().
//
// Threads: immutable after build(); owner() from any thread.
// Cost: owner() is one XXH3 of the key and a table load (no allocation);
// build() is O(slots · nodes), on the control path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/result.hpp>

#include "core/partitioner.hpp"

namespace keyway::cluster {

class placement {
 public:
  /// The seed of the key → node level; the worker level uses
  /// routing's seed (0 by default), which must differ.
  static constexpr std::uint64_t node_seed = 0x6b65797761796e64;  // "keywaynd"

  /// `ring`: the active nodes' ids (any order; at least one). `epoch`: the
  /// ring's epoch, carried for the callers that stamp what they route.
  static result<placement, std::string> build(std::vector<std::string> ring, std::int64_t epoch);

  /// The id of the node that owns `key`.
  const std::string& owner(std::string_view key) const noexcept {
    return nodes_[owner_position(key)];
  }
  /// Its position in nodes().
  std::size_t owner_position(std::string_view key) const noexcept;
  std::int64_t epoch() const noexcept { return epoch_; }
  /// The ring, sorted.
  const std::vector<std::string>& nodes() const noexcept { return nodes_; }

  /// A node id's member id in the partitioner.
  static std::uint32_t member_of(std::string_view node_id) noexcept;

 private:
  placement() = default;

  std::vector<std::string> nodes_;
  std::vector<std::uint32_t> members_;  // members_[i] is nodes_[i]'s member id, sorted like nodes_
  std::shared_ptr<core::partitioner> partitioner_;
  std::int64_t epoch_ = 0;
};

}  // namespace keyway::cluster
