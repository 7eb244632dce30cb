// Tests of the queue library beyond spsc_ring: mpsc_queue, mpmc_queue,
// unbounded_spsc_queue and unbounded_mpsc_queue. Edge cases first, then
// multi-threaded property tests with a printed seed.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "core/mpmc_queue.hpp"
#include "core/mpsc_queue.hpp"
#include "core/unbounded_mpsc_queue.hpp"
#include "core/unbounded_spsc_queue.hpp"
#include "tests/unit/test_seed.hpp"

using keyway::core::mpmc_queue;
using keyway::core::mpsc_queue;
using keyway::core::queue_stats;
using keyway::core::unbounded_mpsc_queue;
using keyway::core::unbounded_spsc_queue;

namespace {

// ---- single-threaded helpers shared by the two bounded queues ---------------

template <class Q>
void check_bounded_edges() {
  CHECK(Q(0).capacity() == 2);
  CHECK(Q(3).capacity() == 4);
  CHECK(Q(1024).capacity() == 1024);
  CHECK(Q(1025).capacity() == 2048);

  Q q(4);
  int v = -1;
  CHECK_FALSE(q.try_pop(v));
  for (int i = 0; i < 4; ++i) CHECK(q.try_push(i));
  CHECK_FALSE(q.try_push(99));
  CHECK(q.size_approx() == 4);
  CHECK(q.stats().sent == 4);
  REQUIRE(q.try_pop(v));
  CHECK(v == 0);
  CHECK(q.try_push(4));  // the freed slot is usable again at once
  CHECK_FALSE(q.try_push(5));
  for (int i = 1; i < 5; ++i) {
    REQUIRE(q.try_pop(v));
    CHECK(v == i);
  }
  CHECK_FALSE(q.try_pop(v));
  CHECK(q.size_approx() == 0);
  CHECK(q.stats().sent == 5);
  CHECK(q.stats().received == 5);
}

template <class Q>
void check_bounded_wrap() {
  Q q(8);
  std::uint64_t next_in = 0, next_out = 0, v = 0;
  for (int round = 0; round < 1000; ++round) {
    const int fill = round % 8 + 1;
    for (int i = 0; i < fill; ++i) REQUIRE(q.try_push(next_in++));
    if (fill == 8) REQUIRE_FALSE(q.try_push(std::uint64_t{0}));
    for (int i = 0; i < fill; ++i) {
      REQUIRE(q.try_pop(v));
      REQUIRE(v == next_out++);
    }
    REQUIRE_FALSE(q.try_pop(v));
  }
  CHECK(next_in / q.capacity() > 500);  // many laps
  CHECK(q.stats().sent == next_in);
  CHECK(q.stats().received == next_out);
}

template <class Q>
void check_move_only() {
  Q q(4);
  CHECK(q.try_push(std::make_unique<int>(1)));
  CHECK(q.try_emplace(new int(2)));
  std::unique_ptr<int> p;
  REQUIRE(q.try_pop(p));
  CHECK(*p == 1);
  REQUIRE(q.try_pop(p));
  CHECK(*p == 2);
  CHECK_FALSE(q.try_pop(p));
  CHECK(*p == 2);  // a failed pop leaves the target alone
}

template <class Q>
void check_destroys_leftovers() {
  auto token = std::make_shared<int>(0);
  {
    Q q(8);
    for (int i = 0; i < 8; ++i) REQUIRE(q.try_push(token));
    std::shared_ptr<int> out;
    for (int i = 0; i < 5; ++i) REQUIRE(q.try_pop(out));
    out.reset();
    for (int i = 0; i < 4; ++i) REQUIRE(q.try_push(token));  // wraps
    CHECK(token.use_count() == 1 + 7);
  }
  CHECK(token.use_count() == 1);
}

// ---- multi-threaded property test ---------------------------------------------

// Item: producer id in the high 16 bits, per-producer sequence below.
constexpr int id_shift = 48;
constexpr std::uint64_t seq_mask = (std::uint64_t{1} << id_shift) - 1;

struct property_result {
  std::uint64_t received = 0;
  bool fifo_per_producer = true;  // each consumer saw each producer's items in order
  bool unknown_item = false;
  std::uint64_t duplicates = 0;
  std::uint64_t missing = 0;
  bool stats_monotonic = true;  // concurrent snapshots: received <= sent, both rising
  queue_stats final_stats;
};

/// Runs `producers` threads that each push `per_producer` items and `consumers`
/// threads that pop until all arrived (or the producers are done and the queue
/// is drained: then items are missing). Batch sizes and yields are random.
/// push(v) returns false when full; pop(v) returns false when empty.
template <class Q, class Push, class Pop>
property_result run_property(Q& q, int producers, int consumers, std::uint64_t per_producer,
                             std::uint64_t seed, Push push, Pop pop) {
  const std::uint64_t total = per_producer * static_cast<std::uint64_t>(producers);
  std::atomic<std::uint64_t> received{0};
  std::atomic<int> producers_left{producers};
  std::atomic<bool> stop_observer{false};
  std::vector<std::vector<std::uint64_t>> logs(static_cast<std::size_t>(consumers));
  std::vector<char> fifo(static_cast<std::size_t>(consumers),
                         1);  // not vector<bool>: one byte per thread
  bool stats_ok = true;

  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(seed + 0x100 * static_cast<std::uint64_t>(p + 1));
      const std::uint64_t tag = static_cast<std::uint64_t>(p) << id_shift;
      std::uint64_t i = 0;
      while (i < per_producer) {
        const std::uint64_t burst = rng() % 48 + 1;
        for (std::uint64_t b = 0; b < burst && i < per_producer;) {
          if (push(tag | i)) {
            ++i;
            ++b;
          } else {
            std::this_thread::yield();  // full
          }
        }
        if (rng() % 4 == 0) std::this_thread::yield();
      }
      producers_left.fetch_sub(1, std::memory_order_release);
    });
  }
  for (int c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(seed + 0x10000 * static_cast<std::uint64_t>(c + 1));
      std::vector<std::uint64_t> last(static_cast<std::size_t>(producers), ~std::uint64_t{0});
      auto& log = logs[static_cast<std::size_t>(c)];
      bool in_order = true;
      while (received.load(std::memory_order_relaxed) < total) {
        const bool done = producers_left.load(std::memory_order_acquire) == 0;
        const std::uint64_t burst = rng() % 48 + 1;
        std::uint64_t got = 0;
        std::uint64_t v;
        while (got < burst && pop(v)) {
          ++got;
          log.push_back(v);
          const std::uint64_t p = v >> id_shift;
          if (p < last.size()) {
            const std::uint64_t s = v & seq_mask;
            if (last[p] != ~std::uint64_t{0} && s <= last[p]) in_order = false;
            last[p] = s;
          }
        }
        received.fetch_add(got, std::memory_order_relaxed);
        if (got == 0 && done) break;  // producers finished before an empty pop
        if (got == 0 || rng() % 4 == 0) std::this_thread::yield();
      }
      fifo[static_cast<std::size_t>(c)] = in_order;
    });
  }
  std::thread observer([&] {
    queue_stats prev;
    while (!stop_observer.load(std::memory_order_acquire)) {
      const queue_stats s = q.stats();
      if (s.received > s.sent || s.sent < prev.sent || s.received < prev.received) stats_ok = false;
      prev = s;
      std::this_thread::yield();
    }
  });
  for (auto& t : threads) t.join();
  stop_observer.store(true, std::memory_order_release);
  observer.join();

  property_result r;
  r.received = received.load();
  r.stats_monotonic = stats_ok;
  r.final_stats = q.stats();
  std::vector<std::vector<std::uint8_t>> seen(static_cast<std::size_t>(producers),
                                              std::vector<std::uint8_t>(per_producer, 0));
  for (int c = 0; c < consumers; ++c) {
    r.fifo_per_producer = r.fifo_per_producer && fifo[static_cast<std::size_t>(c)];
    for (std::uint64_t v : logs[static_cast<std::size_t>(c)]) {
      const std::uint64_t p = v >> id_shift, s = v & seq_mask;
      if (p >= static_cast<std::uint64_t>(producers) || s >= per_producer) {
        r.unknown_item = true;
        continue;
      }
      if (seen[p][s]++ != 0) ++r.duplicates;
    }
  }
  for (const auto& per : seen)
    for (std::uint8_t n : per) r.missing += n == 0;
  return r;
}

