// Per-key total order (DESIGN.md "Ordering contract") through the real
// keywayd with two workers: concurrent publishers on separate connections,
// two subscribers on the same pattern.
#include <doctest/doctest.h>

#include <atomic>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tests/integration/itest.hpp"

namespace keyway::itest {
namespace {

constexpr int publishers = 4;
constexpr int keys = 1000;
constexpr int rounds = 5;  // messages per key per publisher
constexpr std::size_t total = std::size_t{publishers} * keys * rounds;

std::string key_name(int k) {
  return "key-" + std::to_string(k);
}

/// "P:R": publisher P's R-th message for a key.
std::pair<int, int> parse_payload(const std::string& p) {
  const auto colon = p.find(':');
  if (colon == std::string::npos) return {-1, -1};
  return {std::stoi(p.substr(0, colon)), std::stoi(p.substr(colon + 1))};
}

struct stream_check {
  // key -> sequence of (publisher, counter) in arrival order
  std::map<std::string, std::vector<std::pair<int, int>>> per_key;
  // (publisher, key, counter) -> (ownerCore, seq)
  std::map<std::tuple<int, std::string, int>, std::pair<std::uint32_t, std::uint64_t>> stamp;
  std::map<std::string, std::uint32_t> owner;
  std::size_t owner_changes = 0;  // a key seen with two owner cores
  std::size_t seq_regressions = 0;
  std::size_t duplicates = 0;
  std::size_t bad = 0;  // unparsable or out of range
  std::string first_problem;

  void note(const std::string& what) {
    if (first_problem.empty()) first_problem = what;
  }

