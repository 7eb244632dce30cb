// Partitioner tests: names and options, errors, determinism (golden values, independent
// instances, insertion order and history), balance, movement on join/leave, weights,
// range boundaries and round-robin order. Random keys and member ids come from
// keyway::test::seed(), which is printed.
//
// Statistical bounds: a member's load is its share of the slots (binomial: relative
// standard deviation at most sqrt(n / slots)) sampled by K random keys (relative standard
// deviation at most sqrt(n / K)); together sigma = sqrt(n / slots + n / K). Peak-to-mean
// bounds sit at 6 sigma, movement and weight bounds at 5 sigma or more, so with a union
// over n <= 256 members a false failure has a probability below 1e-4 per run even with the
// heavier Poisson-like tail of a small share. (30 runs with fresh seeds: the worst values
// were 1.24 against a bound of 1.39 for peak-to-mean at 256 members, and 0.92..1.07 for
// movement against 0.8..1.2.)
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/consistent_partitioner.hpp"
#include "core/partitioner.hpp"
#include "core/range_partitioner.hpp"
#include "tests/unit/core/random_ids.hpp"
#include "tests/unit/test_seed.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KEYWAY_PARTITIONER_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KEYWAY_PARTITIONER_TEST_SANITIZED 1
#endif
#endif

namespace {

namespace kc = keyway::core;
using kc::partition_strategy;
using key16 = std::array<std::byte, 16>;

// 1M keys in a normal build. Sanitizers make picks and table builds several times slower,
// so they get fewer keys (the bounds below are computed from the key count, so they stay
// honest) and skip the 256-member movement case (a 2^18-slot table built 256 times).
#ifdef KEYWAY_PARTITIONER_TEST_SANITIZED
constexpr std::size_t balance_keys = 250'000;
constexpr bool sanitized = true;
#else
constexpr std::size_t balance_keys = 1'000'000;
constexpr bool sanitized = false;
#endif

std::vector<key16> random_keys(std::size_t count, std::mt19937_64& rng) {
  std::vector<key16> keys(count);
  for (key16& k : keys) {
    const std::uint64_t a = rng(), b = rng();
    for (int i = 0; i < 8; ++i) {
      k[i] = static_cast<std::byte>(a >> (8 * i));
      k[8 + i] = static_cast<std::byte>(b >> (8 * i));
    }
  }
  return keys;
}

using keyway::test::random_ids;

std::unique_ptr<kc::partitioner> make(partition_strategy s, const kc::partitioner_options& o = {}) {
  auto made = kc::make_partitioner(s, o);
  REQUIRE(made);
  return std::move(made).value();
}

kc::partitioner_options ring_options() {
  kc::partitioner_options o;
  o.layout = kc::consistent_layout::vnode_ring;
  return o;
}

kc::partitioner_options slot_options(std::size_t slots) {
  kc::partitioner_options o;
  o.slots = slots;
  return o;
}

void add_all(kc::partitioner& p, const std::vector<std::uint32_t>& ids, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) REQUIRE(p.add(ids[i]));
}

std::vector<std::uint32_t> picks(kc::partitioner& p, const std::vector<key16>& keys) {
  std::vector<std::uint32_t> out(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i)
    out[i] = p.pick(std::span<const std::byte>(keys[i]));
  return out;
}

std::unordered_map<std::uint32_t, std::size_t> loads(const std::vector<std::uint32_t>& picked) {
  std::unordered_map<std::uint32_t, std::size_t> count;
  for (const std::uint32_t m : picked) ++count[m];
  return count;
}

double peak_to_mean(const std::vector<std::uint32_t>& picked, std::size_t members) {
  std::size_t peak = 0;
  for (const auto& [m, c] : loads(picked)) peak = std::max(peak, c);
  return static_cast<double>(peak) * static_cast<double>(members) /
         static_cast<double>(picked.size());
}

}  // namespace

TEST_CASE("partitioner: strategy names round-trip and unknown names are rejected") {
  for (const auto s : {partition_strategy::consistent, partition_strategy::hash,
                       partition_strategy::range, partition_strategy::round_robin}) {
    const auto parsed = kc::parse_partition_strategy(kc::to_string(s));
    REQUIRE(parsed);
    CHECK(*parsed == s);
  }
  CHECK(kc::to_string(partition_strategy::round_robin) == "round_robin");
  for (const char* bad : {"", "Consistent", "roundrobin", "ring", "hash "}) {
    CAPTURE(bad);
    const auto parsed = kc::parse_partition_strategy(bad);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error() == kc::errc::invalid_argument);
  }
}