void check_property(const property_result& r, std::uint64_t total) {
  CHECK(r.missing == 0);
  CHECK(r.duplicates == 0);
  CHECK_FALSE(r.unknown_item);
  CHECK(r.fifo_per_producer);
  CHECK(r.received == total);
  CHECK(r.stats_monotonic);
  CHECK(r.final_stats.sent == total);
  CHECK(r.final_stats.received == total);
}

}  // namespace

// ---- mpsc_queue ---------------------------------------------------------------

TEST_CASE("mpsc_queue capacity, full and empty edges") {
  check_bounded_edges<mpsc_queue<int>>();
}
TEST_CASE("mpsc_queue wraps around many laps") {
  check_bounded_wrap<mpsc_queue<std::uint64_t>>();
}
TEST_CASE("mpsc_queue carries move-only items") {
  check_move_only<mpsc_queue<std::unique_ptr<int>>>();
}
TEST_CASE("mpsc_queue destroys the items left in it") {
  check_destroys_leftovers<mpsc_queue<std::shared_ptr<int>>>();
}

TEST_CASE("mpsc_queue drain moves what is published, in order") {
  mpsc_queue<std::unique_ptr<int>> q(8);
  for (int i = 0; i < 6; ++i) REQUIRE(q.try_push(std::make_unique<int>(i)));
  std::vector<std::unique_ptr<int>> out(4);
  REQUIRE(q.drain(out) == 4);
  for (int i = 0; i < 4; ++i) CHECK(*out[static_cast<std::size_t>(i)] == i);
  for (int i = 6; i < 12; ++i) REQUIRE(q.try_push(std::make_unique<int>(i)));  // wraps
  CHECK_FALSE(q.try_push(std::make_unique<int>(99)));
  std::vector<std::unique_ptr<int>> rest(16);
  REQUIRE(q.drain(rest) == 8);
  for (int i = 0; i < 8; ++i) CHECK(*rest[static_cast<std::size_t>(i)] == i + 4);
  CHECK(q.drain(rest) == 0);
  CHECK(q.stats().received == 12);
}

