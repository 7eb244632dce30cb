#include "core/spsc_ring.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tests/unit/test_seed.hpp"

using keyway::core::spsc_ring;

TEST_CASE("spsc_ring rounds capacity up to a power of two") {
  CHECK(spsc_ring<int>(0).capacity() == 2);
  CHECK(spsc_ring<int>(1).capacity() == 2);
  CHECK(spsc_ring<int>(5).capacity() == 8);
  CHECK(spsc_ring<int>(16).capacity() == 16);
  CHECK(spsc_ring<int>(17).capacity() == 32);
}

TEST_CASE("spsc_ring full and empty edges") {
  spsc_ring<int> r(4);
  int v = -1;
  CHECK_FALSE(r.try_pop(v));
  for (int i = 0; i < 4; ++i) CHECK(r.try_push(i));
  CHECK_FALSE(r.try_push(99));
  CHECK(r.free_slots() == 0);
  CHECK(r.size_approx() == 4);
  for (int i = 0; i < 4; ++i) {
    REQUIRE(r.try_pop(v));
    CHECK(v == i);
  }
  CHECK_FALSE(r.try_pop(v));
  CHECK(r.free_slots() == 4);
  CHECK(r.empty_approx());
}

TEST_CASE("spsc_ring wraps around many laps at every fill level") {
  spsc_ring<std::uint64_t> r(8);
  std::uint64_t next_in = 0, next_out = 0, v = 0;
  // 1000 laps; the fill level cycles through 1..8 so that every slot is both
  // the first and the last of a run at some point.
  for (int round = 0; round < 1000; ++round) {
    const int fill = round % 8 + 1;
    for (int i = 0; i < fill; ++i) REQUIRE(r.try_push(next_in++));
    if (fill == 8) CHECK_FALSE(r.try_push(0));
    for (int i = 0; i < fill; ++i) {
      REQUIRE(r.try_pop(v));
      REQUIRE(v == next_out++);
    }
    REQUIRE_FALSE(r.try_pop(v));
  }
  CHECK(next_out == next_in);
  CHECK(next_in / r.capacity() > 500);
  CHECK(r.stats().sent == next_in);
  CHECK(r.stats().received == next_out);
}

TEST_CASE("spsc_ring push_batch takes only what fits and publishes it") {
  spsc_ring<int> r(8);
  std::vector<int> in(11);
  for (int i = 0; i < 11; ++i) in[i] = i;
  CHECK(r.push_batch(std::span<int>(in).first(3)) == 3);
  CHECK(r.push_batch(std::span<int>(in).subspan(3)) == 5);  // 8 offered, 5 fit
  CHECK(r.free_slots() == 0);
  CHECK(r.push_batch(std::span<int>(in).subspan(8)) == 0);
  CHECK(r.push_batch({}) == 0);

  std::vector<int> out(16, -1);
  CHECK(r.drain(std::span<int>(out).first(2)) == 2);  // partial drain
  CHECK(out[0] == 0);
  CHECK(out[1] == 1);
  CHECK(r.drain(out) == 6);  // larger span than the fill level
  for (int i = 0; i < 6; ++i) CHECK(out[i] == i + 2);
  CHECK(r.drain(out) == 0);
  CHECK(r.stats().sent == 8);
  CHECK(r.stats().received == 8);
}

TEST_CASE("spsc_ring batches across the wrap point") {
  spsc_ring<int> r(8);
  std::vector<int> buf(8);
  int next_in = 0, next_out = 0;
  for (int round = 0; round < 200; ++round) {
    const std::size_t n = static_cast<std::size_t>(round % 7 + 1);
    for (std::size_t i = 0; i < n; ++i) buf[i] = next_in + static_cast<int>(i);
    REQUIRE(r.push_batch(std::span<int>(buf).first(n)) == n);
    next_in += static_cast<int>(n);
    if (round % 2 == 0) {
      std::vector<int> out(8);
      const std::size_t got = r.drain(out);
      REQUIRE(got == n);
      for (std::size_t i = 0; i < got; ++i) REQUIRE(out[i] == next_out++);
    } else {
      const std::size_t got = r.consume_all([&](int& v) { REQUIRE(v == next_out++); });
      REQUIRE(got == n);
    }
  }
  CHECK(next_out == next_in);
}