TEST_CASE("partitioner: make_partitioner validates its options") {
  for (const std::size_t slots :
       {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{1} << 25}) {
    CAPTURE(slots);
    const auto made = kc::make_partitioner(partition_strategy::consistent, slot_options(slots));
    REQUIRE_FALSE(made);
    CHECK(made.error() == kc::errc::invalid_argument);
    const std::string why =
        kc::partitioner_options_error(partition_strategy::consistent, slot_options(slots));
    CHECK(why.find(std::to_string(slots)) != std::string::npos);
  }
  for (const std::size_t slots : {std::size_t{2}, std::size_t{1024}, std::size_t{65536}}) {
    CHECK(kc::make_partitioner(partition_strategy::consistent, slot_options(slots)));
  }
  // Slots do not matter to the other strategies.
  CHECK(kc::make_partitioner(partition_strategy::hash, slot_options(3)));

  auto ring = ring_options();
  ring.vnodes = 0;
  CHECK_FALSE(kc::make_partitioner(partition_strategy::consistent, ring));
  ring.vnodes = 65537;
  CHECK_FALSE(kc::make_partitioner(partition_strategy::consistent, ring));
  ring.vnodes = 1;
  CHECK(kc::make_partitioner(partition_strategy::consistent, ring));

  kc::partitioner_options range;
  range.split_points = {"a", "c", "b"};
  const auto made = kc::make_partitioner(partition_strategy::range, range);
  REQUIRE_FALSE(made);
  CHECK(made.error() == kc::errc::invalid_argument);
  const std::string why = kc::partitioner_options_error(partition_strategy::range, range);
  MESSAGE(why);
  CHECK(why.find("split point 2 (\"b\")") != std::string::npos);
  range.split_points = {"a", "a"};
  CHECK_FALSE(kc::make_partitioner(partition_strategy::range, range));
  range.split_points = {std::string("a\0", 2), "a"};  // "a" sorts before "a\0"
  CHECK(kc::partitioner_options_error(partition_strategy::range, range).find("\\x00") !=
        std::string::npos);
  range.split_points = {"a", std::string("a\0", 2), "\x80"};
  CHECK(kc::make_partitioner(partition_strategy::range, range));
}

