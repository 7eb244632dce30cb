// Single-writer statistics. A counter is written by exactly one thread (its
// owner) with a relaxed load + store, never a read-modify-write, so the hot path
// pays one plain store. Any thread may read it with a relaxed load; a reader
// sees a recent value, never a torn one. Header only.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/cache.hpp"

namespace keyway::core {

class counter {
 public:
  /// Owner thread only.
  void add(std::uint64_t n = 1) noexcept {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  /// Owner thread only; for gauges.
  void set(std::uint64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
  /// Any thread.
  std::uint64_t get() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

/// Per-worker runtime counters, on a cache line of their own so that a scrape
/// from another thread never shares a line with a neighbour's writes.
struct alignas(cache_line) worker_stats {
  counter loop_turns;     // iterations of the worker loop; the progress heartbeat
  counter sleeps;         // times the worker blocked in its io_context
  counter wakeups_sent;   // wake-ups this worker sent to sleeping peers
  counter mesh_sent;      // messages this worker pushed onto the mesh
  counter mesh_received;  // messages this worker drained from the mesh
  counter credit_stalls;  // sends refused because the destination had no credit
  counter mesh_staged;  // gauge: messages staged for other workers, not yet in a ring (at the last
                        // flush)
  counter handler_errors;  // exceptions caught from handlers
};

}  // namespace keyway::core
