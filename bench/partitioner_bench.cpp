// Partitioner cases of keyway-bench-queues: for each strategy at 2, 8, 64 and 256 members,
//   ns_per_msg            mean pick() time over pre-generated random 16-byte keys, hash
//                         included: thread CPU time of the best of several passes over
//                         the whole array;
//   peak_to_mean          busiest member's keys / mean, over the same keys (1M by default);
//   peak_to_mean_slots    consistent only: the same from slot counts, i.e. without the
//                         sampling noise of a finite key set (what infinitely many keys see);
//   move_join_x_ideal     keys moved when one member joins / (keys / (n+1)), mean of several
//                         joins (and _max: the worst);
//   move_leave_x_ideal    keys moved when one member leaves / (keys / n), likewise;
//   move_leave_others     keys that moved on a leave but were not the leaver's (0 for
//                         consistent; summed over the leaves);
//   add_us                mean time of one add() while building the n members.
// `consistent` uses the hash strategy at the same n as its baseline. Besides the default
// slot table (65536 slots) it runs, for comparison, a 2^18-slot table and the classic vnode
// ring at 160 vnodes and at 65536/n vnodes (the same points per member as the table).
// Single-threaded.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bench/report.hpp"
#include "core/consistent_partitioner.hpp"
#include "core/partitioner.hpp"

namespace keyway::bench {
namespace {

using core::partition_strategy;
using core::partitioner;
using core::partitioner_options;
using key = std::array<std::byte, 16>;

volatile std::uint32_t sink_;  // keeps the timed picks from being optimised away

struct variant {
  std::string name;  // "consistent", "consistent/ring160", ...
  partition_strategy strategy;
  partitioner_options opt;
  bool movement = false;  // measure join/leave movement
};

struct sizes {
  std::size_t keys;
  int passes;
  int events;
};

std::vector<key> make_keys(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<key> keys(count);
  for (key& k : keys) {
    const std::uint64_t a = rng(), b = rng();
    for (int i = 0; i < 8; ++i) {
      k[i] = static_cast<std::byte>(a >> (8 * i));
      k[8 + i] = static_cast<std::byte>(b >> (8 * i));
    }
  }
  return keys;
}

// Random distinct ids, like subscription ids; the first n are the members, the rest join.
std::vector<std::uint32_t> make_ids(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::unordered_set<std::uint32_t> seen;
  std::vector<std::uint32_t> ids;
  while (ids.size() < count) {
    const auto id = static_cast<std::uint32_t>(rng());
    if (seen.insert(id).second) ids.push_back(id);
  }
  return ids;
}

// n - 1 two-byte split points, evenly spaced: uniform keys spread evenly over n ranges.
std::vector<std::string> even_splits(std::size_t n) {
  std::vector<std::string> splits;
  for (std::size_t i = 1; i < n; ++i) {
    const std::size_t v = i * 65536 / n;
    splits.push_back(std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xff)});
  }
  return splits;
}

std::vector<std::uint32_t> assign(partitioner& p, const std::vector<key>& keys) {
  std::vector<std::uint32_t> out(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) out[i] = p.pick(std::span(keys[i]));
  return out;
}

// Thread CPU time, not wall time: on a shared machine a preempted pass would otherwise
// count the time other processes ran.
double thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double lookup_ns(partitioner& p, const std::vector<key>& keys, int passes) {
  double best = 1e300;
  std::uint32_t sink = 0;
  for (int pass = 0; pass < passes; ++pass) {
    const double t0 = thread_cpu_ns();
    for (const key& k : keys) sink += p.pick(std::span(k));
    best = std::min(best, (thread_cpu_ns() - t0) / static_cast<double>(keys.size()));
  }
  sink_ = sink;
  return best;
}

double peak_to_mean(const std::vector<std::uint32_t>& picks, std::size_t members) {
  std::unordered_map<std::uint32_t, std::size_t> count;
  for (const std::uint32_t m : picks) ++count[m];
  std::size_t peak = 0;
  for (const auto& [m, c] : count) peak = std::max(peak, c);
  return static_cast<double>(peak) * static_cast<double>(members) /
         static_cast<double>(picks.size());
}

std::size_t moved(const std::vector<std::uint32_t>& a, const std::vector<std::uint32_t>& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

void check(const keyway::result<void>& r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "partitioner bench: %s failed: %s\n", what, r.error().message().c_str());
    std::abort();
  }
}

