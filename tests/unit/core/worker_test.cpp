#include "core/progress_monitor.hpp"
#include "core/worker_pool.hpp"

#include <doctest/doctest.h>
#include <pthread.h>
#include <sched.h>

#include <asio/post.hpp>
#include <atomic>
#include <chrono>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "core/errc.hpp"

using namespace keyway::core;
using namespace std::chrono_literals;

namespace {

template <class Pred>
bool wait_for(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

struct probe_handler : worker_handler {
  explicit probe_handler(worker& w) : w_(w) {}
  void init() override {
    w_.assert_owner();
    char name[32] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    thread_name = name;
    cpu_set_t set;
    CPU_ZERO(&set);
    pthread_getaffinity_np(pthread_self(), sizeof set, &set);
    affinity_count = CPU_COUNT(&set);
    pinned_to_own_cpu = w_.cpu() && CPU_ISSET(*w_.cpu(), &set);
  }
  void shutdown() override { shut_down = true; }
  worker& w_;
  std::string thread_name;
  int affinity_count = 0;
  bool pinned_to_own_cpu = false;
  bool shut_down = false;
};

}  // namespace

TEST_CASE("plan_workers follows the affinity mask and counts and CPU lists") {
  const std::vector<int> allowed{0, 1, 3};
  auto all = plan_workers({}, allowed);
  REQUIRE(all);
  CHECK(all->size() == 3);
  CHECK((*all)[2] == 3);

  pool_options five;
  five.workers = 5;
  auto many = plan_workers(five, allowed);
  REQUIRE(many);
  CHECK(many->size() == 5);
  CHECK((*many)[3] == 0);  // reused round-robin

  pool_options list;
  list.cpus = {3, 1};
  auto listed = plan_workers(list, allowed);
  REQUIRE(listed);
  CHECK(listed->size() == 2);
  CHECK((*listed)[0] == 3);

  pool_options bad;
  bad.cpus = {2};
  auto refused = plan_workers(bad, allowed);
  CHECK_FALSE(refused);
  CHECK(refused.error() == errc::bad_cpu);
  CHECK(plan_workers({}, {}).error() == errc::invalid_argument);
}

TEST_CASE("workers are named keyway-w<N> and pinned and run init and shutdown on their thread") {
  auto pool = worker_pool::create({});
  REQUIRE(pool);
  std::vector<probe_handler*> probes;
  std::vector<std::string> events;
  std::mutex events_mu;
  auto started = (*pool)->start(
      [&](worker& w) {
        auto h = std::make_unique<probe_handler>(w);
        probes.push_back(h.get());
        return h;
      },
      [&](const worker&, std::string_view what) {
        std::lock_guard lock(events_mu);
        events.emplace_back(what);
      });
  REQUIRE(started);
  CHECK(events.empty());
  for (std::size_t i = 0; i < probes.size(); ++i) {
    CHECK(probes[i]->thread_name == "keyway-w" + std::to_string(i));
    CHECK(probes[i]->affinity_count == 1);
    CHECK(probes[i]->pinned_to_own_cpu);
  }
  for (std::size_t i = 0; i < (*pool)->size(); ++i)
    CHECK(wait_for([&] { return (*pool)->at(i).state() == worker_state::running; }));
  (*pool)->stop();
  for (std::size_t i = 0; i < (*pool)->size(); ++i)
    CHECK((*pool)->at(i).state() == worker_state::stopped);
}

TEST_CASE("a pool starts and stops repeatedly") {
  for (int round = 0; round < 20; ++round) {
    pool_options opt;
    opt.workers = 2;
    opt.spin_turns = 1 + static_cast<std::size_t>(round % 3);
    auto pool = worker_pool::create(opt);
    REQUIRE(pool);
    std::atomic<int> shutdowns{0};
    struct h : worker_handler {
      std::atomic<int>& n;
      explicit h(std::atomic<int>& c) : n(c) {}
      void shutdown() override { n.fetch_add(1); }
    };
    REQUIRE((*pool)->start([&](worker&) { return std::make_unique<h>(shutdowns); }));
    (*pool)->stop();
    CHECK(shutdowns.load() == 2);
  }
}

TEST_CASE("a throwing handler is caught and counted and reported and the worker goes on") {
  pool_options opt;
  opt.workers = 1;
  opt.spin_turns = 4;
  auto pool = worker_pool::create(opt);
  REQUIRE(pool);
  struct thrower : worker_handler {
    std::atomic<int> errors{0};
    std::string last;
    std::mutex mu;
    void on_error(std::string_view what) override {
      std::lock_guard lock(mu);
      last = what;
      errors.fetch_add(1);
    }
  };
  thrower* t = nullptr;
  REQUIRE((*pool)->start([&](worker&) {
    auto h = std::make_unique<thrower>();
    t = h.get();
    return h;
  }));
  worker& w = (*pool)->at(0);
  // Throw from an io completion handler twice, then check a later one still runs.
  asio::post(w.io(), [] { throw std::runtime_error("boom"); });
  asio::post(w.io(), [] { throw std::runtime_error("boom again"); });
  std::atomic<bool> ran{false};
  asio::post(w.io(), [&] { ran = true; });
  CHECK(wait_for([&] { return ran.load(); }));
  CHECK(t->errors.load() == 2);
  CHECK(w.stats().handler_errors.get() == 2);
  {
    std::lock_guard lock(t->mu);
    CHECK(t->last == "boom again");
  }
  CHECK(w.state() == worker_state::running);
  (*pool)->stop();
}

TEST_CASE("a failed init marks that worker failed and start() reports it") {
  pool_options opt;
  opt.workers = 2;
  auto pool = worker_pool::create(opt);
  REQUIRE(pool);
  struct bad_init : worker_handler {
    bool fail;
    explicit bad_init(bool f) : fail(f) {}
    void init() override {
      if (fail) throw std::runtime_error("no memory for rings");
    }
  };
  std::string reported;
  std::mutex mu;
  auto r = (*pool)->start([](worker& w) { return std::make_unique<bad_init>(w.id() == 1); },
                          [&](const worker&, std::string_view what) {
                            std::lock_guard lock(mu);
                            reported = what;
                          });
  CHECK_FALSE(r);
  CHECK(wait_for([&] { return (*pool)->at(1).state() == worker_state::failed; }));
  CHECK(reported.find("no memory for rings") != std::string::npos);
  (*pool)->stop();
  CHECK((*pool)->at(0).state() == worker_state::stopped);
}

TEST_CASE("an idle pool sleeps with no loop turns until a post wakes it") {
  pool_options opt;
  opt.workers = 2;
  opt.spin_turns = 16;
  auto pool = worker_pool::create(opt);
  REQUIRE(pool);
  REQUIRE((*pool)->start([](worker&) { return std::make_unique<worker_handler>(); }));
  worker& w = (*pool)->at(1);
  REQUIRE(wait_for([&] { return w.sleeping(); }));
  const auto turns = w.stats().loop_turns.get();
  std::this_thread::sleep_for(200ms);
  // A sleeping worker does not turn its loop: at most a turn or two of slack.
  CHECK(w.stats().loop_turns.get() - turns <= 2);
  CHECK(w.sleeping());
  std::atomic<bool> ran{false};
  asio::post(w.io(), [&] { ran = true; });
  CHECK(wait_for([&] { return ran.load(); }));
  (*pool)->stop();
}

/// Waits (with wait_for's deadline) until each of `ws` has run everything
/// posted to it before this call: a marker posted now runs after it (an
/// io_context runs posted handlers in order). So after monitor.check(), it
/// means the probes were run, instead of sleeping and hoping.
static bool ran_what_was_posted(std::initializer_list<worker*> ws) {
  auto count = std::make_shared<std::atomic<std::size_t>>(0);  // outlives a timeout
  for (worker* w : ws) asio::post(w->io(), [count] { count->fetch_add(1); });
  return wait_for([&] { return count->load() == ws.size(); });
}

TEST_CASE("progress_monitor reports a worker stuck in a handler and not an idle one") {
  pool_options opt;
  opt.workers = 2;
  opt.spin_turns = 16;
  auto pool = worker_pool::create(opt);
  REQUIRE(pool);
  REQUIRE((*pool)->start([](worker&) { return std::make_unique<worker_handler>(); }));
  worker& w0 = (*pool)->at(0);
  worker& w1 = (*pool)->at(1);
  {
    progress_monitor monitor(**pool);
    REQUIRE(wait_for([&] { return w0.sleeping() && w1.sleeping(); }));
    monitor.check();                           // first probes
    REQUIRE(ran_what_was_posted({&w0, &w1}));  // both ran them
    monitor.check();
    CHECK(monitor.stalled().empty());  // both asleep: they woke for the probe
    CHECK(wait_for([&] { return w0.sleeping() && w1.sleeping(); }));

    // Worker 1 runs a handler that blocks until released, as a stuck
    // handler would; it started while the worker slept.
    std::atomic<bool> release{false}, entered{false};
    asio::post(w1.io(), [&] {
      entered = true;
      while (!release.load()) std::this_thread::sleep_for(1ms);
    });
    REQUIRE(wait_for([&] { return entered.load(); }));
    monitor.check();
    // Worker 0 ran this probe; worker 1 cannot run it while it is stuck.
    REQUIRE(ran_what_was_posted({&w0}));
    monitor.check();
    CHECK(monitor.stalled() == std::vector<std::uint32_t>{1});

    release = true;
    // Released, worker 1 runs the probes queued behind the stuck handler.
    REQUIRE(ran_what_was_posted({&w0, &w1}));
    monitor.check();
    CHECK(monitor.stalled().empty());
  }
  (*pool)->stop();
}
