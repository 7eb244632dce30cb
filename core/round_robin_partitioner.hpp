// round_robin_partitioner: hands out members in turn, one per pick, ignoring the key.
//
// NO KEY AFFINITY: key_affine() is false. Equal keys go to different members, so per-key
// order across members is lost; whoever selects this strategy must say so at startup
// (DESIGN.md asks for a startup warning). Useful only where any member will do.
// Members are cycled in the order they were added; weights are checked but ignored.
// A remove keeps the cycle position of the others.
//
// Threads: owned by one thread (see partitioner.hpp); the cursor is plain state.
// Cost: pick is O(1) and does not hash the key; add is O(n) (duplicate check); remove O(n).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/partitioner.hpp"

namespace keyway::core {

class round_robin_partitioner final : public partitioner {
 public:
  result<void> add(std::uint32_t member, double weight = 1.0) override;
  result<void> remove(std::uint32_t member) override;
  std::size_t size() const noexcept override { return members_.size(); }
  partition_strategy strategy() const noexcept override { return partition_strategy::round_robin; }
  bool key_affine() const noexcept override { return false; }

 private:
  std::uint32_t do_pick(std::span<const std::byte>) noexcept override {
    const std::uint32_t m = members_[next_];
    if (++next_ == members_.size()) next_ = 0;
    return m;
  }

  std::vector<std::uint32_t> members_;  // in order of add
  std::size_t next_ = 0;                // index of the next pick
};

}  // namespace keyway::core
