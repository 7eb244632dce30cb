// worker_pool: creates the workers, runs their lifecycle and joins them.
//
// Lifecycle per worker (the seed design's): factory → spawn and pin → init →
// loop → shutdown → join. The factory runs on the thread calling start(); all
// other steps run on the worker's own thread. No worker enters its loop until
// every worker's init() has returned, so init() is where a worker allocates
// what others will write into (its inbound mesh rings).
//
// Threads: start(), stop() and the destructor belong to one controlling thread
// (the daemon's main thread). size(), at() and the workers' thread-safe
// accessors may be used from any thread while the pool runs.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <keyway/result.hpp>
#include "core/worker.hpp"

namespace keyway::core {

struct pool_options {
  /// Number of workers; 0 = one per CPU in the affinity mask (or per entry of `cpus`).
  unsigned workers = 0;
  /// CPUs to pin to, in worker order; empty = the affinity mask. Each must be
  /// in the process's affinity mask.
  std::vector<int> cpus;
  /// Pin each worker to its CPU. Tests may turn it off.
  bool pin = true;
  /// Idle loop turns before a worker sleeps. Few: a spinning pinned worker
  /// takes its CPU from the clients sharing the machine, which showed as a
  /// millisecond request/reply p99 at 256 turns
  /// (bench/log/2026-11-28-queues-partitioners-profiles.md, "Spinning").
  std::size_t spin_turns = 4;
};

/// Resolves options against the affinity mask: the CPU (or none) per worker.
/// Errors: bad_cpu (a CPU outside the mask), invalid_argument (0 CPUs).
/// More workers than CPUs is allowed; CPUs are then reused round-robin.
result<std::vector<std::optional<int>>> plan_workers(const pool_options& opt,
                                                     const std::vector<int>& allowed);

class worker_pool {
 public:
  using handler_factory = std::function<std::unique_ptr<worker_handler>(worker&)>;
  /// Called on a worker thread for a pinning failure or when a worker stops
  /// unexpectedly. Must be thread-safe.
  using event_hook = std::function<void(const worker&, std::string_view)>;

  static result<std::unique_ptr<worker_pool>> create(const pool_options& opt);
  ~worker_pool();

  std::size_t size() const noexcept { return workers_.size(); }
  worker& at(std::size_t i) noexcept { return *workers_[i]; }
  const worker& at(std::size_t i) const noexcept { return *workers_[i]; }

  /// Spawns every worker and returns once all have finished init(); their
  /// loops start right after. If an init() throws, that worker is `failed` and the others
  /// run on; start() reports the first such error.
  result<void> start(const handler_factory& factory, event_hook hook = {});
  /// Requests stop on every worker and joins them. Idempotent.
  void stop();

 private:
  explicit worker_pool(std::vector<std::unique_ptr<worker>> workers);
  void thread_main(std::size_t index, worker_handler& handler, const event_hook& hook);

  std::vector<std::unique_ptr<worker>> workers_;
  std::vector<std::unique_ptr<worker_handler>> handlers_;
  std::vector<std::thread> threads_;
  event_hook hook_;
};

}  // namespace keyway::core
