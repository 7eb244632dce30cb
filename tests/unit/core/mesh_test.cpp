#include "core/mesh.hpp"

#include <doctest/doctest.h>

#include <asio/steady_timer.hpp>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "core/worker_pool.hpp"
#include "tests/unit/test_seed.hpp"

using namespace keyway::core;
using namespace std::chrono_literals;

namespace {

struct msg {
  std::uint32_t from = 0;
  std::uint64_t seq = 0;
};

/// Shared verdict of the all-to-all test; written by workers, read by the test.
struct tally {
  explicit tally(std::size_t n) : received(n * n) {}
  std::vector<std::atomic<std::uint64_t>> received;  // [to * n + from]
  std::atomic<std::uint64_t> order_violations{0};
};

/// Each worker sends `per_peer` messages to every worker (itself included) in
/// random bursts, paced by a timer so that peers fall asleep in between.
class all_to_all : public worker_handler {
 public:
  all_to_all(worker& w, mesh<msg>& m, tally& t, std::uint64_t per_peer, std::uint64_t seed)
      : w_(w),
        ep_(m.at(w.id())),
        n_(m.size()),
        tally_(t),
        per_peer_(per_peer),
        next_seq_(n_, 0),
        expect_(n_, 0),
        rng_(seed + w.id()),
        timer_(w.io()) {}

  void init() override {
    ep_.attach(w_, w_.stats());
    arm();
  }
  std::size_t poll() override {
    return ep_.drain([&](msg& m) {
      if (m.seq != expect_[m.from]) tally_.order_violations.fetch_add(1);
      expect_[m.from] = m.seq + 1;
      tally_.received[w_.id() * n_ + m.from].fetch_add(1, std::memory_order_relaxed);
    });
  }
  void flush() override { ep_.flush(); }
  bool has_work() override { return ep_.has_work(); }

 private:
  void arm() {
    timer_.expires_after(std::chrono::microseconds(rng_() % 300));
    timer_.async_wait([this](std::error_code ec) {
      if (ec) return;
      burst();
    });
  }
  void burst() {
    bool more = false;
    for (std::uint32_t to = 0; to < n_; ++to) {
      std::uint64_t room = 1 + rng_() % 64;
      while (room-- != 0 && next_seq_[to] < per_peer_) {
        msg m{w_.id(), next_seq_[to]};
        if (!ep_.try_send(to, std::move(m))) break;  // no credit: retry next burst
        ++next_seq_[to];
      }
      more = more || next_seq_[to] < per_peer_;
    }
    if (more) arm();
  }

  worker& w_;
  mesh<msg>::endpoint& ep_;
  std::size_t n_;
  tally& tally_;
  std::uint64_t per_peer_;
  std::vector<std::uint64_t> next_seq_;
  std::vector<std::uint64_t> expect_;
  std::mt19937_64 rng_;
  asio::steady_timer timer_;
};

}  // namespace

TEST_CASE("mesh all-to-all with sleep and wake delivers everything in per-sender order") {
  const std::uint64_t seed = keyway::test::seed();
  for (unsigned workers : {2u, 3u}) {
    CAPTURE(workers);
    pool_options opt;
    opt.workers = workers;
    opt.pin = false;
    opt.spin_turns = 8;  // sleep early and often
    auto pool = worker_pool::create(opt);
    REQUIRE(pool);
    mesh<msg> m(workers, 32);  // small rings: credits run out
    tally t(workers);
    const std::uint64_t per_peer = 20000;
    REQUIRE((*pool)->start(
        [&](worker& w) { return std::make_unique<all_to_all>(w, m, t, per_peer, seed); }));
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    auto done = [&] {
      for (auto& c : t.received)
        if (c.load() != per_peer) return false;
      return true;
    };
    while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
    (*pool)->stop();
    for (std::size_t i = 0; i < t.received.size(); ++i) {
      CAPTURE(i);
      CHECK(t.received[i].load() == per_peer);
    }
    CHECK(t.order_violations.load() == 0);
    std::uint64_t sleeps = 0, stalls = 0;
    for (std::size_t i = 0; i < workers; ++i) {
      sleeps += (*pool)->at(i).stats().sleeps.get();
      stalls += (*pool)->at(i).stats().credit_stalls.get();
      CHECK((*pool)->at(i).stats().mesh_received.get() == per_peer * workers);
    }
    CHECK(sleeps > 0);  // the wake-up path was exercised
    MESSAGE("workers=" << workers << " sleeps=" << sleeps << " credit stalls=" << stalls);
  }
}

