#include "daemon/subject_index.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>

#include "tests/unit/test_seed.hpp"

using keyway::daemon::sub_ref;
using keyway::daemon::subject_index;

namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::set<std::uint32_t> match_uids(subject_index& idx, std::string_view subject, std::string_view key = "k") {
  std::vector<sub_ref> out;
  idx.match(subject, bytes(key), out);
  std::set<std::uint32_t> uids;
  for (const auto& r : out) uids.insert(r.uid);
  CHECK(uids.size() == out.size());  // never the same subscription twice
  return uids;
}

sub_ref ref(std::uint32_t uid) { return sub_ref{uid, 0, 1, uid}; }

using tokens = std::vector<std::string>;

/// The NATS rule, token by token: the reference the index is checked against.
bool brute_match(const tokens& pattern, const tokens& subject) {
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == ">") return subject.size() > i;
    if (i >= subject.size()) return false;
    if (pattern[i] != "*" && pattern[i] != subject[i]) return false;
  }
  return pattern.size() == subject.size();
}

std::string join(const tokens& t) {
  std::string s;
  for (const auto& x : t) s.append(s.empty() ? "" : ".").append(x);
  return s;
}

/// A random pattern of 1..max_len tokens over a, b, c, `*` and a final `>`.
tokens random_pattern(std::mt19937_64& rng, int max_len) {
  static const char* const choices[] = {"a", "b", "c", "*", ">"};
  tokens p;
  const int len = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_len));
  for (int i = 0; i < len; ++i) {
    std::string t = choices[rng() % 5];
    if (t == ">" && i != len - 1) t = "*";
    p.push_back(t);
  }
  return p;
}

/// A random literal subject of 1..max_len tokens over a, b, c.
tokens random_subject(std::mt19937_64& rng, int max_len) {
  static const char* const choices[] = {"a", "b", "c"};
  tokens t;
  const int len = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_len));
  for (int i = 0; i < len; ++i) t.push_back(choices[rng() % 3]);
  return t;
}

}  // namespace

TEST_CASE("subject_index matches literals and star and tail wildcards like NATS") {
  subject_index idx;
  idx.add("orders.eu.new", "", ref(1));
  idx.add("orders.*.new", "", ref(2));
  idx.add("orders.>", "", ref(3));
  idx.add(">", "", ref(4));
  idx.add("orders.eu", "", ref(5));
  idx.add("*.*.*", "", ref(6));
  CHECK(match_uids(idx, "orders.eu.new") == std::set<std::uint32_t>{1, 2, 3, 4, 6});
  CHECK(match_uids(idx, "orders.us.new") == std::set<std::uint32_t>{2, 3, 4, 6});
  CHECK(match_uids(idx, "orders.eu") == std::set<std::uint32_t>{3, 4, 5});
  CHECK(match_uids(idx, "orders") == std::set<std::uint32_t>{4});  // `>` needs at least one token
  CHECK(match_uids(idx, "orders.eu.new.x") == std::set<std::uint32_t>{3, 4});
  CHECK(match_uids(idx, "other") == std::set<std::uint32_t>{4});
  CHECK(idx.size() == 6);
}

TEST_CASE("subject_index removal prunes and leaves the rest intact") {
  subject_index idx;
  idx.add("a.b", "", ref(1));
  idx.add("a.*", "", ref(2));
  idx.add("a.>", "", ref(3));
  CHECK(idx.remove(2));
  CHECK_FALSE(idx.remove(2));
  CHECK(match_uids(idx, "a.b") == std::set<std::uint32_t>{1, 3});
  CHECK(idx.remove(1));
  CHECK(idx.remove(3));
  CHECK(match_uids(idx, "a.b").empty());
  CHECK(idx.size() == 0);
  idx.add("a.b", "", ref(1));  // re-adding after pruning works
  CHECK(match_uids(idx, "a.b") == std::set<std::uint32_t>{1});
}

TEST_CASE("subject_index queue groups pick exactly one member per group by key") {
  subject_index idx;
  for (std::uint32_t uid = 10; uid < 13; ++uid) idx.add("jobs.>", "workers", ref(uid));
  idx.add("jobs.>", "auditors", ref(20));
  idx.add("jobs.>", "", ref(30));
  std::map<std::uint32_t, int> load;
  std::map<std::string, std::uint32_t> owner;
  for (int i = 0; i < 3000; ++i) {
    const std::string key = "key-" + std::to_string(i);
    std::vector<sub_ref> out;
    idx.match("jobs.run", bytes(key), out);
    REQUIRE(out.size() == 3);  // one worker member, the auditor, the plain subscriber
    int workers = 0;
    for (const auto& r : out)
      if (r.uid >= 10 && r.uid < 13) {
        ++workers;
        ++load[r.uid];
        owner[key] = r.uid;
      }
    CHECK(workers == 1);
  }
  CHECK(load.size() == 3);
  for (auto& [uid, n] : load) CHECK(n > 700);  // about 1000 each
  // Same key, same member, every time.
  std::vector<sub_ref> again;
  idx.match("jobs.run", bytes("key-7"), again);
  CHECK(std::count_if(again.begin(), again.end(), [&](const sub_ref& r) { return r.uid == owner["key-7"]; }) == 1);

  // A member leaves: only its keys move.
  CHECK(idx.remove(11));
  int moved_other = 0;
  for (auto& [key, uid] : owner) {
    std::vector<sub_ref> out;
    idx.match("jobs.run", bytes(key), out);
    for (const auto& r : out)
      if (r.uid >= 10 && r.uid < 13) {
        CHECK(r.uid != 11);
        if (uid != 11 && r.uid != uid) ++moved_other;
      }
  }
  CHECK(moved_other == 0);
}