TEST_CASE(
    "partitioner: size and errors (duplicate or unknown member, bad weight) for every strategy") {
  kc::partitioner_options range;
  range.split_points = {"m"};
  struct strategy_case {
    const char* name;
    partition_strategy s;
    kc::partitioner_options opt;
    bool affine;
  };
  const strategy_case cases[] = {
      {"consistent", partition_strategy::consistent, {}, true},
      {"consistent/ring", partition_strategy::consistent, ring_options(), true},
      {"hash", partition_strategy::hash, {}, true},
      {"range", partition_strategy::range, range, true},
      {"round_robin", partition_strategy::round_robin, {}, false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto p = make(c.s, c.opt);
    CHECK(p->strategy() == c.s);
    CHECK(p->key_affine() == c.affine);
    // pick() on an empty partitioner is a precondition violation (it asserts), so callers
    // test size() first; it must be 0 here and again after the last member leaves.
    CHECK(p->size() == 0);
    CHECK(p->remove(1).error() == kc::errc::unknown_member);

    REQUIRE(p->add(7));
    CHECK(p->add(7).error() == kc::errc::duplicate_member);
    CHECK(p->add(7, 2.0).error() == kc::errc::duplicate_member);
    for (const double w :
         {0.0, -0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
          std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
      CAPTURE(w);
      CHECK(p->add(8, w).error() == kc::errc::invalid_weight);
    }
    CHECK(p->size() == 1);
    CHECK(p->pick("anything") == 7);
    CHECK(p->pick(std::span<const std::byte>{}) == 7);  // the empty key is a key

    CHECK(p->remove(8).error() == kc::errc::unknown_member);
    REQUIRE(p->remove(7));
    CHECK(p->size() == 0);
    CHECK(p->remove(7).error() == kc::errc::unknown_member);
    // Usable again after being emptied.
    REQUIRE(p->add(9));
    CHECK(p->pick("anything") == 9);
  }
}

TEST_CASE("partitioner: fixed keys give fixed members (golden values and independent instances)") {
  // Golden values pin the mapping across builds and hosts: nodes of a cluster, and every
  // worker of a node, must agree. They change only if XXH3 or the scoring changes, which
  // would move keys on upgrade; update them deliberately if that is ever intended. The
  // digest folds the members picked for the keys "key0" .. "key9999".
  const std::vector<std::uint32_t> members = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::string_view keys[] = {"", "a", "orders.eu.42", "user:1001",
                                   "the quick brown fox jumps"};
  struct golden {
    const char* name;
    partition_strategy s;
    kc::partitioner_options opt;
    bool weighted;  // member m has weight 1 + m % 3
    std::array<std::uint32_t, 5> expect;
    std::uint64_t digest;
  };
  const golden cases[] = {
      {"consistent",
       partition_strategy::consistent,
       {},
       false,
       {7, 2, 4, 4, 8},
       3697531859525485779u},
      {"consistent weighted",
       partition_strategy::consistent,
       {},
       true,
       {7, 2, 4, 5, 8},
       10484562925003705901u},
      {"consistent/ring",
       partition_strategy::consistent,
       ring_options(),
       false,
       {1, 6, 2, 2, 8},
       860818821831878308u},
      {"hash", partition_strategy::hash, {}, false, {2, 8, 5, 4, 5}, 13955629518185449289u},
      {"hash weighted", partition_strategy::hash, {}, true, {2, 8, 5, 4, 5}, 13976599344657420018u},
  };
  std::mt19937_64 rng(keyway::test::seed());
  const auto random = random_keys(20'000, rng);
  for (const auto& c : cases) {
    CAPTURE(std::string_view(c.name));
    auto build = [&](const kc::partitioner_options& opt) {
      auto p = make(c.s, opt);
      for (const auto m : members) REQUIRE(p->add(m, c.weighted ? 1.0 + m % 3 : 1.0));
      return p;
    };
    auto a = build(c.opt);
    auto b = build(c.opt);
    for (std::size_t i = 0; i < 5; ++i) {
      CAPTURE(keys[i]);
      CHECK(a->pick(keys[i]) == c.expect[i]);
    }
    std::uint64_t digest = 14695981039346656037u;  // FNV-1a over the picked ids
    for (int i = 0; i < 10'000; ++i) {
      digest = (digest ^ a->pick("key" + std::to_string(i))) * 1099511628211u;
    }
    MESSAGE(std::string_view(c.name) << ": golden " << a->pick(keys[0]) << ", " << a->pick(keys[1])
                                     << ", " << a->pick(keys[2]) << ", " << a->pick(keys[3]) << ", "
                                     << a->pick(keys[4]) << "; digest " << digest);
    CHECK(digest == c.digest);
    CHECK(picks(*a, random) == picks(*b, random));
    // A different seed is a different mapping.
    auto other = c.opt;
    other.seed = 1;
    CHECK(picks(*a, random) != picks(*build(other), random));
  }
}

TEST_CASE("partitioner: consistent and hash mappings depend on the member set only") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto keys = random_keys(200'000, rng);
  const auto ids = random_ids(80, rng);
  const std::vector<std::uint32_t> members(ids.begin(), ids.begin() + 64);
  const std::vector<std::uint32_t> extra(ids.begin() + 64, ids.end());
  // Mixed weights too, so the weighted scores are covered.
  auto weight_of = [&](std::uint32_t id, bool weighted) {
    return weighted ? 0.5 + static_cast<double>(id % 4) : 1.0;
  };
  struct variant {
    const char* name;
    partition_strategy s;
    kc::partitioner_options opt;
  };
  auto small_ring = ring_options();
  small_ring.vnodes = 40;
  const variant variants[] = {
      // The property does not depend on the table or ring size; small ones keep it fast.
      {"consistent", partition_strategy::consistent, slot_options(8192)},
      {"consistent/ring", partition_strategy::consistent, small_ring},
      {"hash", partition_strategy::hash, {}},
  };
  for (const auto& v : variants) {
    for (const bool weighted : {false, true}) {
      CAPTURE(v.name);
      CAPTURE(weighted);
      auto in_order = make(v.s, v.opt);
      for (const auto id : members) REQUIRE(in_order->add(id, weight_of(id, weighted)));

      auto shuffled = make(v.s, v.opt);
      auto order = members;
      std::shuffle(order.begin(), order.end(), rng);
      for (const auto id : order) REQUIRE(shuffled->add(id, weight_of(id, weighted)));

      // Churn: extras (with their own weights) join between members and leave again, and
      // some members leave and come back.
      auto churned = make(v.s, v.opt);
      for (std::size_t i = 0; i < members.size(); ++i) {
        REQUIRE(churned->add(order[i], weight_of(order[i], weighted)));
        if (i % 4 == 0) REQUIRE(churned->add(extra[i / 4], 3.0));
      }
      for (std::size_t i = 0; i < 16; ++i) REQUIRE(churned->remove(extra[i]));
      for (std::size_t i = 0; i < 64; i += 5) REQUIRE(churned->remove(members[i]));
      for (std::size_t i = 0; i < 64; i += 5) {
        REQUIRE(churned->add(members[i], weight_of(members[i], weighted)));
      }
      REQUIRE(churned->size() == members.size());

      const auto expect = picks(*in_order, keys);
      CHECK(picks(*shuffled, keys) == expect);
      CHECK(picks(*churned, keys) == expect);
    }
  }
}

TEST_CASE("partitioner: peak-to-mean load over random keys for 2 to 256 members") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto keys = random_keys(balance_keys, rng);
  const double k = static_cast<double>(keys.size());
  constexpr std::size_t slots = 65536;  // the default
  for (const std::size_t n : {2, 8, 64, 256}) {
    CAPTURE(n);
    const auto ids = random_ids(n, rng);
    const double nd = static_cast<double>(n);

    auto consistent = make(partition_strategy::consistent);
    add_all(*consistent, ids, n);
    const double c_ratio = peak_to_mean(picks(*consistent, keys), n);
    const double c_bound = 1 + 6 * std::sqrt(nd / slots + nd / k);
    std::size_t peak_slots = 0;
    auto& table = dynamic_cast<kc::consistent_partitioner&>(*consistent);
    for (const auto id : ids) peak_slots = std::max(peak_slots, table.slots_owned(id));
    const double c_exact = static_cast<double>(peak_slots) * nd / slots;
    const double exact_bound = 1 + 6 * std::sqrt(nd / slots);

    auto hash = make(partition_strategy::hash);
    add_all(*hash, ids, n);
    const double h_ratio = peak_to_mean(picks(*hash, keys), n);
    const double h_bound = 1 + 6 * std::sqrt(nd / k);

    MESSAGE("n=" << n << " keys=" << keys.size() << "  consistent peak/mean " << c_ratio
                 << " (bound " << c_bound << "; from slot counts " << c_exact << ", bound "
                 << exact_bound << ")  hash " << h_ratio << " (bound " << h_bound << ")");
    CHECK(c_ratio <= c_bound);
    CHECK(c_exact <= exact_bound);
    CHECK(h_ratio <= h_bound);
    // Every member gets keys at all.
    CHECK(loads(picks(*consistent, keys)).size() == n);
  }
}

TEST_CASE(
    "partitioner: consistent join moves keys only to the newcomer and leave only the keys of the "
    "leaver") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto keys = random_keys(balance_keys, rng);
  const double k = static_cast<double>(keys.size());
  // 256 members use 2^18 slots: at 65536 the newcomer's share has sigma 6% and 1.2x ideal
  // would be only 3 sigma away (see consistent_partitioner.hpp).
  const std::pair<std::size_t, std::size_t> sizes[] = {
      {2, 65536}, {8, 65536}, {64, 65536}, {256, 262144}};
  for (const auto& size : sizes) {
    // Plain copies: clang 14 cannot capture structured bindings in CAPTURE's lambda.
    const std::size_t n = size.first, slots = size.second;
    if (sanitized && n == 256) continue;
    CAPTURE(n);
    CAPTURE(slots);
    const auto ids = random_ids(n + 1, rng);
    auto p = make(partition_strategy::consistent, slot_options(slots));
    add_all(*p, ids, n);
    const auto before = picks(*p, keys);

    const std::uint32_t newcomer = ids[n];
    REQUIRE(p->add(newcomer));
    const auto joined = picks(*p, keys);
    std::size_t moved = 0, moved_elsewhere = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (joined[i] == before[i]) continue;
      ++moved;
      moved_elsewhere += joined[i] != newcomer;
    }
    const double join_x = static_cast<double>(moved) / (k / static_cast<double>(n + 1));
    CHECK(moved_elsewhere == 0);

    REQUIRE(p->remove(newcomer));
    CHECK(picks(*p, keys) == before);  // a join undone is no change at all

    const std::uint32_t leaver = ids[rng() % n];
    REQUIRE(p->remove(leaver));
    const auto left = picks(*p, keys);
    std::size_t left_moved = 0, bystanders_moved = 0, leaver_kept = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (left[i] == leaver) ++leaver_kept;
      if (left[i] == before[i]) continue;
      ++left_moved;
      bystanders_moved += before[i] != leaver;
    }
    const double leave_x = static_cast<double>(left_moved) / (k / static_cast<double>(n));
    CHECK(bystanders_moved == 0);
    CHECK(leaver_kept == 0);

    // sigma = sqrt(n/slots + n/k) is at most 0.036 here (with 1M keys, and with the
    // sanitizers' 250k keys up to 64 members), so 0.8..1.2 is >= 5.5 sigma.
    MESSAGE("n=" << n << " slots=" << slots << "  join moved " << join_x << "x ideal, leave moved "
                 << leave_x << "x ideal");
    CHECK(join_x <= 1.2);
    CHECK(join_x >= 0.8);
    CHECK(leave_x <= 1.2);
    CHECK(leave_x >= 0.8);
  }
}