TEST_CASE("mesh credits run out at ring capacity and come back after a drain") {
  mesh<msg> m(2, 4);
  // Single-threaded use: attach both endpoints here (this thread owns both).
  struct nop_waker : waker {
    bool wake() noexcept override { return false; }
  } wk;
  worker_stats s0, s1;
  auto& a = m.at(0);
  auto& b = m.at(1);
  a.attach(wk, s0);
  b.attach(wk, s1);
  CHECK(a.credits(1) == 4);
  for (std::uint64_t i = 0; i < 4; ++i) CHECK(a.try_send(1, msg{0, i}));
  CHECK(a.credits(1) == 0);
  CHECK_FALSE(a.try_send(1, msg{0, 4}));
  CHECK(s0.credit_stalls.get() == 1);
  a.flush();
  CHECK(m.depth(1, 0) == 4);
  CHECK(a.credits(1) == 0);
  std::vector<std::uint64_t> got;
  CHECK(b.drain([&](msg& x) { got.push_back(x.seq); }) == 4);
  CHECK(got == std::vector<std::uint64_t>{0, 1, 2, 3});
  CHECK(a.has_work());  // the refused sender sees credit back
  CHECK(a.credits(1) == 4);
  // send() never refuses: overflow stays staged until room appears.
  for (std::uint64_t i = 0; i < 6; ++i) a.send(1, msg{0, 10 + i});
  a.flush();
  CHECK(a.staged(1) == 2);
  got.clear();
  b.drain([&](msg& x) { got.push_back(x.seq); });
  a.flush();
  b.drain([&](msg& x) { got.push_back(x.seq); });
  CHECK(got == std::vector<std::uint64_t>{10, 11, 12, 13, 14, 15});
  CHECK(a.staged(1) == 0);
}

TEST_CASE("mesh publishes a batch of 16 before the end of the turn") {
  mesh<msg> m(2, 64);
  struct nop_waker : waker {
    bool wake() noexcept override { return false; }
  } wk;
  worker_stats s0, s1;
  m.at(0).attach(wk, s0);
  m.at(1).attach(wk, s1);
  for (std::uint64_t i = 0; i < 15; ++i) m.at(0).send(1, msg{0, i});
  CHECK(m.depth(1, 0) == 0);
  m.at(0).send(1, msg{0, 15});
  CHECK(m.depth(1, 0) == 16);
}

TEST_CASE(
    "mesh: a backlog of derived traffic over the ring capacity refuses publishes to its worker") {
  // Worker 1 (the owner) has more than a ring's worth staged for worker 2
  // (a slow subscriber's worker); worker 0 (an ingress) must not hand it
  // more publishes until that backlog drains, and is woken when it has.
  mesh<msg> m(3, 4);
  struct counting_waker : waker {
    int wakes = 0;
    bool wake() noexcept override {
      ++wakes;
      return false;
    }
  } w0, w1, w2;
  worker_stats s0, s1, s2;
  auto& ingress = m.at(0);
  auto& owner = m.at(1);
  auto& sub = m.at(2);
  ingress.attach(w0, s0);
  owner.attach(w1, s1);
  sub.attach(w2, s2);
  CHECK(ingress.try_send(1, msg{0, 0}));
  for (std::uint64_t i = 0; i < 9; ++i) owner.send(2, msg{1, i});  // ring 4 + 5 staged
  owner.flush();
  CHECK(owner.staged(2) == 5);
  CHECK(owner.backlogged());
  CHECK(s1.mesh_staged.get() == 5);
  CHECK_FALSE(ingress.try_send(1, msg{0, 1}));  // refused although its ring to 1 has room
  CHECK(s0.credit_stalls.get() == 1);
  CHECK_FALSE(ingress.has_work());        // nothing to retry while the owner is backlogged
  CHECK(ingress.try_send(2, msg{0, 2}));  // other destinations are unaffected

  // The subscriber's worker drains; the owner flushes what was staged and,
  // no longer over the capacity, wakes the others.
  std::size_t drained = sub.drain([](msg&) {});
  owner.flush();
  drained += sub.drain([](msg&) {});
  owner.flush();
  CHECK(drained == 8);  // the ring's 4, then 4 of the 5 staged
  CHECK(owner.staged(2) == 0);
  CHECK_FALSE(owner.backlogged());
  CHECK(w0.wakes > 0);
  CHECK(ingress.has_work());
  CHECK(ingress.try_send(1, msg{0, 3}));
}