TEST_CASE("subject_index agrees with a brute-force matcher on random subscriptions") {
  std::mt19937_64 rng(keyway::test::seed());
  subject_index idx;
  std::map<std::uint32_t, tokens> pats;
  for (std::uint32_t uid = 1; uid <= 200; ++uid) {
    pats[uid] = random_pattern(rng, 4);
    idx.add(join(pats[uid]), "", ref(uid));
  }
  for (std::uint32_t uid = 1; uid <= 200; uid += 3) {
    idx.remove(uid);
    pats.erase(uid);
  }
  for (int round = 0; round < 500; ++round) {
    const tokens sub = random_subject(rng, 5);
    std::set<std::uint32_t> want;
    for (auto& [uid, p] : pats)
      if (brute_match(p, sub)) want.insert(uid);
    CHECK_MESSAGE(match_uids(idx, join(sub)) == want, "subject " << join(sub));
  }
}

TEST_CASE("subject_index cached matches follow every add and remove") {
  std::mt19937_64 rng(keyway::test::seed());
  subject_index idx;
  std::map<std::uint32_t, tokens> pats;
  std::uint32_t next_uid = 1;
  for (int round = 0; round < 3000; ++round) {
    const auto action = rng() % 10;
    if (action == 0 || pats.size() < 3) {
      pats[next_uid] = random_pattern(rng, 3);
      idx.add(join(pats[next_uid]), "", ref(next_uid));
      ++next_uid;
    } else if (action == 1) {
      auto it = std::next(pats.begin(), static_cast<long>(rng() % pats.size()));
      CHECK(idx.remove(it->first));
      pats.erase(it);
    } else {
      const tokens sub = random_subject(rng, 3);
      std::set<std::uint32_t> want;
      for (auto& [uid, p] : pats)
        if (brute_match(p, sub)) want.insert(uid);
      // The first lookup may fill the cache; the second reads it.
      CHECK_MESSAGE(match_uids(idx, join(sub)) == want, "subject " << join(sub) << " round " << round);
      CHECK_MESSAGE(match_uids(idx, join(sub)) == want, "subject " << join(sub) << " (cached) round " << round);
    }
  }
}

TEST_CASE("subject_index picks queue members by key on cached subjects and past the cache's capacity") {
  subject_index idx;
  idx.add("q.x", "g", ref(1));
  idx.add("q.x", "g", ref(2));
  idx.add("q.*", "g", ref(3));
  idx.add("q.*", "g", ref(4));
  idx.add(">", "", ref(9));
  // Five matching nodes' worth: more than one cache entry holds.
  idx.add("q.>", "", ref(10));
  idx.add("*.x", "", ref(11));
  std::map<std::string, std::set<std::uint32_t>> first;
  for (int k = 0; k < 64; ++k) first[std::to_string(k)] = match_uids(idx, "q.x", std::to_string(k));
  std::set<std::uint32_t> picked;
  for (int k = 0; k < 64; ++k) {
    const auto again = match_uids(idx, "q.x", std::to_string(k));
    CHECK(again == first[std::to_string(k)]);  // a key keeps its members
    CHECK(again.count(9) == 1);
    CHECK(again.count(10) == 1);
    CHECK(again.count(11) == 1);
    CHECK(again.count(1) + again.count(2) == 1);  // one member of g at q.x
    CHECK(again.count(3) + again.count(4) == 1);  // one member of g at q.*
    picked.insert(again.begin(), again.end());
  }
  CHECK(picked.count(1) == 1);  // keys spread over both members
  CHECK(picked.count(2) == 1);
  // More distinct subjects than the cache holds: results stay right.
  for (std::size_t i = 0; i < subject_index::cache_capacity + 100; ++i) {
    const std::string s = std::string("z.").append(std::to_string(i));
    CHECK(match_uids(idx, s) == std::set<std::uint32_t>{9});
  }
  CHECK(match_uids(idx, "q.y", "k").count(10) == 1);
}
