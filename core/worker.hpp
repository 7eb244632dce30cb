// worker: one pinned thread that owns a single-threaded asio::io_context and
// everything its handler creates (connections, its share of the key space, its
// replica of the subscription index, its statistics block).
//
// Threads: a worker's handler, io_context and stats writers run only on the
// worker's own thread; KEYWAY_ASSERT_OWNER(worker) guards entry points.
// wake(), state() and stats() reads are safe from any thread.
//
// Loop: each turn runs up to `max_handlers_per_turn` ready io handlers, then
// handler.poll() (e.g. drain the mesh), then handler.flush() (e.g. publish
// staged batches and start socket writes). The cap matters: asio completes a
// read at once when data is already there, so a peer that keeps its socket
// full would otherwise keep io().poll() running for as long as it sends, and
// the mesh and every write on this worker would wait for it.
// After `spin_turns` idle turns the worker sets `sleeping_`, re-checks
// handler.has_work(), and blocks in io().run_one(). A sender that published
// work calls wake(): a seq_cst fence, then one load of `sleeping_`; only if it
// is set does it post an empty handler to unblock run_one(). The fences on both
// sides (store sleeping; fence; check work / publish work; fence; load
// sleeping) make a lost wake-up impossible. An idle worker uses no CPU.
#pragma once

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/assert.hpp"
#include "core/stats.hpp"

namespace keyway::core {

/// What a worker runs. Every method is called on the worker's own thread.
/// An exception thrown from any of them is caught by the worker, counted in
/// stats().handler_errors, reported through on_error(), and the loop goes on.
class worker_handler {
 public:
  virtual ~worker_handler() = default;
  /// Once, before the loop. All workers finish init() before any loop starts.
  virtual void init() {}
  /// Every loop turn. Returns the number of items of work done (0 = idle).
  virtual std::size_t poll() { return 0; }
  /// End of every loop turn: publish staged output.
  virtual void flush() {}
  /// Checked after the sleeping flag is raised: true if poll() has work.
  virtual bool has_work() { return false; }
  /// Once, after the loop ends, still on the worker thread.
  virtual void shutdown() {}
  /// A handler or io completion threw; `what` is the exception's message.
  virtual void on_error(std::string_view what) { (void)what; }
};

/// Anything a sender can wake. Implemented by worker; tests may fake it.
class waker {
 public:
  virtual ~waker() = default;
  /// Any thread. Call after publishing work for this target. Returns true if
  /// the target was asleep and a wake-up was sent (the caller counts it).
  virtual bool wake() noexcept = 0;
};

enum class worker_state : std::uint8_t { created, starting, running, stopping, stopped, failed };
std::string_view to_string(worker_state);

class worker final : public waker {
 public:
  /// cpu: the CPU to pin to, or nullopt for no pinning.
  worker(std::uint32_t id, std::optional<int> cpu, std::size_t spin_turns = 4);
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  std::uint32_t id() const noexcept { return id_; }
  std::optional<int> cpu() const noexcept { return cpu_; }
  std::string name() const { return "keyway-w" + std::to_string(id_); }

  /// Owner thread only (posting to it via asio::post is fine from any thread).
  asio::io_context& io() noexcept { return io_; }
  /// Writers: owner thread only. Readers: any thread.
  worker_stats& stats() noexcept { return stats_; }
  const worker_stats& stats() const noexcept { return stats_; }

  bool on_owner_thread() const noexcept { return owner_.is_owner(); }
  bool is_owner() const noexcept { return owner_.is_owner(); }
  void assert_owner() const noexcept { owner_.assert_owner(); }

  bool wake() noexcept override;
  /// Any thread: true while the worker is blocked waiting for work. A worker
  /// that is neither asleep nor advancing stats().loop_turns is stalled.
  bool sleeping() const noexcept { return sleeping_.load(std::memory_order_relaxed); }
  /// Any thread: ask the loop to end after its current turn.
  void request_stop() noexcept;
  bool stop_requested() const noexcept { return stop_.load(std::memory_order_acquire); }
  worker_state state() const noexcept { return state_.load(std::memory_order_acquire); }

  // ---- used by worker_pool on the worker thread ----------------------------
  /// Names and pins the calling thread and binds the owner check. Returns an
  /// error message if pinning failed (the worker still runs, unpinned).
  std::optional<std::string> adopt_current_thread();
  void set_state(worker_state s) noexcept { state_.store(s, std::memory_order_release); }
  /// Runs turns until request_stop(). Never throws.
  void run_loop(worker_handler& handler);

 private:
  const std::uint32_t id_;
  const std::optional<int> cpu_;
  const std::size_t spin_turns_;
  static constexpr std::size_t max_handlers_per_turn = 16;
  owner_check owner_;
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> keep_alive_;
  worker_stats stats_;
  alignas(cache_line) std::atomic<bool> sleeping_{false};
  alignas(cache_line) std::atomic<bool> stop_{false};
  std::atomic<worker_state> state_{worker_state::created};
};

/// Pins the calling thread to `cpu`. Returns 0 or an errno value.
int pin_current_thread(int cpu) noexcept;
/// The CPUs of the calling thread's affinity mask, ascending.
std::vector<int> allowed_cpus();

}  // namespace keyway::core
