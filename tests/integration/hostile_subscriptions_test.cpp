// Hostile clients against the real keywayd: what subscriptions may cost. An
// attacker joins a queue group past its member cap, subscribes to patterns
// over the token limit or past its connection's byte budget, or piles up
// pattern shapes that every publish must be matched against. The daemon must
// refuse with the error that names the limit and keep serving the good
// client (tests/integration/hostile.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "tests/integration/hostile.hpp"
#include "tests/integration/itest.hpp"
#include "tests/support/http_get.hpp"

namespace keyway::itest {
namespace {

// ---- requests and their answers ---------------------------------------------

/// The frame answering request `id`: its ack, an error for it, or a fatal
/// error. nullopt on timeout or close.
std::optional<server_frame> answer_to(raw_client& c, std::uint64_t id,
                                      ms timeout = default_timeout) {
  return c.wait_for(
      [id](const server_frame& x) {
        if (const auto* a = std::get_if<ack_frame>(&x)) return a->request_id == id;
        if (const auto* e = std::get_if<error_frame>(&x)) return e->request_id == id || e->fatal;
        return false;
      },
      timeout);
}

/// Expects `f`, the answer to request `id`, to be a non-fatal error `code`
/// whose message names `limit`.
void check_refused(const std::optional<server_frame>& f, std::uint64_t id, proto::errc code,
                   std::string_view limit) {
  REQUIRE_MESSAGE(f.has_value(), "no answer to request " << id);
  const auto* e = std::get_if<error_frame>(&*f);
  REQUIRE_MESSAGE(e != nullptr,
                  "request " << id << " was answered with " << describe(*f) << ", not refused");
  CHECK_MESSAGE(e->code == code, "got " << proto::to_string(e->code) << ": " << e->message);
  CHECK_FALSE(e->fatal);
  CHECK(e->request_id == id);
  CHECK_MESSAGE(e->message.find(limit) != std::string::npos,
                "the message does not name " << limit << ": " << e->message);
}

/// What a batch of subscribe requests came to.
struct subscribe_tally {
  int accepted = 0;
  int refused = 0;         // with the expected code and limit
  std::string unexpected;  // the first other answer
};

/// Sends the subscribes of `specs` (request id = sid, queue group `group`)
/// in batches of `batch`, reading the answers of each batch before the next,
/// and tallies them: an ack, or a non-fatal `code` naming `limit`.
subscribe_tally subscribe_all(raw_client& c,
                              const std::vector<std::pair<std::uint32_t, std::string>>& specs,
                              proto::errc code, std::string_view limit, std::size_t batch = 256,
                              std::string_view group = {}) {
  subscribe_tally t;
  for (std::size_t first = 0; first < specs.size() && t.unexpected.empty(); first += batch) {
    const std::size_t last = std::min(first + batch, specs.size());
    for (std::size_t i = first; i < last; ++i)
      c.queue_subscribe({specs[i].first, specs[i].second, group, specs[i].first});
    c.flush();
    for (std::size_t i = first; i < last; ++i) {
      const auto f = answer_to(c, specs[i].first);
      if (!f) {
        t.unexpected = "no answer to the subscribe of " + specs[i].second;
        break;
      }
      if (std::holds_alternative<ack_frame>(*f)) {
        ++t.accepted;
        continue;
      }
      const auto& e = std::get<error_frame>(*f);
      if (e.code == code && !e.fatal && e.request_id == specs[i].first &&
          e.message.find(limit) != std::string::npos) {
        ++t.refused;
      } else if (t.unexpected.empty()) {
        t.unexpected = "subscribe of " + specs[i].second + " answered with " + describe(*f);
      }
    }
  }
  return t;
}

/// A config file with loopback listeners on port 0, two workers and these
/// [limits] lines.
std::string write_config(const temp_dir& dir, const std::string& limits) {
  const auto path = dir.path() / "keyway.toml";
  std::ofstream(path)
      << "[server]\nworkers = 2\n[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = "
         "\"127.0.0.1:0\"\n[limits]\n"
      << limits;
  return path.string();
}

/// `count` dot-separated tokens "t", the last one `last`.
std::string pattern_of(int count, std::string_view last = "t") {
  std::string p;
  for (int i = 0; i + 1 < count; ++i) p += "t.";
  return p + std::string(last);
}

}  // namespace

// ---- queue-group members -----------------------------------------------------

TEST_CASE("hostile: a queue group takes at most limits.max_queue_group_members members") {
  temp_dir dir;
  keywayd_process d({"--config", write_config(dir, "max_queue_group_members = 16\n")});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  raw_client a = open_client(d.url(), "joiner-a");
  for (std::uint32_t sid = 1; sid <= 16; ++sid) a.subscribe(sid, "qo.x", "grp");
  a.queue_subscribe({17, "qo.x", "grp", 1717});
  a.flush();
  check_refused(answer_to(a, 1717), 1717, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");

  // The cap is the group's, whichever connection joins.
  raw_client b = open_client(d.url(), "joiner-b");
  b.queue_subscribe({1, "qo.x", "grp", 4242});
  b.flush();
  check_refused(answer_to(b, 4242), 4242, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");
  // Another group on the same pattern is a group of its own.
  b.subscribe(2, "qo.x", "other");
  a.ping();
  b.ping();

  // One delivery per group: the refused joins joined nothing.
  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked("qo.x", "k", "one").delivered == 2);

  // While and after A's 16 members leave, publishes are still acked.
  a.close();
  for (int i = 0; i < 50; ++i) {
    const ack_frame ack = pub.publish_acked("qo.x", numbered("key-", i), "after");
    CHECK(ack.delivered <= 2);
  }
  // Members that left free their places: a join goes through again (the
  // leave is applied asynchronously; retry for a bounded time).
  bool joined = false;
  std::string last;
  std::uint64_t id = 9000;
  for (const auto deadline = steady::now() + 5s; !joined && steady::now() < deadline;) {
    b.queue_subscribe({3, "qo.x", "grp", ++id});
    b.flush();
    const auto f = answer_to(b, id);
    REQUIRE(f.has_value());
    joined = std::holds_alternative<ack_frame>(*f);
    if (!joined) {
      last = describe(*f);
      std::this_thread::sleep_for(50ms);
    }
  }
  CHECK_MESSAGE(joined, "a join after the members left was still refused: " << last);
  CHECK(pub.publish_acked("qo.x", "k", "two").delivered == 2);

  require_running(d);
  check_latency("after the joins", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

TEST_CASE("hostile: the 1025th member of a queue group is refused at the default limit") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  raw_client a = open_client(d.url(), "joiner");
  std::vector<std::pair<std::uint32_t, std::string>> joins;
  for (std::uint32_t sid = 1; sid <= 1024; ++sid) joins.emplace_back(sid, "qo.big");
  const subscribe_tally t = subscribe_all(a, joins, proto::errc::too_many_subscriptions,
                                          "limits.max_queue_group_members", 256, "grp");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted == 1024);
  a.queue_subscribe({1025, "qo.big", "grp", 1025});
  a.flush();
  check_refused(answer_to(a, 1025), 1025, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");

  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked("qo.big", "k", "x").delivered == 1);
  a.close();
  for (int i = 0; i < 20; ++i)
    CHECK(pub.publish_acked("qo.big", numbered("key-", i), "after").delivered <= 1);
  require_running(d);
  check_latency("after the joins", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

// ---- what one subscription may cost ------------------------------------------

TEST_CASE("hostile: a pattern over limits.max_pattern_tokens is invalidSubject") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client c = open_client(d.url(), "long-patterns");

  std::uint32_t sid = 0;
  for (const std::string& p :
       {pattern_of(33), pattern_of(33, ">"), pattern_of(33, "*"), pattern_of(128)}) {
    CAPTURE(p);
    ++sid;
    c.queue_subscribe({sid, p, {}, 100 + sid});
    c.flush();
    check_refused(answer_to(c, 100 + sid), 100 + sid, proto::errc::invalid_subject,
                  "limits.max_pattern_tokens");
  }
  // 32 tokens are fine, and the refused ones subscribed nothing.
  c.subscribe(50, pattern_of(32));
  c.subscribe(51, pattern_of(32, ">"));
  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked(pattern_of(32), "k", "32").delivered == 2);
  CHECK(pub.publish_acked(pattern_of(33), "k", "33").delivered == 1);  // t×31.> only
  CHECK(c.collect(3, default_timeout).size() == 3);
  require_running(d);
  check_latency("after the patterns", baseline, good.sample(baseline_round_trips));
  check_daemon_serves(d, c);
}

TEST_CASE("hostile: a connection's subscriptions are bounded by limits.max_subscription_bytes") {
  constexpr std::uint64_t budget = mib;
  temp_dir dir;
  keywayd_process d(
      {"--config", write_config(dir, "max_subscription_bytes = " + std::to_string(budget) + "\n")});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  // 5,000 patterns of 32 tokens each that no other pattern shares (223 bytes).
  constexpr int patterns = 5000;
  std::vector<std::pair<std::uint32_t, std::string>> specs;
  for (int i = 0; i < patterns; ++i) {
    std::string p;
    for (int t = 0; t < 32; ++t) {
      unsigned n = static_cast<unsigned>(i * 32 + t);
      std::string token = "p";
      for (int k = 0; k < 5; ++k, n /= 36) token += "0123456789abcdefghijklmnopqrstuvwxyz"[n % 36];
      p += (t ? "." : "") + token;
    }
    specs.emplace_back(static_cast<std::uint32_t>(i + 1), std::move(p));
  }
  rss_watch rss(d.pid());
  raw_client hog = open_client(d.url(), "pattern-hog");
  const subscribe_tally t = subscribe_all(hog, specs, proto::errc::too_many_subscriptions,
                                          "limits.max_subscription_bytes");
  const std::uint64_t growth = rss.growth();
  require_running(d);
  MESSAGE(t.accepted << " patterns accepted, " << t.refused << " refused; keywayd's RSS grew by "
                     << growth / 1024 << " KiB");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted + t.refused == patterns);
  CHECK(t.refused > 0);  // the pattern text alone is over the budget
  CHECK(growth < budget + 64 * mib + asan_rss_slack);
  hog.ping();  // refusals are not fatal

  // Another connection has a budget of its own.
  raw_client other = open_client(d.url(), "other");
  other.subscribe(1, "small.one");
  CHECK(good.client().publish_acked("small.one", "k", "x").delivered == 1);
  CHECK(other.collect(1, default_timeout).size() == 1);
  check_latency("after the subscriptions", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, other);
}

// ---- what one publish may cost to match ------------------------------------------

TEST_CASE("hostile: matching a publish is bounded by limits.max_pattern_shapes") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  // Five patterns that match the 13-token subject a.a.…a: more than a
  // subject-cache entry holds, so every publish to it is matched afresh.
  // They belong to a sink that reads and drops its deliveries without
  // decoding them (so that the test's own threads leave the CPUs to the
  // daemon), and none matches the good client's subject: the good client must
  // not publish to the sink, which may fall behind and so pause its publishers.
  const std::string a13 = "a.a.a.a.a.a.a.a.a.a.a.a.a";
  const std::vector<std::string> matchers{a13, "a.>", "a.a.>", "*.*.*.*.*.*.*.*.*.*.*.*.*",
                                          "a.*.a.*.a.*.a.*.a.*.a.*.a"};
  flood_conn sink(d.port(), 1 << 20);
  sink.queue(hello_bytes("sink"));
  for (std::size_t i = 0; i < matchers.size(); ++i)
    sink.queue(frame_bytes([&](proto::encoder& e, proto::out_buffer& o) {
      return e.subscribe(o, {static_cast<std::uint32_t>(i + 1), matchers[i], {}, 0});
    }));
  REQUIRE(sink.write_until(steady::now() + 5s));
  // The barrier: once every matcher is in place, a publish to a.…a counts five
  // deliveries (the sink reads none of this; it is all small).
  std::uint32_t delivered = 0;
  for (const auto deadline = steady::now() + 5s; delivered != 5 && steady::now() < deadline;) {
    delivered = good.client().publish_acked(a13, "k", "barrier").delivered;
    if (delivered != 5) std::this_thread::sleep_for(20ms);
  }
  REQUIRE_MESSAGE(delivered == 5, "the sink's five patterns were not all subscribed");