TEST_CASE("mpsc_queue 3 producers, 1 consumer, random batches and yields") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t per = 50'000;
  mpsc_queue<std::uint64_t> q(64);
  std::mt19937_64 pick(seed);  // the consumer alone uses it
  std::vector<std::uint64_t> buf(16);
  std::size_t buf_pos = 0, buf_len = 0;
  auto r = run_property(
      q, 3, 1, per, seed, [&](std::uint64_t v) { return q.try_push(v); },
      [&](std::uint64_t& v) {
        // Mix single pops with drains of random size (single consumer).
        if (buf_pos == buf_len) {
          if (pick() % 2 == 0) return q.try_pop(v);
          buf_len = q.drain(std::span<std::uint64_t>(buf).first(pick() % buf.size() + 1));
          buf_pos = 0;
          if (buf_len == 0) return false;
        }
        v = buf[buf_pos++];
        return true;
      });
  check_property(r, 3 * per);
}

// ---- mpmc_queue ---------------------------------------------------------------

TEST_CASE("mpmc_queue capacity, full and empty edges") {
  check_bounded_edges<mpmc_queue<int>>();
}
TEST_CASE("mpmc_queue wraps around many laps") {
  check_bounded_wrap<mpmc_queue<std::uint64_t>>();
}
TEST_CASE("mpmc_queue carries move-only items") {
  check_move_only<mpmc_queue<std::unique_ptr<int>>>();
}
TEST_CASE("mpmc_queue destroys the items left in it") {
  check_destroys_leftovers<mpmc_queue<std::shared_ptr<int>>>();
}

TEST_CASE("mpmc_queue 3 producers, 2 consumers, random batches and yields") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t per = 40'000;
  mpmc_queue<std::uint64_t> q(32);
  auto r = run_property(
      q, 3, 2, per, seed, [&](std::uint64_t v) { return q.try_push(v); },
      [&](std::uint64_t& v) { return q.try_pop(v); });
  check_property(r, 3 * per);
}

TEST_CASE("mpmc_queue 2 producers, 3 consumers, tiny capacity") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t per = 40'000;
  mpmc_queue<std::uint64_t> q(4);
  auto r = run_property(
      q, 2, 3, per, seed, [&](std::uint64_t v) { return q.try_push(v); },
      [&](std::uint64_t& v) { return q.try_pop(v); });
  check_property(r, 2 * per);
}

// ---- unbounded_spsc_queue -----------------------------------------------------

TEST_CASE("unbounded_spsc_queue grows past its block size and keeps order") {
  unbounded_spsc_queue<int, 4> q;
  int v = -1;
  CHECK_FALSE(q.try_pop(v));
  for (int i = 0; i < 37; ++i) q.push(i);  // ten blocks
  CHECK(q.size_approx() == 37);
  for (int i = 0; i < 37; ++i) {
    REQUIRE(q.try_pop(v));
    CHECK(v == i);
  }
  CHECK_FALSE(q.try_pop(v));
  CHECK(q.stats().sent == 37);
  CHECK(q.stats().received == 37);
}

