#include "daemon/subject_index.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <string>

#include "tests/unit/test_seed.hpp"

using keyway::daemon::index_limits;
using keyway::daemon::sub_ref;
using keyway::daemon::subject_index;
using keyway::proto::errc;

namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::set<std::uint32_t> match_uids(subject_index& idx, std::string_view subject,
                                   std::string_view key = "k") {
  std::vector<sub_ref> out;
  idx.match(subject, bytes(key), out);
  std::set<std::uint32_t> uids;
  for (const auto& r : out) uids.insert(r.uid);
  CHECK(uids.size() == out.size());  // never the same subscription twice
  return uids;
}

sub_ref ref(std::uint32_t uid) {
  return sub_ref{uid, 0, 1, uid};
}

void add_ok(subject_index& idx, std::string_view pattern, std::string_view group,
            const sub_ref& r) {
  const keyway::proto::status st = idx.add(pattern, group, r);
  CHECK_MESSAGE(st.ok(), st.message());
}

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

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
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
  add_ok(idx, "orders.eu.new", "", ref(1));
  add_ok(idx, "orders.*.new", "", ref(2));
  add_ok(idx, "orders.>", "", ref(3));
  add_ok(idx, ">", "", ref(4));
  add_ok(idx, "orders.eu", "", ref(5));
  add_ok(idx, "*.*.*", "", ref(6));
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
  add_ok(idx, "a.b", "", ref(1));
  add_ok(idx, "a.*", "", ref(2));
  add_ok(idx, "a.>", "", ref(3));
  CHECK(idx.remove(2));
  CHECK_FALSE(idx.remove(2));
  CHECK(match_uids(idx, "a.b") == std::set<std::uint32_t>{1, 3});
  CHECK(idx.remove(1));
  CHECK(idx.remove(3));
  CHECK(match_uids(idx, "a.b").empty());
  CHECK(idx.size() == 0);
  add_ok(idx, "a.b", "", ref(1));  // re-adding after pruning works
  CHECK(match_uids(idx, "a.b") == std::set<std::uint32_t>{1});
}

TEST_CASE("subject_index queue groups pick exactly one member per group by key") {
  subject_index idx;
  for (std::uint32_t uid = 10; uid < 13; ++uid) add_ok(idx, "jobs.>", "workers", ref(uid));
  add_ok(idx, "jobs.>", "auditors", ref(20));
  add_ok(idx, "jobs.>", "", ref(30));
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
  CHECK(std::count_if(again.begin(), again.end(),
                      [&](const sub_ref& r) { return r.uid == owner["key-7"]; }) == 1);

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
    add_ok(idx, join(pats[uid]), "", ref(uid));
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
      add_ok(idx, join(pats[next_uid]), "", ref(next_uid));
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
      CHECK_MESSAGE(match_uids(idx, join(sub)) == want,
                    "subject " << join(sub) << " round " << round);
      CHECK_MESSAGE(match_uids(idx, join(sub)) == want,
                    "subject " << join(sub) << " (cached) round " << round);
    }
  }
}