TEST_CASE("spsc_ring consume_all shows each item to `ahead` once, in order, before fn gets it") {
  for (int count : {0, 1, 3, 4, 5, 10}) {
    CAPTURE(count);
    spsc_ring<int> r(16);
    for (int i = 0; i < count; ++i) REQUIRE(r.try_push(i));
    std::vector<std::pair<char, int>> events;
    const std::size_t got = r.consume_all([&](int& v) { events.emplace_back('f', v); },
                                          [&](int& v) noexcept { events.emplace_back('a', v); });
    CHECK(got == static_cast<std::size_t>(count));
    std::vector<int> ahead_order, fn_order;
    for (std::size_t e = 0; e < events.size(); ++e) {
      auto& order = events[e].first == 'a' ? ahead_order : fn_order;
      order.push_back(events[e].second);
      if (events[e].first == 'f') {  // its `ahead` came earlier, and as many ahead as there were
        const auto seen_ahead =
            std::count(events.begin(), events.begin() + static_cast<std::ptrdiff_t>(e),
                       std::pair<char, int>{'a', events[e].second});
        CHECK(seen_ahead == 1);
        const int expect_ahead = std::min<int>(
            count, events[e].second + 1 + static_cast<int>(spsc_ring<int>::consume_lookahead));
        CHECK(static_cast<int>(ahead_order.size()) == expect_ahead);
      }
    }
    std::vector<int> all(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) all[static_cast<std::size_t>(i)] = i;
    CHECK(ahead_order == all);
    CHECK(fn_order == all);
  }
}