TEST_CASE("unbounded_spsc_queue reuses blocks over many laps") {
  unbounded_spsc_queue<std::uint64_t, 8> q;
  std::uint64_t next_in = 0, next_out = 0, v = 0;
  for (int round = 0; round < 2000; ++round) {
    const int fill = round % 29 + 1;  // up to ~4 blocks in flight
    for (int i = 0; i < fill; ++i) q.push(next_in++);
    for (int i = 0; i < fill; ++i) {
      REQUIRE(q.try_pop(v));
      REQUIRE(v == next_out++);
    }
    REQUIRE_FALSE(q.try_pop(v));
  }
  CHECK(q.stats().sent == next_in);
  CHECK(q.stats().received == next_out);
}

TEST_CASE("unbounded_spsc_queue carries move-only items") {
  unbounded_spsc_queue<std::unique_ptr<int>, 2> q;
  for (int i = 0; i < 5; ++i) q.push(std::make_unique<int>(i));
  q.emplace(new int(5));
  std::unique_ptr<int> p;
  for (int i = 0; i < 6; ++i) {
    REQUIRE(q.try_pop(p));
    CHECK(*p == i);
  }
  CHECK_FALSE(q.try_pop(p));
}

TEST_CASE("unbounded_spsc_queue destroys the items left in it") {
  auto token = std::make_shared<int>(0);
  for (int popped : {0, 3, 4, 5, 8}) {  // 4 and 8: the head sits on a block boundary
    CAPTURE(popped);
    {
      unbounded_spsc_queue<std::shared_ptr<int>, 4> q;
      for (int i = 0; i < 11; ++i) q.push(token);
      std::shared_ptr<int> out;
      for (int i = 0; i < popped; ++i) REQUIRE(q.try_pop(out));
      out.reset();
      CHECK(token.use_count() == 1 + 11 - popped);
    }
    CHECK(token.use_count() == 1);
  }
}

TEST_CASE("unbounded_spsc_queue two threads, random bursts and yields") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t per = 150'000;
  unbounded_spsc_queue<std::uint64_t, 16> q;  // small blocks: many links and reuses
  auto r = run_property(
      q, 1, 1, per, seed,
      [&](std::uint64_t v) {
        q.push(v);
        return true;
      },
      [&](std::uint64_t& v) { return q.try_pop(v); });
  check_property(r, per);
}

// ---- unbounded_mpsc_queue -----------------------------------------------------

TEST_CASE("unbounded_mpsc_queue grows past its block size and keeps order") {
  unbounded_mpsc_queue<int, 3> q;
  int v = -1;
  CHECK_FALSE(q.try_pop(v));
  for (int i = 0; i < 40; ++i) q.push(i);
  CHECK(q.size_approx() == 40);
  CHECK(q.stats().sent == 40);
  for (int i = 0; i < 40; ++i) {
    REQUIRE(q.try_pop(v));
    CHECK(v == i);
  }
  CHECK_FALSE(q.try_pop(v));
  CHECK(q.stats().received == 40);
  for (int i = 0; i < 1000; ++i) {  // reuses the spare block, lap after lap
    q.push(i);
    REQUIRE(q.try_pop(v));
    REQUIRE(v == i);
  }
  CHECK(q.stats().sent == 1040);
}

TEST_CASE("unbounded_mpsc_queue carries move-only items") {
  unbounded_mpsc_queue<std::unique_ptr<int>, 1> q;  // one slot per block
  for (int i = 0; i < 5; ++i) q.push(std::make_unique<int>(i));
  q.emplace(new int(5));
  std::unique_ptr<int> p;
  for (int i = 0; i < 6; ++i) {
    REQUIRE(q.try_pop(p));
    CHECK(*p == i);
  }
  CHECK_FALSE(q.try_pop(p));
}

TEST_CASE("unbounded_mpsc_queue destroys the items left in it") {
  auto token = std::make_shared<int>(0);
  for (int popped : {0, 2, 3, 6, 7}) {  // 3 and 6: a block was just retired
    CAPTURE(popped);
    {
      unbounded_mpsc_queue<std::shared_ptr<int>, 3> q;
      for (int i = 0; i < 10; ++i) q.push(token);
      std::shared_ptr<int> out;
      for (int i = 0; i < popped; ++i) REQUIRE(q.try_pop(out));
      out.reset();
      CHECK(token.use_count() == 1 + 10 - popped);
    }
    CHECK(token.use_count() == 1);
  }
}

TEST_CASE("unbounded_mpsc_queue 3 producers, 1 consumer, random bursts and yields") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t per = 50'000;
  unbounded_mpsc_queue<std::uint64_t, 15> q;  // small blocks: many installs
  auto r = run_property(
      q, 3, 1, per, seed,
      [&](std::uint64_t v) {
        q.push(v);
        return true;
      },
      [&](std::uint64_t& v) { return q.try_pop(v); });
  check_property(r, 3 * per);
}
