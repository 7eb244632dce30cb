// consistent_partitioner's membership bookkeeping: the member limit as an error value,
// the id -> index table through churn, and many joins and leaves on one table (which
// used to cost a linear search each). Mapping quality (balance, movement, golden
// values) is in partitioner_test.cpp. Random ids come from keyway::test::seed().
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/consistent_partitioner.hpp"
#include "tests/unit/core/random_ids.hpp"
#include "tests/unit/test_seed.hpp"

namespace {

namespace kc = keyway::core;
using kc::consistent_partitioner;

using keyway::test::random_ids;

std::array<std::byte, 8> key_of(std::uint64_t k) {
  std::array<std::byte, 8> b;
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>(k >> (8 * i));
  return b;
}

std::vector<std::uint32_t> picks(consistent_partitioner& p, std::size_t keys) {
  std::vector<std::uint32_t> out(keys);
  for (std::size_t k = 0; k < keys; ++k) {
    const auto b = key_of(k);
    out[k] = p.pick(std::span<const std::byte>(b));
  }
  return out;
}

}  // namespace

TEST_CASE("consistent_partitioner refuses the member past max_members with an error value") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto ids = random_ids(consistent_partitioner::max_members + 1, rng);
  consistent_partitioner p(2, 7);  // two slots: each add is cheap
  for (std::size_t i = 0; i < consistent_partitioner::max_members; ++i) REQUIRE(p.add(ids[i]));
  CHECK(p.size() == consistent_partitioner::max_members);
  CHECK(p.index_bound() == consistent_partitioner::max_members);

  const std::uint32_t extra = ids.back();
  const auto refused = p.add(extra);
  CHECK_FALSE(refused);
  CHECK(refused.error() == kc::errc::invalid_argument);
  CHECK(p.size() == consistent_partitioner::max_members);
  CHECK(p.index_of(extra) == consistent_partitioner::no_index);
  CHECK(p.remove(extra).error() == kc::errc::unknown_member);
  for (std::uint64_t k = 0; k < 64; ++k) {  // every pick is a member
    const auto b = key_of(k);
    CHECK(p.index_of(p.pick(std::span<const std::byte>(b))) != consistent_partitioner::no_index);
  }

  // After a leave there is room again, and the newcomer reuses the free index.
  const std::size_t freed = p.index_of(ids[5]);
  REQUIRE(p.remove(ids[5]));
  REQUIRE(p.add(extra));
  CHECK(p.index_of(extra) == freed);
  CHECK(p.index_bound() == consistent_partitioner::max_members);
}

TEST_CASE("consistent_partitioner keeps ids and indexes right through random churn") {
  std::mt19937_64 rng(keyway::test::seed());
  consistent_partitioner p(64, 11);
  std::unordered_map<std::uint32_t, std::size_t> model;  // id -> index
  for (int round = 0; round < 20000; ++round) {
    // A small id range, so that duplicates, unknown removals and probe runs are common.
    const auto id = static_cast<std::uint32_t>(rng() % 3000) * 0x10001u;
    if (rng() % 2 == 0) {
      const auto added = p.add(id);
      if (model.contains(id)) {
        CHECK(added.error() == kc::errc::duplicate_member);
      } else {
        REQUIRE(added);
        const std::size_t m = p.index_of(id);
        REQUIRE(m != consistent_partitioner::no_index);
        CHECK(m < p.index_bound());
        CHECK(
            std::none_of(model.begin(), model.end(), [&](const auto& e) { return e.second == m; }));
        model[id] = m;
      }
    } else {
      const auto removed = p.remove(id);
      CHECK(bool(removed) == model.contains(id));
      if (!removed) CHECK(removed.error() == kc::errc::unknown_member);
      model.erase(id);
      CHECK(p.index_of(id) == consistent_partitioner::no_index);
    }
    REQUIRE(p.size() == model.size());
    if (round % 1000 == 0) {
      for (const auto& [member, index] : model)
        CHECK(p.index_of(member) == index);  // indexes are stable
      if (!model.empty()) {
        for (std::uint64_t k = 0; k < 256; ++k) {
          const auto b = key_of(k);
          const std::span<const std::byte> key(b);
          CHECK(p.pick_index(key) == p.index_of(p.pick(key)));
        }
      }
    }
  }
}

TEST_CASE(
    "consistent_partitioner: 4096 joins and 4096 leaves on one 4096-slot table keep the mapping") {
  std::mt19937_64 rng(keyway::test::seed());
  constexpr std::size_t n = 4096, slots = 4096, keys = 20000;
  const auto ids = random_ids(n, rng);
  consistent_partitioner p(slots, 0x6b657977'61792d67);

  const auto t0 = std::chrono::steady_clock::now();
  for (const std::uint32_t id : ids) REQUIRE(p.add(id));
  const auto t1 = std::chrono::steady_clock::now();
  CHECK(p.size() == n);

  // The mapping is a function of the member set: a table built in another order agrees.
  consistent_partitioner reversed(slots, 0x6b657977'61792d67);
  for (auto it = ids.rbegin(); it != ids.rend(); ++it) REQUIRE(reversed.add(*it));
  const auto full = picks(p, keys);
  CHECK(full == picks(reversed, keys));

  // Half leave (in random order): only their keys move, and the result is again what a
  // fresh table of the members left would say.
  std::vector<std::uint32_t> order = ids;
  std::shuffle(order.begin(), order.end(), rng);
  const std::unordered_set<std::uint32_t> leavers(order.begin(), order.begin() + n / 2);
  const auto t2 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < n / 2; ++i) REQUIRE(p.remove(order[i]));
  const auto t3 = std::chrono::steady_clock::now();
  CHECK(p.size() == n / 2);
  const auto half = picks(p, keys);
  std::size_t bystanders_moved = 0, to_leavers = 0;
  for (std::size_t k = 0; k < keys; ++k) {
    bystanders_moved += !leavers.contains(full[k]) && half[k] != full[k];
    to_leavers += leavers.contains(half[k]);
  }
  CHECK(bystanders_moved == 0);
  CHECK(to_leavers == 0);
  consistent_partitioner rest(slots, 0x6b657977'61792d67);
  for (std::size_t i = n / 2; i < n; ++i) REQUIRE(rest.add(order[i]));
  CHECK(half == picks(rest, keys));

  const auto t4 = std::chrono::steady_clock::now();
  for (std::size_t i = n / 2; i < n; ++i) REQUIRE(p.remove(order[i]));
  const auto t5 = std::chrono::steady_clock::now();
  CHECK(p.size() == 0);
  REQUIRE(p.add(ids[0]));  // an emptied table works again
  CHECK(picks(p, 16) == std::vector<std::uint32_t>(16, ids[0]));

  using ms = std::chrono::duration<double, std::milli>;
  MESSAGE("4096 joins " << ms(t1 - t0).count() << " ms, 4096 leaves "
                        << (ms(t3 - t2) + ms(t5 - t4)).count() << " ms (4096 slots)");
}