  // Then every mix of `a` and `*` over 12 tokens, then `b`: 4,096 patterns,
  // 4,095 shapes (the cap is daemon-wide: the sink's patterns came first).
  // No publish below matches them.
  raw_client shapes = open_client(d.url(), "shapes");
  std::vector<std::pair<std::uint32_t, std::string>> specs;
  for (unsigned mask = 0; mask < 4096; ++mask) {
    std::string p;
    for (int t = 0; t < 12; ++t) p += (mask >> t & 1) ? "*." : "a.";
    specs.emplace_back(100 + mask, p + "b");
  }
  const subscribe_tally t = subscribe_all(shapes, specs, proto::errc::too_many_subscriptions,
                                          "limits.max_pattern_shapes", 512);
  MESSAGE(t.accepted << " of the 4096 a/* patterns accepted, " << t.refused << " refused");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted + t.refused == 4096);
  CHECK(t.accepted <= 256);

  std::atomic<bool> stop{false};
  std::thread drainer([&] {
    while (!stop.load() && sink.discard_input(20ms)) {
    }
  });
  std::vector<std::byte> attack;
  for (int i = 0; i < 20000; ++i) {
    const std::string subject = i % 4 == 0 ? a13 : numbered("a.a.a.a.a.a.a.a.a.a.a.a.v", i);
    const auto f = publish_bytes(subject, numbered("k", i % 64), "x");
    attack.insert(attack.end(), f.begin(), f.end());
  }
  std::atomic<bool> done{false};
  flood_outcome flood;
  std::thread attacker([&] {
    try {
      const auto end = steady::now() + 3s;
      flood_conn c(d.port());
      c.queue(hello_bytes("matcher"));
      while (steady::now() < end) {
        if (c.queued() < 64 * 1024) c.queue(attack);
        if (!c.write_until(std::min(end, steady::now() + 20ms))) break;
      }
      flood.written = c.written();
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
    }
    done.store(true);
  });
  // Meanwhile: the good client's round trips, and /readyz every 100 ms.
  background_probe probe(good, 10ms);
  int readyz_checks = 0, readyz_bad = 0;
  std::string readyz_last;
  while (!done.load()) {
    ++readyz_checks;
    try {
      const auto r = test::http_get(d.admin_port(), "/readyz", 2s);
      if (r.status != 200) {
        ++readyz_bad;
        readyz_last = std::to_string(r.status) + " " + r.body;
      }
    } catch (const std::exception& e) {
      ++readyz_bad;
      readyz_last = e.what();
    }
    std::this_thread::sleep_for(100ms);
  }
  const latency_samples during = probe.finish();
  attacker.join();
  stop.store(true);
  drainer.join();
  require_running(d);
  MESSAGE("the attacker wrote " << flood.written / 1024
                                << " KiB of publishes in 3 s, the sink read "
                                << sink.discarded() / 1024 << " KiB; /readyz answered "
                                << readyz_checks - readyz_bad << " of " << readyz_checks
                                << " times with 200"
                                << (readyz_bad ? ", last: " + readyz_last : std::string()));
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK(readyz_checks >= 5);
  CHECK(readyz_bad == 0);
  check_latency("during the publishes", baseline, during);

  good.settle();
  check_daemon_serves(d, good.client());
}

}  // namespace keyway::itest