TEST_CASE("spsc_ring consume_all visits items in order and empties the ring") {
  spsc_ring<int> r(16);
  for (int i = 0; i < 10; ++i) REQUIRE(r.try_push(i));
  std::vector<int> seen;
  CHECK(r.consume_all([&](int& v) { seen.push_back(v); }) == 10);
  CHECK(seen == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(r.consume_all([&](int&) { FAIL("ring should be empty"); }) == 0);
  CHECK(r.free_slots() == 16);
}

TEST_CASE("spsc_ring carries move-only items") {
  spsc_ring<std::unique_ptr<int>> r(4);
  CHECK(r.try_push(std::make_unique<int>(1)));
  CHECK(r.try_emplace(new int(2)));
  std::vector<std::unique_ptr<int>> batch;
  batch.push_back(std::make_unique<int>(3));
  batch.push_back(std::make_unique<int>(4));
  CHECK(r.push_batch(batch) == 2);
  CHECK(batch[0] == nullptr);  // moved from
  std::unique_ptr<int> p;
  REQUIRE(r.try_pop(p));
  CHECK(*p == 1);
  std::vector<std::unique_ptr<int>> out(1);
  REQUIRE(r.drain(out) == 1);
  CHECK(*out[0] == 2);
  int sum = 0;
  CHECK(r.consume_all([&](std::unique_ptr<int>& q) { sum += *q; }) == 2);
  CHECK(sum == 7);
}

TEST_CASE("spsc_ring destroys the items left in it") {
  auto token = std::make_shared<int>(0);
  {
    spsc_ring<std::shared_ptr<int>> r(8);
    for (int i = 0; i < 8; ++i) REQUIRE(r.try_push(token));  // wraps below
    std::shared_ptr<int> out;
    for (int i = 0; i < 5; ++i) REQUIRE(r.try_pop(out));
    out.reset();
    for (int i = 0; i < 3; ++i) REQUIRE(r.try_push(token));
    CHECK(token.use_count() == 1 + 6);
  }
  CHECK(token.use_count() == 1);
}

TEST_CASE("spsc_ring consume_all keeps the ring consistent when the callback throws") {
  auto token = std::make_shared<int>(0);
  {
    spsc_ring<std::shared_ptr<int>> r(8);
    for (int i = 0; i < 6; ++i) REQUIRE(r.try_push(token));
    int calls = 0;
    CHECK_THROWS_AS(r.consume_all([&](std::shared_ptr<int>&) {
      if (++calls == 3) throw std::runtime_error("handler failed");
    }),
                    std::runtime_error);
    // Items 0..2 are consumed (the third included), 3..5 remain.
    CHECK(token.use_count() == 1 + 3);
    CHECK(r.size_approx() == 3);
    CHECK(r.stats().received == 3);
    std::shared_ptr<int> out;
    REQUIRE(r.try_pop(out));
    out.reset();
    CHECK(token.use_count() == 1 + 2);
  }
  CHECK(token.use_count() == 1);
}

namespace {
struct alignas(128) over_aligned {
  explicit over_aligned(int x) noexcept
      : v(x), aligned(reinterpret_cast<std::uintptr_t>(this) % 128 == 0) {}
  int v;
  bool aligned;
};
}  // namespace

TEST_CASE("spsc_ring honours over-aligned item types") {
  spsc_ring<over_aligned> r(4);
  for (int lap = 0; lap < 3; ++lap) {
    for (int i = 0; i < 4; ++i) REQUIRE(r.try_emplace(i));
    over_aligned out(-1);
    for (int i = 0; i < 4; ++i) {
      REQUIRE(r.try_pop(out));
      CHECK(out.v == i);
      CHECK(out.aligned);  // copied from the slot's flag
    }
  }
}

TEST_CASE(
    "spsc_ring two threads, random batches and yields: nothing lost, duplicated or reordered") {
  const std::uint64_t seed = keyway::test::seed();
  constexpr std::uint64_t n = 200'000;
  spsc_ring<std::uint64_t> r(64);
  std::atomic<bool> producer_done{false};

  std::thread producer([&] {
    std::mt19937_64 rng(seed);
    std::vector<std::uint64_t> batch;
    std::uint64_t next = 0;
    while (next < n) {
      const auto kind = rng() % 3;
      if (kind == 0) {
        if (r.try_push(next))
          ++next;
        else
          std::this_thread::yield();
      } else if (kind == 1) {
        if (r.try_emplace(next)) ++next;
      } else {
        const std::uint64_t want = std::min<std::uint64_t>(rng() % 40 + 1, n - next);
        batch.clear();
        for (std::uint64_t i = 0; i < want; ++i) batch.push_back(next + i);
        next += r.push_batch(batch);
      }
      if (rng() % 16 == 0) std::this_thread::yield();
    }
    producer_done.store(true, std::memory_order_release);
  });

  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  std::uint64_t expect = 0;
  bool in_order = true;
  auto check = [&](std::uint64_t v) {
    if (v != expect) in_order = false;
    ++expect;
  };
  std::vector<std::uint64_t> out(48);
  // Runs until n items arrived, or the producer is done and the ring is
  // empty (then items were lost, which the checks below report).
  while (expect < n) {
    const bool done = producer_done.load(std::memory_order_acquire);
    const auto kind = rng() % 3;
    std::size_t got = 0;
    if (kind == 0) {
      std::uint64_t v;
      if (r.try_pop(v)) {
        check(v);
        got = 1;
      }
    } else if (kind == 1) {
      const std::size_t want = rng() % out.size() + 1;
      got = r.drain(std::span<std::uint64_t>(out).first(want));
      for (std::size_t i = 0; i < got; ++i) check(out[i]);
    } else {
      got = r.consume_all([&](std::uint64_t& v) { check(v); });
    }
    if (got == 0 && done && r.size_approx() == 0) break;
    if (got == 0 || rng() % 16 == 0) std::this_thread::yield();
  }
  producer.join();
  CHECK(in_order);
  CHECK(expect == n);
  std::uint64_t extra;
  CHECK_FALSE(r.try_pop(extra));
  CHECK(r.stats().sent == n);
  CHECK(r.stats().received == n);
}
