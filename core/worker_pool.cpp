#include "core/worker_pool.hpp"

#include <algorithm>
#include <exception>
#include <latch>
#include <memory>

#include "core/errc.hpp"

namespace keyway::core {

result<std::vector<std::optional<int>>> plan_workers(const pool_options& opt,
                                                     const std::vector<int>& allowed) {
  std::vector<int> cpus = opt.cpus.empty() ? allowed : opt.cpus;
  for (int c : opt.cpus)
    if (std::find(allowed.begin(), allowed.end(), c) == allowed.end())
      return unexpected(errc::bad_cpu);
  if (cpus.empty()) return unexpected(errc::invalid_argument);
  const std::size_t n = opt.workers != 0 ? opt.workers : cpus.size();
  std::vector<std::optional<int>> plan;
  plan.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (opt.pin)
      plan.emplace_back(cpus[i % cpus.size()]);
    else
      plan.emplace_back(std::nullopt);
  }
  return plan;
}

result<std::unique_ptr<worker_pool>> worker_pool::create(const pool_options& opt) {
  auto plan = plan_workers(opt, allowed_cpus());
  if (!plan) return unexpected(plan.error());
  std::vector<std::unique_ptr<worker>> workers;
  for (std::size_t i = 0; i < plan->size(); ++i)
    workers.push_back(
        std::make_unique<worker>(static_cast<std::uint32_t>(i), (*plan)[i], opt.spin_turns));
  return std::unique_ptr<worker_pool>(new worker_pool(std::move(workers)));
}

worker_pool::worker_pool(std::vector<std::unique_ptr<worker>> workers)
    : workers_(std::move(workers)) {}

worker_pool::~worker_pool() {
  stop();
}

result<void> worker_pool::start(const handler_factory& factory, event_hook hook) {
  hook_ = std::move(hook);
  for (auto& w : workers_) handlers_.push_back(factory(*w));

  // Shared with the threads so that none of it dies while a thread is still
  // returning from a wait.
  struct start_sync {
    explicit start_sync(std::size_t n) : inited(static_cast<std::ptrdiff_t>(n)), errors(n) {}
    std::latch inited;
    std::latch go{1};
    std::vector<std::string> errors;
  };
  auto sync = std::make_shared<start_sync>(workers_.size());
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    threads_.emplace_back([this, i, sync] {
      std::string& init_error = sync->errors[i];
      worker& w = *workers_[i];
      worker_handler& h = *handlers_[i];
      w.set_state(worker_state::starting);
      if (auto err = w.adopt_current_thread(); err && hook_) hook_(w, *err);
      try {
        h.init();
      } catch (const std::exception& e) {
        init_error = e.what();
      } catch (...) {
        init_error = "unknown exception";
      }
      const bool ok = init_error.empty();
      sync->inited.count_down();
      sync->go.wait();
      if (!ok) {
        w.set_state(worker_state::failed);
        return;
      }
      thread_main(i, h, hook_);
    });
  }
  sync->inited.wait();
  sync->go.count_down();
  for (std::size_t i = 0; i < sync->errors.size(); ++i)
    if (!sync->errors[i].empty()) {
      if (hook_) hook_(*workers_[i], "init failed: " + sync->errors[i]);
      return unexpected(errc::invalid_argument);
    }
  return {};
}

void worker_pool::thread_main(std::size_t index, worker_handler& handler, const event_hook& hook) {
  worker& w = *workers_[index];
  w.set_state(worker_state::running);
  w.run_loop(handler);
  w.set_state(worker_state::stopping);
  try {
    handler.shutdown();
  } catch (const std::exception& e) {
    w.stats().handler_errors.add();
    if (hook) hook(w, std::string("shutdown failed: ") + e.what());
  }
  w.set_state(worker_state::stopped);
}

void worker_pool::stop() {
  for (auto& w : workers_) w->request_stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
  handlers_.clear();
}

}  // namespace keyway::core
