// subject_cache: finds what was inserted, misses what was not, clears in O(1),
// and stays right when full or when many subjects share probe chains.
#include "daemon/subject_cache.hpp"

#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>

#include "tests/support/numbered.hpp"
#include "tests/unit/test_seed.hpp"

using keyway::daemon::subject_cache;

using keyway::test::numbered;

TEST_CASE("subject_cache finds inserted subjects and only those") {
  subject_cache<int> c(8);
  CHECK(c.find("a.b") == nullptr);  // before any insert: no table yet
  c.insert("a.b", 1);
  c.insert("a.bc", 2);
  c.insert("", 3);
  REQUIRE(c.find("a.b") != nullptr);
  CHECK(*c.find("a.b") == 1);
  CHECK(*c.find("a.bc") == 2);
  CHECK(*c.find("") == 3);
  CHECK(c.find("a.b.") == nullptr);
  CHECK(c.find("a") == nullptr);
  CHECK(c.size() == 3);
  c.clear();
  CHECK(c.size() == 0);
  CHECK(c.find("a.b") == nullptr);
  CHECK(c.find("") == nullptr);
  c.insert("a.b", 4);
  CHECK(*c.find("a.b") == 4);
  CHECK(c.find("a.bc") == nullptr);
}

TEST_CASE("subject_cache empties itself when it holds capacity subjects") {
  subject_cache<int> c(4);
  for (std::uint64_t i = 0; i < 4; ++i) c.insert(numbered("s.", i), static_cast<int>(i));
  for (std::uint64_t i = 0; i < 4; ++i) CHECK(*c.find(numbered("s.", i)) == static_cast<int>(i));
  c.insert("s.4", 4);  // the fifth: clears first
  CHECK(c.size() == 1);
  CHECK(*c.find("s.4") == 4);
  CHECK(c.find("s.0") == nullptr);
}

TEST_CASE("subject_cache against a map, with random subjects and clears") {
  const auto seed = keyway::test::seed();
  std::mt19937_64 rng(seed);
  subject_cache<std::uint64_t> c(64);  // 128 slots: long probe chains happen
  std::map<std::string, std::uint64_t> model;
  for (int step = 0; step < 20'000; ++step) {
    std::string s = "t";
    const int tokens = 1 + static_cast<int>(rng() % 3);
    for (int t = 0; t < tokens; ++t) s += numbered(".", rng() % 40);
    const auto* hit = c.find(s);
    const auto it = model.find(s);
    REQUIRE_MESSAGE((hit != nullptr) == (it != model.end()), "seed ", seed, " step ", step, " ", s);
    if (hit != nullptr) {
      REQUIRE_MESSAGE(*hit == it->second, "seed ", seed);
      continue;
    }
    if (c.size() >= 64) model.clear();  // insert() is about to clear
    if (rng() % 500 == 0) {
      c.clear();
      model.clear();
      continue;
    }
    const std::uint64_t v = rng();
    c.insert(s, v);
    model[s] = v;
    REQUIRE(c.size() == model.size());
  }
}
