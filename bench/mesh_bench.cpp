// Mesh benchmarks: all-to-all message rate between pinned workers through the
// real worker loop (staging, batch flush, drain, credits, sleep and wake), and
// the CPU cost of an idle pool.
#include <sys/resource.h>

#include <asio/post.hpp>
#include <atomic>
#include <chrono>
#include <thread>

#include "bench/report.hpp"
#include "core/mesh.hpp"
#include "core/worker_pool.hpp"

namespace keyway::bench {
namespace {

using namespace std::chrono_literals;
using core::mesh;
using core::worker;

struct msg {
  std::uint64_t value;
};

/// Sends `per_peer` messages to every worker (itself included) as fast as
/// credits allow, and counts what it receives.
class blaster : public core::worker_handler {
 public:
  blaster(worker& w, mesh<msg>& m, std::uint64_t per_peer, std::atomic<std::uint64_t>& received)
      : w_(w),
        ep_(m.at(w.id())),
        n_(m.size()),
        per_peer_(per_peer),
        sent_(n_, 0),
        received_(received) {}
  void init() override { ep_.attach(w_, w_.stats()); }
  std::size_t poll() override {
    std::uint64_t got = 0;
    ep_.drain([&](msg& m) { got += m.value; });
    if (got) received_.fetch_add(got, std::memory_order_relaxed);
    std::size_t work = got;
    for (std::uint32_t to = 0; to < n_; ++to) {
      for (int i = 0; i < 64 && sent_[to] < per_peer_; ++i) {
        if (!ep_.try_send(to, msg{1})) break;
        ++sent_[to];
        ++work;
      }
    }
    return work;
  }
  void flush() override { ep_.flush(); }
  bool has_work() override { return ep_.has_work(); }

 private:
  worker& w_;
  mesh<msg>::endpoint& ep_;
  std::size_t n_;
  std::uint64_t per_peer_;
  std::vector<std::uint64_t> sent_;
  std::atomic<std::uint64_t>& received_;
};

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

void all_to_all(const options& opt, report& out) {
  const unsigned workers = 2;
  const std::uint64_t per_peer = opt.messages ? opt.messages : (opt.quick ? 2'000'000 : 20'000'000);
  core::pool_options po;
  po.workers = workers;
  auto pool = core::worker_pool::create(po);
  if (!pool) return;
  mesh<msg> m(workers, 1024);
  std::atomic<std::uint64_t> received{0};
  const auto t0 = std::chrono::steady_clock::now();
  if (!(*pool)->start(
          [&](worker& w) { return std::make_unique<blaster>(w, m, per_peer, received); }))
    return;
  const std::uint64_t total = per_peer * workers * workers;
  while (received.load(std::memory_order_relaxed) < total) std::this_thread::sleep_for(1ms);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::uint64_t wakeups = 0, stalls = 0;
  for (std::size_t i = 0; i < workers; ++i) {
    wakeups += (*pool)->at(i).stats().wakeups_sent.get();
    stalls += (*pool)->at(i).stats().credit_stalls.get();
  }
  (*pool)->stop();
  row r;
  r.case_name = "mesh all-to-all 2 workers (4 rings) 8B";
  r.ns_per_msg = secs * 1e9 / static_cast<double>(total);
  r.extra["msgs_per_sec"] = static_cast<double>(total) / secs;
  r.extra["wakeups"] = static_cast<double>(wakeups);
  r.extra["credit_stalls"] = static_cast<double>(stalls);
  out.add(std::move(r));
}

/// Ping-pong through the wake-up path: each message finds its receiver asleep.
void wake_latency(const options& opt, report& out) {
  const int rounds = opt.quick ? 2000 : 20000;
  core::pool_options po;
  po.workers = 2;
  po.spin_turns = 1;  // sleep at once, so every hop pays for a wake-up
  auto pool = core::worker_pool::create(po);
  if (!pool) return;
  mesh<msg> m(2, 64);
  struct ponger : core::worker_handler {
    ponger(worker& w, mesh<msg>& m, std::atomic<std::uint64_t>& done, int rounds)
        : w_(w), ep_(m.at(w.id())), done_(done), rounds_(rounds) {}
    void init() override { ep_.attach(w_, w_.stats()); }
    std::size_t poll() override {
      return ep_.drain([&](msg& x) {
        if (static_cast<int>(x.value) >= rounds_) {
          done_.store(1);
          return;
        }
        ep_.send(1 - w_.id(), msg{x.value + 1});
      });
    }
    void flush() override { ep_.flush(); }
    bool has_work() override { return ep_.has_work(); }
    worker& w_;
    mesh<msg>::endpoint& ep_;
    std::atomic<std::uint64_t>& done_;
    int rounds_;
  };
  std::atomic<std::uint64_t> done{0};
  if (!(*pool)->start([&](worker& w) { return std::make_unique<ponger>(w, m, done, rounds); }))
    return;
  const auto t0 = std::chrono::steady_clock::now();
  asio::post((*pool)->at(0).io(), [&] { m.at(0).send(1, msg{0}); });
  while (!done.load()) std::this_thread::sleep_for(100us);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double wakeups = static_cast<double>((*pool)->at(0).stats().wakeups_sent.get() +
                                             (*pool)->at(1).stats().wakeups_sent.get());
  (*pool)->stop();
  row r;
  r.case_name = "mesh ping-pong hop via sleep+wake";
  r.ns_per_msg = secs * 1e9 / rounds;
  r.extra["wakeups_per_hop"] = wakeups / rounds;
  out.add(std::move(r));
}

void idle_cpu(const options& opt, report& out) {
  const auto span = opt.quick ? 1s : 5s;
  core::pool_options po;
  po.workers = 2;
  auto pool = core::worker_pool::create(po);
  if (!pool) return;
  if (!(*pool)->start([](worker&) { return std::make_unique<core::worker_handler>(); })) return;
  std::this_thread::sleep_for(100ms);  // let the workers settle into sleep
  const double c0 = cpu_seconds();
  std::this_thread::sleep_for(span);
  const double used = cpu_seconds() - c0;
  (*pool)->stop();
  row r;
  r.case_name = "idle 2-worker pool";
  r.ns_per_msg = 0;
  r.extra["cpu_seconds"] = used;
  r.extra["over_seconds"] = std::chrono::duration<double>(span).count();
  out.add(std::move(r));
}

}  // namespace

void run_mesh_benches(const options& opt, report& out) {
  all_to_all(opt, out);
  wake_latency(opt, out);
  idle_cpu(opt, out);
}

}  // namespace keyway::bench
