#include "core/worker.hpp"

#include <pthread.h>
#include <sched.h>

#include <asio/post.hpp>

#include <cerrno>
#include <cstring>
#include <exception>

namespace keyway::core {

std::string_view to_string(worker_state s) {
  switch (s) {
    case worker_state::created:
      return "created";
    case worker_state::starting:
      return "starting";
    case worker_state::running:
      return "running";
    case worker_state::stopping:
      return "stopping";
    case worker_state::stopped:
      return "stopped";
    case worker_state::failed:
      return "failed";
  }
  return "unknown";
}

int pin_current_thread(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

worker::worker(std::uint32_t id, std::optional<int> cpu, std::size_t spin_turns)
    : id_(id), cpu_(cpu), spin_turns_(spin_turns), keep_alive_(asio::make_work_guard(io_)) {}

bool worker::wake() noexcept {
  // Pairs with the fence in run_loop(): either we see sleeping_ == true, or the
  // worker's has_work() check sees what the caller published before this call.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_relaxed) &&
      sleeping_.exchange(false, std::memory_order_acq_rel)) {
    asio::post(io_, [] {});
    return true;
  }
  return false;
}

void worker::request_stop() noexcept {
  stop_.store(true, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  asio::post(io_, [] {});
}

std::optional<std::string> worker::adopt_current_thread() {
  owner_.bind_to_this_thread();
  const std::string n = name();
  pthread_setname_np(pthread_self(), n.c_str());
  if (cpu_) {
    if (int rc = pin_current_thread(*cpu_); rc != 0)
      return n + ": cannot pin to CPU " + std::to_string(*cpu_) + ": " + std::strerror(rc);
  }
  return std::nullopt;
}

void worker::run_loop(worker_handler& handler) {
  KEYWAY_ASSERT_OWNER(*this);
  // Runs one step, catching what it throws: the worker always goes on.
  auto guarded = [&](auto&& step) -> std::size_t {
    try {
      return step();
    } catch (const std::exception& e) {
      stats_.handler_errors.add();
      handler.on_error(e.what());
    } catch (...) {
      stats_.handler_errors.add();
      handler.on_error("unknown exception");
    }
    return 1;  // an error is progress: do not go to sleep on it
  };

  std::size_t idle_turns = 0;
  while (!stop_requested()) {
    std::size_t work = guarded([&] {
      std::size_t n = 0;
      while (n < max_handlers_per_turn && io_.poll_one() != 0) ++n;
      return n;
    });
    work += guarded([&] { return handler.poll(); });
    guarded([&] {
      handler.flush();
      return std::size_t{0};
    });
    stats_.loop_turns.add();
    if (work != 0) {
      idle_turns = 0;
      continue;
    }
    if (++idle_turns < spin_turns_) continue;

    // Going to sleep: raise the flag, then re-check for work that a sender may
    // have published before it could see the flag.
    sleeping_.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool pending = stop_requested();
    if (!pending) {
      pending = guarded([&] { return std::size_t{handler.has_work() ? 1u : 0u}; }) != 0;
    }
    if (pending) {
      sleeping_.store(false, std::memory_order_relaxed);
      idle_turns = 0;
      continue;
    }
    stats_.sleeps.add();
    guarded([&] { return io_.run_one(); });
    sleeping_.store(false, std::memory_order_relaxed);
    idle_turns = 0;
  }
}

}  // namespace keyway::core