TEST_CASE("partitioner: vnode ring join or leave moves only keys of that member") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto keys = random_keys(100'000, rng);
  const auto ids = random_ids(17, rng);
  auto p = make(partition_strategy::consistent, ring_options());
  add_all(*p, ids, 16);
  const auto before = picks(*p, keys);
  REQUIRE(p->add(ids[16]));
  const auto joined = picks(*p, keys);
  std::size_t wrong = 0, moved = 0;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    moved += joined[i] != before[i];
    wrong += joined[i] != before[i] && joined[i] != ids[16];
  }
  CHECK(moved > 0);
  CHECK(wrong == 0);
  REQUIRE(p->remove(ids[16]));
  REQUIRE(p->remove(ids[3]));
  const auto left = picks(*p, keys);
  wrong = 0;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    wrong += left[i] != before[i] && before[i] != ids[3];
    wrong += left[i] == ids[3];
  }
  CHECK(wrong == 0);
}

TEST_CASE("partitioner: weights (a member of weight 2 gets twice the keys)") {
  std::mt19937_64 rng(keyway::test::seed());
  const auto keys = random_keys(balance_keys, rng);
  const auto ids = random_ids(16, rng);
  for (const auto s : {partition_strategy::consistent, partition_strategy::hash}) {
    CAPTURE(kc::to_string(s));
    // 8 members of weight 1 and one of weight 2: expected shares 0.1 and 0.2. The heavy
    // share has sigma below 0.9% (slots and keys), the mean of the light ones less, so
    // +-5% on the ratio is about 5 sigma.
    auto p = make(s);
    add_all(*p, ids, 8);
    REQUIRE(p->add(ids[8], 2.0));
    auto count = loads(picks(*p, keys));
    double light = 0;
    for (std::size_t i = 0; i < 8; ++i) light += static_cast<double>(count[ids[i]]) / 8;
    const double ratio = static_cast<double>(count[ids[8]]) / light;
    MESSAGE(kc::to_string(s) << ": weight-2 member gets " << ratio << "x a weight-1 member");
    CHECK(std::abs(ratio - 2.0) <= 0.1);

    // Weights 1 and 3 in equal numbers: the weight-3 half takes 3/4 of the keys (sigma
    // below 0.002 from slots and keys, so +-0.01 is 5 sigma).
    auto q = make(s);
    for (std::size_t i = 0; i < 16; ++i) REQUIRE(q->add(ids[i], i % 2 ? 3.0 : 1.0));
    count = loads(picks(*q, keys));
    double heavy = 0;
    for (std::size_t i = 1; i < 16; i += 2) heavy += static_cast<double>(count[ids[i]]);
    heavy /= static_cast<double>(keys.size());
    MESSAGE(kc::to_string(s) << ": weight-3 half gets " << heavy);
    CHECK(std::abs(heavy - 0.75) <= 0.01);

    // Weights are relative: scaling all of them (by a power of two, which is exact in
    // floating point) changes nothing.
    auto scaled = make(s);
    for (std::size_t i = 0; i < 16; ++i) REQUIRE(scaled->add(ids[i], i % 2 ? 0.75 : 0.25));
    CHECK(picks(*scaled, keys) == picks(*q, keys));
  }
}

