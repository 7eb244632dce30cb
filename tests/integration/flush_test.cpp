// Ping means "routed" (docs/protocol.md, Ping / Pong): the pong to a ping
// leaves only after every publish its connection sent before the ping was
// routed by its key's owner core, and the deliveries that routing made to the
// pinging connection itself were written before the pong. This is what a
// client's flush() waits for. Before barriers, a pong could overtake
// publishes still crossing to another owner core: of 1000 publishes to one's
// own subscription, 948-994 had arrived at the pong.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/numbered.hpp"

namespace keyway::itest {
namespace {

using test::numbered;

constexpr int rounds = 20;
constexpr int per_round = 1000;

struct round_result {
  std::size_t before_pong = 0;     // deliveries read before the pong
  std::set<std::string> payloads;  // of those
  bool pong = false;
  std::vector<std::uint64_t> pongs;  // ids, in arrival order
  std::string trouble;               // an unexpected frame, or why reading stopped
};

/// Reads until the pong `last_pong` (or the deadline): counts sid's
/// deliveries before it and records every pong in order.
round_result read_until_pong(raw_client& c, std::uint32_t sid, std::uint64_t last_pong) {
  round_result r;
  const auto deadline = steady::now() + 30s;
  while (steady::now() < deadline) {
    auto f = c.read(std::chrono::ceil<ms>(deadline - steady::now()));
    if (!f) {
      r.trouble = c.eof() ? "connection closed" : "timeout";
      return r;
    }
    if (const auto* m = std::get_if<message_frame>(&*f)) {
      if (m->sid != sid) {
        r.trouble = "a delivery to sid " + std::to_string(m->sid);
        return r;
      }
      ++r.before_pong;
      r.payloads.insert(m->payload);
    } else if (const auto* p = std::get_if<pong_frame>(&*f)) {
      r.pongs.push_back(p->id);
      if (p->id == last_pong) {
        r.pong = true;
        return r;
      }
    } else if (!std::holds_alternative<ack_frame>(*f)) {
      r.trouble = "unexpected " + describe(*f);
      return r;
    }
  }
  r.trouble = "timeout";
  return r;
}

/// 20 rounds of: subscribe to own.>, 1000 keyed publishes (distinct keys, so
/// they spread over the owner cores) to own.x, a ping, all in one write; every
/// delivery must come before the pong.
void check_pong_after_own_deliveries(const char* workers) {
  keywayd_process d({"--workers", workers});
  INFO("workers " << workers);
  raw_client c = open_client(d.url(), "flusher");
  std::set<std::uint32_t> cores;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    const auto sid = static_cast<std::uint32_t>(round + 1);
    c.subscribe(sid, "own.>");
    // Even rounds publish one frame per message, odd rounds publishBatch
    // frames of 100 entries: both take the same routing.
    std::vector<batch_item> batch;
    for (int i = 0; i < per_round; ++i) {
      const std::string key = "key-" + std::to_string(round) + "-" + std::to_string(i);
      const std::string payload = std::to_string(round) + ":" + std::to_string(i);
      if (round % 2 == 0) {
        proto::publish_fields f;
        f.subject = "own.x";
        f.key = as_bytes(key);
        f.payload = as_bytes(payload);
        c.queue_publish(f);
      } else {
        batch.push_back({key, payload});
        if (batch.size() == 100) {
          const auto entries = batch_entries(batch);
          c.queue_publish_batch("own.x", static_cast<std::uint32_t>(batch.size()), entries);
          batch.clear();
        }
      }
    }
    const std::uint64_t ping_id = 1000 + static_cast<std::uint64_t>(round);
    c.queue_ping(ping_id);
    c.flush();
    const round_result r = read_until_pong(c, sid, ping_id);
    INFO("daemon log:\n" << d.log());
    REQUIRE_MESSAGE(r.pong, "no pong: " << r.trouble);
    CHECK(r.trouble.empty());
    CHECK(r.before_pong == per_round);
    CHECK(r.payloads.size() == static_cast<std::size_t>(per_round));
    c.unsubscribe(sid);
  }
  // Nothing of any round came late: every publish of `c` precedes this
  // barrier's ping, so (the property checked above, per round) all their
  // deliveries to `c` were queued before its pong.
  CHECK(c.barrier().empty());
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

}  // namespace

TEST_CASE("flush: with 1 worker, a pong comes after every delivery of the publishes before it") {
  check_pong_after_own_deliveries("1");
}

TEST_CASE("flush: with 2 workers, a pong comes after every delivery of the publishes before it") {
  check_pong_after_own_deliveries("2");
}

TEST_CASE("flush: a ping with nothing published gets its pong, before and after publishing") {
  for (const char* workers : {"1", "2"}) {
    CAPTURE(workers);
    keywayd_process d({"--workers", workers});
    raw_client c = open_client(d.url(), "pinger");
    // A ping before anything else.
    c.queue_ping(1);
    c.flush();
    auto r = read_until_pong(c, 0, 1);
    REQUIRE_MESSAGE(r.pong, r.trouble);
    // Publishes nobody subscribed to (dropped at ingress), then a ping.
    for (int i = 0; i < 100; ++i) c.publish("nobody.listens", numbered("k", i), "x");
    c.queue_ping(2);
    c.flush();
    r = read_until_pong(c, 0, 2);
    REQUIRE_MESSAGE(r.pong, r.trouble);
    // Publishes that were routed, a ping that covers them, then a ping after
    // which nothing was published.
    c.subscribe(7, "own.>");
    for (int i = 0; i < 100; ++i) c.publish("own.y", numbered("k", i), "x");
    c.queue_ping(3);
    c.queue_ping(4);
    c.flush();
    r = read_until_pong(c, 7, 4);
    REQUIRE_MESSAGE(r.pong, r.trouble);
    CHECK(r.before_pong == 100);
    CHECK(r.pongs == std::vector<std::uint64_t>{3, 4});
    c.queue_ping(5);
    c.flush();
    r = read_until_pong(c, 7, 5);
    REQUIRE_MESSAGE(r.pong, r.trouble);
    CHECK(r.before_pong == 0);
  }
}

TEST_CASE("flush: pipelined pings are answered in order, each after the publishes before it") {
  keywayd_process d({"--workers", "2"});
  raw_client c = open_client(d.url(), "pipeliner");
  c.subscribe(1, "own.>");
  // ping 1 and 2 after 500 publishes, 3 and 4 after 500 more, 5 after none.
  std::uint64_t id = 0;
  std::vector<std::size_t> expected_before;  // deliveries before pong i, counted from the start
  std::size_t published = 0;
  for (int group = 0; group < 3; ++group) {
    const int n = group < 2 ? 500 : 0;
    for (int i = 0; i < n; ++i, ++published) {
      const std::string key = numbered("k", published);
      proto::publish_fields f;
      f.subject = "own.z";
      f.key = as_bytes(key);
      f.payload = as_bytes(key);
      c.queue_publish(f);
    }
    for (int p = 0; p < (group < 2 ? 2 : 1); ++p) {
      c.queue_ping(++id);
      expected_before.push_back(published);
    }
  }
  c.flush();
  // Read everything up to the last pong, noting the deliveries before each.
  std::vector<std::uint64_t> pongs;
  std::vector<std::size_t> before;
  std::size_t deliveries = 0;
  const auto deadline = steady::now() + 30s;
  while (pongs.size() < id && steady::now() < deadline) {
    auto f = c.read(std::chrono::ceil<ms>(deadline - steady::now()));
    if (!f) break;
    if (std::holds_alternative<message_frame>(*f)) {
      ++deliveries;
    } else if (const auto* p = std::get_if<pong_frame>(&*f)) {
      pongs.push_back(p->id);
      before.push_back(deliveries);
    } else {
      FAIL_CHECK("unexpected " << describe(*f));
    }
  }
  CHECK(pongs == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
  REQUIRE(before.size() == expected_before.size());
  for (std::size_t i = 0; i < before.size(); ++i) {
    CAPTURE(i);
    CHECK(before[i] >= expected_before[i]);
  }
  CHECK(before.back() == published);
}

TEST_CASE(
    "flush: a connection closed with barriers in flight is forgotten, and the daemon serves on") {
  keywayd_process d({"--workers", "2"});
  raw_client established = open_client(d.url(), "established");
  for (int round = 0; round < 5; ++round) {
    raw_client c = open_client(d.url(), "leaver");
    c.subscribe(1, "leave.>");
    for (int i = 0; i < 1000; ++i) {
      const std::string key = numbered("k", i);
      proto::publish_fields f;
      f.subject = "leave.now";
      f.key = as_bytes(key);
      f.payload = as_bytes(key);
      c.queue_publish(f);
      if (i % 100 == 99) c.queue_ping(static_cast<std::uint64_t>(i));
    }
    c.flush();
    c.close();  // pongs and deliveries still on their way
  }
  check_daemon_serves(d, established);
  established.ping();
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

}  // namespace keyway::itest