TEST_CASE(
    "subject_index picks queue members by key on cached subjects and past the cache's capacity") {
  subject_index idx;
  add_ok(idx, "q.x", "g", ref(1));
  add_ok(idx, "q.x", "g", ref(2));
  add_ok(idx, "q.*", "g", ref(3));
  add_ok(idx, "q.*", "g", ref(4));
  add_ok(idx, ">", "", ref(9));
  // Five matching nodes' worth: more than one cache entry holds.
  add_ok(idx, "q.>", "", ref(10));
  add_ok(idx, "*.x", "", ref(11));
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

TEST_CASE("subject_index refuses a queue-group member past max_group_members and records nothing") {
  subject_index idx(index_limits{4096, 8, 256});
  for (std::uint32_t uid = 1; uid <= 8; ++uid) add_ok(idx, "qo.x", "grp", ref(uid));
  const auto why = idx.can_add("qo.x", "grp");
  CHECK(why.code() == errc::too_many_subscriptions);
  CHECK_MESSAGE(
      contains(why.message(),
               "queue group 'grp' on 'qo.x' has 8 members, limits.max_queue_group_members is 8"),
      why.message());
  const auto refused = idx.add("qo.x", "grp", ref(9));
  CHECK(refused.code() == errc::too_many_subscriptions);
  CHECK(refused.message() == why.message());
  CHECK(idx.size() == 8);
  CHECK_FALSE(idx.remove(9));  // nothing was recorded
  // Other groups and plain subscribers on the pattern, and the group elsewhere, are not affected.
  add_ok(idx, "qo.x", "grp2", ref(20));
  add_ok(idx, "qo.x", "", ref(21));
  CHECK(idx.can_add("qo.*", "grp").ok());

  // Every key picks exactly one member of grp, among those recorded.
  auto grp_picks = [&](std::uint32_t lo, std::uint32_t hi) {
    std::set<std::uint32_t> picked;
    for (int k = 0; k < 2000; ++k) {
      const auto uids = match_uids(idx, "qo.x", "key-" + std::to_string(k));
      CHECK(uids.count(20) == 1);
      CHECK(uids.count(21) == 1);
      std::size_t in_grp = 0;
      for (const std::uint32_t u : uids) {
        if (u >= 20) continue;
        ++in_grp;
        CHECK(u >= lo);
        CHECK(u <= hi);
        picked.insert(u);
      }
      CHECK(in_grp == 1);
    }
    return picked;
  };
  CHECK(grp_picks(1, 8).size() == 8);

  // The first members leave: their keys go to the members left, and there is room again.
  for (std::uint32_t uid = 1; uid <= 4; ++uid) CHECK(idx.remove(uid));
  CHECK(grp_picks(5, 8) == std::set<std::uint32_t>{5, 6, 7, 8});
  CHECK(idx.can_add("qo.x", "grp").ok());
  add_ok(idx, "qo.x", "grp", ref(9));
  CHECK(grp_picks(5, 9) == std::set<std::uint32_t>{5, 6, 7, 8, 9});

  for (const std::uint32_t uid : {5u, 6u, 7u, 8u, 9u, 20u, 21u}) CHECK(idx.remove(uid));
  CHECK(idx.size() == 0);
  CHECK_FALSE(idx.any_match("qo.x"));
  add_ok(idx, "qo.x", "grp", ref(1));  // a fresh group
  CHECK(match_uids(idx, "qo.x") == std::set<std::uint32_t>{1});
}

TEST_CASE("subject_index refuses a uid it already holds") {
  subject_index idx;
  add_ok(idx, "a", "", ref(1));
  const auto again = idx.add("b.*", "g", ref(1));
  CHECK(again.code() == errc::internal);
  CHECK(idx.size() == 1);
  CHECK(idx.pattern_shapes() == 0);
  CHECK_FALSE(idx.any_match("b.x"));
  CHECK(match_uids(idx, "a") == std::set<std::uint32_t>{1});
}

TEST_CASE("subject_index limits: invalid values are refused, a reload applies to later adds") {
  CHECK(subject_index::limits_error({}).empty());
  CHECK_FALSE(subject_index::limits_error({3, 2, 256}).empty());  // not a power of two
  CHECK_FALSE(subject_index::limits_error({1, 1, 256}).empty());
  CHECK_FALSE(subject_index::limits_error({std::size_t{1} << 25, 1024, 256}).empty());
  CHECK(contains(subject_index::limits_error({4096, 4097, 256}),
                 "limits.max_queue_group_members is 4097"));
  CHECK_FALSE(
      subject_index::limits_error({std::size_t{1} << 17, 65537, 256}).empty());  // over max_members
  CHECK(subject_index::limits_error({std::size_t{1} << 17, 65536, 256}).empty());
  CHECK_FALSE(subject_index::limits_error({4096, 0, 256}).empty());
  CHECK_FALSE(subject_index::limits_error({4096, 8, 0}).empty());
  CHECK_THROWS_AS(subject_index(index_limits{4096, 8192, 256}), std::invalid_argument);

  subject_index idx(index_limits{4, 4, 256});
  for (std::uint32_t uid = 1; uid <= 4; ++uid) add_ok(idx, "g.x", "old", ref(uid));
  idx.set_limits({8, 8, 256});
  // "old" keeps its 4-slot table, so it stays at 4 members; a new group gets 8 slots.
  const auto full = idx.can_add("g.x", "old");
  CHECK(full.code() == errc::too_many_subscriptions);
  CHECK_MESSAGE(contains(full.message(), "as many as its partitioner has slots (4)"),
                full.message());
  for (std::uint32_t uid = 11; uid <= 18; ++uid) add_ok(idx, "g.x", "new", ref(uid));
  CHECK(idx.can_add("g.x", "new").code() == errc::too_many_subscriptions);
  // A lower limit keeps the members there are and refuses joins.
  idx.set_limits({8, 2, 256});
  CHECK(idx.size() == 12);
  CHECK(idx.remove(11));
  const auto lower = idx.can_add("g.x", "new");
  CHECK_MESSAGE(contains(lower.message(), "has 7 members, limits.max_queue_group_members is 2"),
                lower.message());
  CHECK(idx.can_add("g.x", "third").ok());
  CHECK_THROWS_AS(idx.set_limits({8, 9, 256}), std::invalid_argument);
  CHECK(idx.limits().max_group_members == 2);  // a refused reload changes nothing
}

TEST_CASE("subject_index bounds the trie walk of a publish by the wildcard shape limit") {
  subject_index idx(index_limits{4096, 1024, 256});  // the shape limit of the hostile set, 256
  const std::string subject = "a.a.a.a.a.a.a.a.a.a.a.a.a";  // 13 tokens
  std::uint32_t uid = 1;
  std::set<std::uint32_t> matching;
  for (const std::string p : {"a.>", ">", "a.a.>", "*.>", subject.c_str()}) {
    matching.insert(uid);
    add_ok(idx, p, "", ref(uid++));
  }
  CHECK(idx.pattern_shapes() == 4);  // a literal pattern has no shape
  // Every mix of `a` and `*` over 12 tokens, then `.b`: none matches the subject.
  std::size_t accepted = 0, refused = 0;
  for (unsigned mask = 0; mask < 4096; ++mask) {
    std::string p;
    for (unsigned t = 0; t < 12; ++t) p.append(t ? "." : "").append((mask >> t) & 1 ? "*" : "a");
    const auto st = idx.add(p + ".b", "", ref(uid++));
    if (st.ok()) {
      ++accepted;
      continue;
    }
    CHECK(st.code() == errc::too_many_subscriptions);
    if (refused++ == 0)
      CHECK_MESSAGE(
          contains(st.message(), "256 shapes are in use, limits.max_pattern_shapes is 256"),
          st.message());
  }
  CHECK(accepted == 253);  // 252 new shapes, and mask 0, which is literal
  CHECK(refused == 4096 - 253);
  CHECK(idx.pattern_shapes() == 256);
  CHECK(idx.size() == 5 + 253);

  CHECK(match_uids(idx, subject) == matching);
  const std::size_t visits = idx.last_match_visits();
  const std::size_t bound = (256 + 1) * 13;
  MESSAGE("publish to a 13-token subject over the hostile set: " << visits << " node visits (bound "
                                                                 << bound << ")");
  CHECK(visits > 0);
  CHECK(visits <= bound);
  CHECK(match_uids(idx, subject) == matching);  // five nodes: from the cache's side array

  // At the limit, a known shape and a literal pattern are taken, a new shape is not.
  add_ok(idx, "x.>", "", ref(uid++));  // the shape of a.>
  add_ok(idx, "x.y.z", "", ref(uid++));
  const auto new_shape = idx.can_add("x.*", "");
  CHECK(new_shape.code() == errc::too_many_subscriptions);
  CHECK_MESSAGE(contains(new_shape.message(),
                         "pattern 'x.*' has a wildcard shape no subscription has yet (_.*, _ "
                         "for a literal token) and 256 shapes are in use"),
                new_shape.message());
  CHECK(idx.can_add("x.*", "g").code() == errc::too_many_subscriptions);
  // A shape goes with its last subscription.
  CHECK(idx.remove(1));  // a.>; x.> keeps the shape
  CHECK(idx.pattern_shapes() == 256);
  CHECK(idx.remove(4));  // *.>
  CHECK(idx.pattern_shapes() == 255);
  CHECK(idx.can_add("x.*", "").ok());
}

TEST_CASE("subject_index: every cache miss visits at most (shapes + 1) nodes per subject token") {
  std::mt19937_64 rng(keyway::test::seed());
  subject_index idx(index_limits{4096, 1024, 12});
  std::map<std::uint32_t, tokens> pats;
  static const char* const choices[] = {"a", "b", "*", ">"};
  for (std::uint32_t uid = 1; uid <= 400; ++uid) {
    tokens p;
    const std::size_t len = 1 + rng() % 6;
    for (std::size_t i = 0; i < len; ++i) p.push_back(choices[rng() % (i + 1 == len ? 4 : 3)]);
    if (idx.add(join(p), "", ref(uid)).ok()) pats[uid] = p;
  }
  CHECK(idx.pattern_shapes() <= 12);
  for (int round = 0; round < 400; ++round) {
    tokens sub;
    const std::size_t len = 1 + rng() % 7;
    for (std::size_t i = 0; i < len; ++i) sub.push_back(rng() % 2 ? "a" : "b");
    add_ok(idx, "flush", "", ref(100000));  // any add or remove empties the cache
    CHECK(idx.remove(100000));
    std::set<std::uint32_t> want;
    for (auto& [uid, p] : pats)
      if (brute_match(p, sub)) want.insert(uid);
    CHECK(match_uids(idx, join(sub)) == want);
    CHECK(idx.last_match_visits() <= (idx.pattern_shapes() + 1) * len);
  }
}

TEST_CASE(
    "subject_index caches match lists longer than cached_nodes, past the side array's capacity") {
  subject_index idx;
  add_ok(idx, ">", "", ref(1));
  add_ok(idx, "s.>", "", ref(2));
  add_ok(idx, "*.*", "", ref(3));
  add_ok(idx, "*.>", "", ref(4));
  add_ok(idx, "s.*", "g", ref(5));
  add_ok(idx, "s.7", "", ref(6));
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t i = 0; i < subject_index::spill_capacity / 5 + 500; ++i) {
      std::set<std::uint32_t> want{1, 2, 3, 4, 5};
      if (i == 7) want.insert(6);
      const std::string s = "s." + std::to_string(i);
      CHECK(match_uids(idx, s) == want);  // a miss
      CHECK(match_uids(idx, s) == want);  // a hit, unless the side array was just emptied
    }
  }
}