TEST_CASE("partitioner: range split points are exact and a key equal to a split goes up") {
  kc::partitioner_options o;
  o.split_points = {"b", "bb", "d", std::string("d\0", 2), "\xff"};
  auto p = make(partition_strategy::range, o);
  for (std::uint32_t m = 10; m < 16; ++m) REQUIRE(p->add(m));  // range i -> member 10 + i
  CHECK(p->add(16).error() == kc::errc::not_supported);        // no range left for it
  auto& r = dynamic_cast<kc::range_partitioner&>(*p);
  CHECK(r.ranges() == 6);

  const std::pair<std::string, std::uint32_t> cases[] = {
      {"", 10},
      {"a", 10},
      {"azzzzzzzzzzzz", 10},
      {"b", 11},  // == split 0: upper range
      {"ba", 11},
      {"bb", 12},  // == split 1
      {std::string("bb\0", 3), 12},
      {"c", 12},
      {"d", 13},                    // == split 2
      {std::string("d\0", 2), 14},  // == split 3; "d" < "d\0" (a prefix sorts first)
      {std::string("d\0\0", 3), 14},
      {"e", 14},
      {"\x7f", 14},
      {"\x80", 14},  // bytes are unsigned: 0x80 > 'e'
      {"\xfe\xff\xff", 14},
      {"\xff", 15},  // == split 4
      {"\xff\xff", 15},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    CHECK(p->pick(std::string_view(c.first)) == c.second);
  }

  // Members are dealt ranges in the order they were added; with fewer members than ranges
  // they wrap. Removing member 11 shifts the later members down one range.
  REQUIRE(p->remove(11));
  CHECK(p->pick("a") == 10);
  CHECK(p->pick("b") == 12);
  CHECK(p->pick("bb") == 13);
  CHECK(p->pick("d") == 14);
  CHECK(p->pick("\x80") == 15);
  CHECK(p->pick("\xff") == 10);  // range 5 of 5 members: 5 % 5
  REQUIRE(p->add(11));           // back, at the end of the order
  CHECK(p->pick("\xff") == 11);
}