  void add(const std::vector<message_frame>& stream, std::uint32_t workers) {
    std::map<std::uint32_t, std::uint64_t> last_seq;
    for (const message_frame& m : stream) {
      const auto [p, r] = parse_payload(m.payload);
      if (p < 0 || p >= publishers || r < 0 || r >= rounds || m.owner_core >= workers) {
        ++bad;
        note("bad delivery " + describe(m));
        continue;
      }
      per_key[m.key].emplace_back(p, r);
      if (!stamp.emplace(std::tuple(p, m.key, r), std::pair(m.owner_core, m.seq)).second) {
        ++duplicates;
        note("duplicate " + describe(m));
      }
      auto [it, fresh] = owner.emplace(m.key, m.owner_core);
      if (!fresh && it->second != m.owner_core) {
        ++owner_changes;
        note("key " + m.key + " on cores " + std::to_string(it->second) + " and " +
             std::to_string(m.owner_core));
      }
      auto& last = last_seq[m.owner_core];
      if (m.seq <= last) {
        ++seq_regressions;
        note("core " + std::to_string(m.owner_core) + " seq " + std::to_string(m.seq) + " after " +
             std::to_string(last));
      }
      last = m.seq;
    }
  }
};

}  // namespace

TEST_CASE("ordering: per-key total order with 4 publishers and 2 subscribers") {
  keywayd_process d({"--workers", "2"});
  raw_client sub_a = open_client(d.url(), "sub-a");
  raw_client sub_b = open_client(d.url(), "sub-b");
  sub_a.subscribe(1, "ord.>");
  sub_b.subscribe(2, "ord.>");
  const std::uint32_t workers = 2;

  std::vector<raw_client> pubs;
  for (int p = 0; p < publishers; ++p)
    pubs.push_back(open_client(d.url(), "pub-" + std::to_string(p)));

  std::mutex error_mutex;
  std::vector<std::string> errors;
  auto guarded = [&](auto&& body) {
    return [&, body] {
      try {
        body();
      } catch (const std::exception& e) {
        std::lock_guard lock(error_mutex);
        errors.emplace_back(e.what());
      }
    };
  };

  // Readers first, so the daemon never queues much for them.
  std::vector<message_frame> got_a, got_b;
  const auto read_deadline = steady::now() + 90s;
  auto reader = [&](raw_client& c, std::vector<message_frame>& out) {
    return guarded([&c, &out, read_deadline] {
      out.reserve(total);
      while (out.size() < total && steady::now() < read_deadline) {
        auto batch = c.collect(total - out.size(), 200ms);
        for (auto& m : batch) out.push_back(std::move(m));
        if (c.eof()) break;
      }
    });
  };
  std::thread ta(reader(sub_a, got_a));
  std::thread tb(reader(sub_b, got_b));

  std::vector<std::thread> writers;
  for (int p = 0; p < publishers; ++p) {
    writers.emplace_back(guarded([&pubs, p] {
      raw_client& c = pubs[static_cast<std::size_t>(p)];
      int queued = 0;
      for (int r = 0; r < rounds; ++r) {
        for (int k = 0; k < keys; ++k) {
          // Subjects vary too; the pattern catches them all.
          const std::string subject = "ord.s" + std::to_string(k % 16);
          const std::string key = key_name(k);
          const std::string payload = std::to_string(p) + ":" + std::to_string(r);
          proto::publish_fields f;
          f.subject = subject;
          f.key = as_bytes(key);
          f.payload = as_bytes(payload);
          c.queue_publish(f);
          if (++queued % 256 == 0) c.flush(30s);
        }
      }
      c.flush(30s);
      c.ping(30s);  // every publish of this connection was handled
    }));
  }
  for (auto& t : writers) t.join();
  ta.join();
  tb.join();
  for (const auto& e : errors) FAIL_CHECK("thread failed: " << e);
  if (!errors.empty()) {
    // Most likely the daemon died: say how.
    const auto code = d.stop();
    FAIL("keywayd exit status " << (code ? std::to_string(*code) : std::string("(still running)"))
                                << " (128 + signal when killed by one); its log:\n"
                                << d.log());
  }

  // Nothing beyond the expected count arrives later: each publisher puts a
  // sentinel on every key after its messages; once both subscribers have all
  // of them, every delivery of those publishes has arrived (per-key order).
  {
    std::vector<std::string> all_keys;
    for (int k = 0; k < keys; ++k) all_keys.push_back(key_name(k));
    sentinels fence;
    for (auto& p : pubs) fence.publish(p, "ord.end", all_keys);
    const auto late_a = fence.await(sub_a, 30s);
    const auto late_b = fence.await(sub_b, 30s);
    CHECK_MESSAGE(late_a.empty(), "late: " << describe_deliveries(late_a));
    CHECK_MESSAGE(late_b.empty(), "late: " << describe_deliveries(late_b));
  }

  // Both subscribers see every message exactly once.
  REQUIRE(got_a.size() == total);
  REQUIRE(got_b.size() == total);
  stream_check a, b;
  a.add(got_a, workers);
  b.add(got_b, workers);
  for (const stream_check* s : {&a, &b}) {
    INFO("first problem: " << s->first_problem);
    CHECK(s->bad == 0);
    CHECK(s->duplicates == 0);
    CHECK(s->stamp.size() == total);
    // Each key always carries the same ownerCore.
    CHECK(s->owner_changes == 0);
    // Per ownerCore, seq strictly rises in each subscriber's stream.
    CHECK(s->seq_regressions == 0);
    CHECK(s->per_key.size() == static_cast<std::size_t>(keys));
  }
  std::size_t wrong_sid = 0;
  for (const auto& m : got_a) wrong_sid += m.sid != 1;
  for (const auto& m : got_b) wrong_sid += m.sid != 2;
  CHECK(wrong_sid == 0);

  // Per publisher per key, the counter rises (0, 1, ... rounds-1).
  std::size_t publisher_order_breaks = 0;
  std::string first_break;
  for (const auto& [key, seq] : a.per_key) {
    int next[publishers] = {};
    for (const auto& [p, r] : seq) {
      if (r != next[p]) {
        ++publisher_order_breaks;
        if (first_break.empty())
          first_break = key + ": publisher " + std::to_string(p) + " counter " + std::to_string(r) +
                        " expected " + std::to_string(next[p]);
      }
      next[p] = r + 1;
    }
  }
  CHECK_MESSAGE(publisher_order_breaks == 0, first_break);

  // For each key, both subscribers see the same sequence, with the same
  // (ownerCore, seq) stamp on each message: one total order per key.
  std::size_t order_mismatches = 0;
  std::string first_mismatch;
  for (const auto& [key, seq] : a.per_key) {
    auto it = b.per_key.find(key);
    if (it == b.per_key.end() || it->second != seq) {
      ++order_mismatches;
      if (first_mismatch.empty()) first_mismatch = "key " + key;
    }
  }
  CHECK_MESSAGE(order_mismatches == 0, first_mismatch);
  CHECK(a.stamp == b.stamp);
  CHECK(a.owner == b.owner);

  // The load really was spread: both owner cores ordered some keys.
  std::map<std::uint32_t, int> keys_per_core;
  for (const auto& [key, core] : a.owner) ++keys_per_core[core];
  CHECK(keys_per_core.size() == workers);
  MESSAGE("keys per core: core 0 = " << keys_per_core[0] << ", core 1 = " << keys_per_core[1]);
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

}  // namespace keyway::itest
