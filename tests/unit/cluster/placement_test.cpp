// cluster::placement: key -> node, the same on every node, balanced, and
// moving only the keys a joining or leaving node gains or loses.
#include "cluster/placement.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "core/partitioner.hpp"
#include "tests/support/numbered.hpp"

using keyway::cluster::placement;

namespace {

placement must_build(std::vector<std::string> ring, std::int64_t epoch = 1) {
  auto p = placement::build(std::move(ring), epoch);
  REQUIRE_MESSAGE(p.has_value(), p.error());
  return std::move(*p);
}

constexpr int keys = 60'000;

}  // namespace

TEST_CASE("placement: every node that builds it from the same ring agrees, in any order") {
  const placement a = must_build({"n1", "n2", "n3"}, 7);
  const placement b = must_build({"n3", "n1", "n2"}, 7);
  CHECK(a.nodes() == std::vector<std::string>{"n1", "n2", "n3"});
  CHECK(a.epoch() == 7);
  for (int i = 0; i < keys; ++i) {
    const std::string k = keyway::test::numbered("key-", i);
    REQUIRE(a.owner(k) == b.owner(k));
  }
}

TEST_CASE("placement: keys spread evenly over the nodes") {
  const placement p = must_build({"a", "b", "c"});
  std::map<std::string, int> count;
  for (int i = 0; i < keys; ++i) ++count[p.owner(keyway::test::numbered("key-", i))];
  REQUIRE(count.size() == 3);
  for (const auto& [node, n] : count) {
    INFO(node << " owns " << n << " of " << keys);
    CHECK(n > keys / 3 * 9 / 10);
    CHECK(n < keys / 3 * 11 / 10);
  }
}

TEST_CASE("placement: a join moves only keys to the new node, a leave only the leaver's") {
  const placement three = must_build({"a", "b", "c"});
  const placement four = must_build({"a", "b", "c", "d"});
  int moved = 0;
  for (int i = 0; i < keys; ++i) {
    const std::string k = keyway::test::numbered("key-", i);
    if (three.owner(k) == four.owner(k)) continue;
    ++moved;
    REQUIRE(four.owner(k) == "d");
  }
  INFO(moved << " of " << keys << " keys moved");
  CHECK(moved > keys / 4 * 9 / 10);
  CHECK(moved < keys / 4 * 11 / 10);

  const placement two = must_build({"a", "c"});
  for (int i = 0; i < keys; ++i) {
    const std::string k = keyway::test::numbered("key-", i);
    if (three.owner(k) != "b") REQUIRE(two.owner(k) == three.owner(k));
  }
}

TEST_CASE("placement: independent of the worker level, which uses another seed") {
  // Keys one node owns still spread over that node's workers.
  const placement p = must_build({"a", "b"});
  auto workers = keyway::core::make_partitioner(keyway::core::partition_strategy::consistent);
  REQUIRE(workers.has_value());
  REQUIRE((*workers)->add(0).has_value());
  REQUIRE((*workers)->add(1).has_value());
  int on_a = 0, on_a_worker0 = 0;
  for (int i = 0; i < keys; ++i) {
    const std::string k = keyway::test::numbered("key-", i);
    if (p.owner(k) != "a") continue;
    ++on_a;
    if ((*workers)->pick(k) == 0) ++on_a_worker0;
  }
  INFO(on_a_worker0 << " of node a's " << on_a << " keys on worker 0");
  CHECK(on_a_worker0 > on_a * 45 / 100);
  CHECK(on_a_worker0 < on_a * 55 / 100);
}

TEST_CASE("placement: an empty ring or a repeated node is refused") {
  auto empty = placement::build({}, 1);
  REQUIRE_FALSE(empty.has_value());
  CHECK(empty.error().find("no active node") != std::string::npos);
  auto twice = placement::build({"a", "b", "a"}, 1);
  REQUIRE_FALSE(twice.has_value());
  CHECK(twice.error().find("\"a\" twice") != std::string::npos);
}