TEST_CASE("partitioner: range split points that share their first 8 bytes") {
  kc::partitioner_options o;
  o.split_points = {"user:0001", "user:0002", "user:00020", "user:0003"};
  auto p = make(partition_strategy::range, o);
  for (std::uint32_t m = 0; m < 5; ++m) REQUIRE(p->add(m));
  const std::pair<std::string, std::uint32_t> cases[] = {
      {"user:000", 0},   {"user:0000", 0}, {"user:00005", 0}, {"user:0001", 1},
      {"user:00019", 1}, {"user:0002", 2}, {"user:00020", 3}, {"user:000200", 3},
      {"user:00029", 3}, {"user:0003", 4}, {"user:1", 4},     {"usera", 4},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    CHECK(p->pick(std::string_view(c.first)) == c.second);
  }
}

TEST_CASE("partitioner: range without split points is one range for one member") {
  auto p = make(partition_strategy::range);
  REQUIRE(p->add(5));
  CHECK(p->add(6).error() == kc::errc::not_supported);
  CHECK(p->pick("x") == 5);
  CHECK(p->pick("") == 5);
}

TEST_CASE("partitioner: round_robin cycles in order of add and ignores the key") {
  auto p = make(partition_strategy::round_robin);
  CHECK_FALSE(p->key_affine());
  for (const std::uint32_t m : {7u, 3u, 9u}) REQUIRE(p->add(m));
  std::vector<std::uint32_t> got;
  for (int i = 0; i < 7; ++i) got.push_back(p->pick("same key"));
  CHECK(got == std::vector<std::uint32_t>{7, 3, 9, 7, 3, 9, 7});

  // Next is 3. Removing 7 (behind the cursor) keeps 3 next; removing the next one moves on.
  REQUIRE(p->remove(7));
  CHECK(p->pick("k") == 3);
  REQUIRE(p->remove(9));  // 9 was next and was last: wrap to the start
  CHECK(p->pick("k") == 3);
  REQUIRE(p->add(1));  // joins at the end of the cycle
  got.clear();
  for (int i = 0; i < 4; ++i) got.push_back(p->pick("k"));
  CHECK(got == std::vector<std::uint32_t>{3, 1, 3, 1});
}