row run_case(const variant& v, std::size_t n, const sizes& sz, const std::vector<key>& keys,
             const std::vector<std::uint32_t>& ids) {
  partitioner_options opt = v.opt;
  if (v.strategy == partition_strategy::range) opt.split_points = even_splits(n);
  auto made = core::make_partitioner(v.strategy, opt);
  if (!made) {
    std::fprintf(stderr, "partitioner bench: bad options for %s\n", v.name.c_str());
    std::abort();
  }
  partitioner& p = **made;

  const double t0 = thread_cpu_ns();
  for (std::size_t i = 0; i < n; ++i) check(p.add(ids[i]), "add");
  const double build_us = (thread_cpu_ns() - t0) / 1e3;

  row r;
  r.case_name = "partitioner " + v.name + " n=" + std::to_string(n) + " lookup";
  r.ns_per_msg = lookup_ns(p, keys, sz.passes);
  r.extra["add_us"] = build_us / static_cast<double>(n);
  const std::vector<std::uint32_t> base = assign(p, keys);
  r.extra["peak_to_mean"] = peak_to_mean(base, n);

  if (auto* table = dynamic_cast<core::consistent_partitioner*>(&p)) {
    std::size_t peak = 0;
    for (std::size_t i = 0; i < n; ++i) peak = std::max(peak, table->slots_owned(ids[i]));
    r.extra["peak_to_mean_slots"] =
        static_cast<double>(peak) * static_cast<double>(n) / static_cast<double>(table->slots());
  }

  if (v.movement) {
    const double k = static_cast<double>(keys.size());
    double join_sum = 0, join_max = 0, leave_sum = 0, leave_max = 0;
    std::size_t others = 0;
    for (int e = 0; e < sz.events; ++e) {
      const std::uint32_t newcomer = ids[n + static_cast<std::size_t>(e)];
      check(p.add(newcomer), "join");
      const double join =
          static_cast<double>(moved(base, assign(p, keys))) / k * static_cast<double>(n + 1);
      check(p.remove(newcomer), "undo join");
      join_sum += join;
      join_max = std::max(join_max, join);

      if (n < 2) continue;
      const std::uint32_t leaver =
          ids[static_cast<std::size_t>(e) * n / static_cast<std::size_t>(sz.events)];
      check(p.remove(leaver), "leave");
      const std::vector<std::uint32_t> after = assign(p, keys);
      std::size_t m = 0;
      for (std::size_t i = 0; i < after.size(); ++i) {
        if (after[i] == base[i]) continue;
        ++m;
        others += base[i] != leaver;
      }
      check(p.add(leaver), "undo leave");
      const double leave = static_cast<double>(m) / k * static_cast<double>(n);
      leave_sum += leave;
      leave_max = std::max(leave_max, leave);
    }
    r.extra["move_join_x_ideal"] = join_sum / sz.events;
    r.extra["move_join_max_x_ideal"] = join_max;
    r.extra["move_leave_x_ideal"] = leave_sum / sz.events;
    r.extra["move_leave_max_x_ideal"] = leave_max;
    r.extra["move_leave_others"] = static_cast<double>(others);
  }
  return r;
}

}  // namespace

void run_partitioner_benches(const options& opt, report& out) {
  const sizes sz = opt.quick ? sizes{250'000, 2, 2} : sizes{1'000'000, 5, 4};
  const std::size_t key_count = opt.messages ? opt.messages : sz.keys;
  const std::vector<key> keys = make_keys(key_count, 0x6b657977);  // fixed: runs compare
  const std::vector<std::size_t> member_counts = {2, 8, 64, 256};
  const std::vector<std::uint32_t> ids = make_ids(256 + static_cast<std::size_t>(sz.events), 42);

  partitioner_options big;
  big.slots = std::size_t{1} << 18;
  partitioner_options ring160;
  ring160.layout = core::consistent_layout::vnode_ring;
  ring160.vnodes = 160;

  for (const std::size_t n : member_counts) {
    partitioner_options ring_eq = ring160;
    ring_eq.vnodes = 65536 / n;  // the slot table's slots per member
    std::vector<variant> variants = {
        {"hash", partition_strategy::hash, {}, true},
        {"consistent", partition_strategy::consistent, {}, true},
        {"consistent/s262144", partition_strategy::consistent, big, true},
        {"consistent/ring160", partition_strategy::consistent, ring160, true},
        {"consistent/ring" + std::to_string(ring_eq.vnodes), partition_strategy::consistent,
         ring_eq, true},
        {"range", partition_strategy::range, {}, false},
        {"round_robin", partition_strategy::round_robin, {}, false},
    };
    if (opt.quick) variants.erase(variants.begin() + 4);  // the slow-to-build ring
    // variants[0] is hash: the baseline of every consistent row at the same n.
    std::string hash_case;
    double hash_ns = 0;
    for (const variant& v : variants) {
      row r = run_case(v, n, sz, keys, ids);
      if (v.strategy == partition_strategy::hash) {
        hash_case = r.case_name;
        hash_ns = r.ns_per_msg;
      } else if (v.strategy == partition_strategy::consistent) {
        r.baseline_case = hash_case;
        r.baseline_ns_per_msg = hash_ns;
      }
      out.add(std::move(r));
    }
  }
}

}  // namespace keyway::bench