TEST_CASE("subject_index: 4096 joins and 4096 leaves of one queue group keep key affinity") {
  subject_index idx(index_limits{4096, 4096, 256});
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint32_t uid = 1; uid <= 4096; ++uid) add_ok(idx, "jobs.*", "grp", ref(uid));
  const auto t1 = std::chrono::steady_clock::now();
  CHECK(idx.size() == 4096);
  CHECK(idx.can_add("jobs.*", "grp").code() == errc::too_many_subscriptions);
  auto owners = [&] {
    std::vector<std::uint32_t> out;
    for (int k = 0; k < 5000; ++k) {
      const auto uids = match_uids(idx, "jobs.run", "key-" + std::to_string(k));
      REQUIRE(uids.size() == 1);
      out.push_back(*uids.begin());
    }
    return out;
  };
  const auto before = owners();
  const auto t2 = std::chrono::steady_clock::now();
  for (std::uint32_t uid = 1; uid <= 4096; uid += 2) CHECK(idx.remove(uid));
  const auto t3 = std::chrono::steady_clock::now();
  const auto after = owners();
  for (std::size_t k = 0; k < before.size(); ++k) {
    CHECK(after[k] % 2 == 0);                              // a member that is left
    if (before[k] % 2 == 0) CHECK(after[k] == before[k]);  // whose keys stayed
  }
  const auto t4 = std::chrono::steady_clock::now();
  for (std::uint32_t uid = 2; uid <= 4096; uid += 2) CHECK(idx.remove(uid));
  const auto t5 = std::chrono::steady_clock::now();
  CHECK(idx.size() == 0);
  CHECK_FALSE(idx.any_match("jobs.run"));
  using ms = std::chrono::duration<double, std::milli>;
  MESSAGE("4096 joins " << ms(t1 - t0).count() << " ms, 4096 leaves "
                        << (ms(t3 - t2) + ms(t5 - t4)).count() << " ms (4096 slots)");
}
