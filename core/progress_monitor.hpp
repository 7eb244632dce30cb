// progress_monitor: tells which workers of a pool are stalled. Each check()
// posts a probe to every worker's io_context; a worker that has not run the
// probe posted by the previous check() is stalled: a handler is stuck (it
// blocks the loop, so nothing posted runs), or the thread ended. An idle
// worker asleep in its io_context wakes for the probe, runs it and sleeps
// again, so idleness is never mistaken for a stall (cost: one wake-up per
// worker per check).
//
// Threads: check() and stalled() from any thread (a mutex guards the state;
// this is a once-a-second path). The first check() only posts probes. The
// pool must outlive the monitor's checks; probes still queued when the
// monitor goes away are harmless (they share their counter).
// keywayd's readiness probe and systemd watchdog call check() every second.
#pragma once

#include <asio/post.hpp>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/worker_pool.hpp"

namespace keyway::core {

class progress_monitor {
 public:
  explicit progress_monitor(worker_pool& pool) : pool_(pool) {
    for (std::size_t i = 0; i < pool.size(); ++i)
      answered_.push_back(std::make_shared<std::atomic<std::uint64_t>>(0));
  }

  /// Marks as stalled every worker that has not run the previous probe, then
  /// posts the next one.
  void check() {
    std::lock_guard lock(mu_);
    stalled_.clear();
    for (std::uint32_t i = 0; i < pool_.size(); ++i)
      if (sent_ != 0 && answered_[i]->load(std::memory_order_acquire) < sent_)
        stalled_.push_back(i);
    ++sent_;
    for (std::uint32_t i = 0; i < pool_.size(); ++i)
      asio::post(pool_.at(i).io(), [answered = answered_[i], n = sent_] {
        answered->store(n, std::memory_order_release);
      });
  }

  /// The workers found stalled by the last check().
  std::vector<std::uint32_t> stalled() const {
    std::lock_guard lock(mu_);
    return stalled_;
  }

 private:
  worker_pool& pool_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<std::atomic<std::uint64_t>>> answered_;
  std::uint64_t sent_ = 0;
  std::vector<std::uint32_t> stalled_;
};

}  // namespace keyway::core
