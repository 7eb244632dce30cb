// Hostile clients against the real keywayd: what the daemon sends out. An
// attacker earns replies (pongs, errors) it never reads, a subscriber stalls,
// a publisher outruns its only subscriber. The daemon must stop reading from
// a client whose replies pile up, disconnect a stalled subscriber only after
// limits.slow_consumer_grace, pace a fast publisher to its subscriber without
// losing or reordering anything, and keep serving the good client
// (tests/integration/hostile.hpp).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "tests/integration/hostile.hpp"
#include "tests/integration/itest.hpp"

namespace keyway::itest {

// ---- replies count against the outbound budget ---------------------------------

namespace {

/// A client writes `unit` (a frame that earns a reply) as fast as it can
/// for 5 s, up to 200 MiB, and never reads. keywayd must stop reading from
/// it once the replies queued for it pass half of max_pending_bytes.
void flood_for_replies(const std::vector<std::byte>& unit) {
  constexpr std::uint64_t max_pending = 4 * mib;
  keywayd_process d({"--workers", "2", "--max-pending-bytes", std::to_string(max_pending)});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  rss_watch rss(d.pid());
  std::atomic<bool> done{false};
  flood_outcome flood;
  std::thread attacker([&] {
    flood = flood_unread(d.port(), unit, 200 * mib, 5s);
    done.store(true);
  });
  const latency_samples during = good.sample_until([&] { return done.load(); }, 10ms);
  attacker.join();
  const std::uint64_t growth = rss.growth();
  require_running(d);
  MESSAGE("the flood wrote " << flood.written / 1024 << " KiB"
                             << std::string(flood.peer_closed ? " and was closed" : "")
                             << "; keywayd's RSS grew by " << growth / 1024 << " KiB (from "
                             << rss.baseline() / 1024 << " KiB)");
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK(growth < max_pending + 32 * mib + asan_rss_slack);
  // It stopped reading: what was written fits in the replies it allows
  // itself plus the kernel's socket buffers (a few MiB each way).
  CHECK(flood.written < 64 * mib);
  check_latency("during the flood", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

}  // namespace

TEST_CASE("hostile: pings from a client that never reads are bounded by limits.max_pending_bytes") {
  flood_for_replies(ping_bytes(7));
}

TEST_CASE(
    "hostile: invalid publishes from a client that never reads are bounded by "
    "limits.max_pending_bytes") {
  const std::vector<std::byte> bad = publish_bytes("flood.*", "k", "", 7);
  {  // each one earns a non-fatal error frame: the attack's premise
    keywayd_process d({"--workers", "2"});
    INFO("keywayd's log, at the failure: " << log_tail(d));
    raw_client c = open_client(d.url(), "premise");
    c.send_raw(bad);
    const error_frame e = c.await_error();
    CHECK(e.code == proto::errc::invalid_subject);
    CHECK_FALSE(e.fatal);
    CHECK(e.request_id == 7);
  }
  flood_for_replies(bad);
}

// ---- slow consumers ------------------------------------------------------------------
// With --max-pending-bytes 1 MiB: small against the 20 MB by which the
// publisher below would outrun its subscriber, large against what is already
// on its way to the subscriber when its publisher is paused (a read of the
// publisher's, the mesh rings), which may still arrive within the grace.

TEST_CASE("hostile: a stalled subscriber is disconnected only after limits.slow_consumer_grace") {
  constexpr auto grace = 5s;  // the default
  keywayd_process d({"--workers", "2", "--max-pending-bytes", "1048576"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client stalled = raw_client::connect(d.url(), 4096);
  (void)stalled.hello("stalled-sub");
  stalled.subscribe(1, "stall.data");

  std::vector<std::byte> chunk;
  for (int i = 0; i < 64; ++i) {
    const auto f = publish_bytes("stall.data", numbered("k", i % 16), std::string(1024, 'x'));
    chunk.insert(chunk.end(), f.begin(), f.end());
  }
  background_probe probe(good, 20ms);
  std::atomic<bool> stop{false};
  flood_outcome flood;
  const auto start = steady::now();
  std::thread publisher([&] {
    try {
      flood_conn c(d.port(), 0, 64 * 1024);
      c.queue(hello_bytes("stall-publisher"));
      const auto end = steady::now() + grace + 15s;
      while (!stop.load() && steady::now() < end) {
        if (c.queued() < chunk.size()) c.queue(chunk);
        if (!c.write_until(steady::now() + 20ms)) break;
      }
      flood.written = c.written();
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
    }
  });
  // The daemon logs the close with the client's name and the code.
  std::optional<steady::time_point> decided;
  if (d.wait_log("(stalled-sub): slow_consumer", grace + 10s)) decided = steady::now();
  // The subscriber reads again at once, well within the close grace (2 s).
  std::vector<server_frame> seen;
  const bool closed = decided && stalled.wait_closed(10s, &seen);
  stop.store(true);
  publisher.join();
  const latency_samples during = probe.finish();
  require_running(d);

  REQUIRE_MESSAGE(decided.has_value(), "the stalled subscriber was never declared a slow consumer");
  const auto after = std::chrono::duration_cast<ms>(*decided - start);
  MESSAGE("declared a slow consumer " << after.count()
                                      << " ms after the flood began; limits.slow_consumer_grace is "
                                      << std::chrono::duration_cast<ms>(grace).count() << " ms");
  CHECK(after >= grace - 100ms);
  CHECK(closed);
  std::size_t deliveries = 0;
  std::vector<error_frame> errors;
  for (const auto& f : seen) {
    if (std::holds_alternative<message_frame>(f)) ++deliveries;
    if (const auto* e = std::get_if<error_frame>(&f)) errors.push_back(*e);
  }
  MESSAGE("after resuming, the subscriber read " << deliveries << " deliveries before the error");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::errc::slow_consumer);
  CHECK(errors[0].fatal);
  CHECK_MESSAGE(errors[0].message.find("limits.max_pending_bytes") != std::string::npos,
                errors[0].message);
  REQUIRE_FALSE(seen.empty());
  CHECK(std::holds_alternative<error_frame>(seen.back()));  // the last frame before EOF
  // The publisher was held back meanwhile, not closed.
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK_FALSE(flood.peer_closed);
  check_latency("while the subscriber stalled", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

TEST_CASE(
    "hostile: a publisher twice as fast as its only subscriber runs at the subscriber's pace") {
  keywayd_process d({"--workers", "2", "--max-pending-bytes", "1048576"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client sub = raw_client::connect(d.url(), 64 * 1024);
  (void)sub.hello("paced-sub");
  sub.subscribe(1, "pace.data");

  constexpr int keys = 16;
  // Deliveries per second the subscriber takes (also under the sanitizers:
  // at a lower rate what the kernel's socket buffers absorb would hide
  // whether the publisher was held back).
  constexpr double sub_rate = 4000;
  constexpr auto duration = 5s;
  const std::string filler(1024, 'p');
  // Every frame is the same size: the index in 10 digits, then filler.
  auto frame = [&](std::uint64_t i) {
    std::string index = std::to_string(i);
    index.insert(0, 10 - index.size(), '0');
    std::string key = std::to_string(i % keys);
    key.insert(0, 2 - key.size(), '0');
    return publish_bytes("pace.data", "k" + key, index + filler);
  };
  REQUIRE(frame(0).size() == frame(1234567).size());

  std::atomic<bool> pub_done{false}, release{false};
  std::atomic<std::uint64_t> published{0};
  flood_outcome flood;
  std::thread publisher([&] {
    try {
      flood_conn c(d.port(), 0, 64 * 1024);
      c.queue(hello_bytes("paced-pub"));
      const auto start = steady::now();
      std::uint64_t i = 0;
      while (steady::now() - start < duration && !c.gone()) {
        const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
        const auto want = static_cast<std::uint64_t>(2 * sub_rate * elapsed);
        while (i < want && c.queued() < 256 * 1024) c.queue(frame(i++));
        if (!c.write_until(std::min(start + duration, steady::now() + 5ms))) break;
        if (c.queued() == 0) std::this_thread::sleep_for(1ms);
      }
      // What is queued goes out at whatever pace the daemon takes it.
      c.write_until(steady::now() + 30s);
      if (c.queued() != 0)
        flood.error = "the last " + std::to_string(c.queued()) + " bytes could not be written";
      published.store(i);
      flood.written = c.written();
      pub_done.store(true);
      // Held open until the subscriber has everything: a publisher that
      // closes may lose what the daemon read but did not yet route.
      for (const auto end = steady::now() + 60s; !release.load() && steady::now() < end;)
        std::this_thread::sleep_for(10ms);
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
      pub_done.store(true);
    }
  });

  struct seen_message {
    std::uint64_t index;
    std::string key;
    std::uint32_t core;
    std::uint64_t seq;
  };
  std::vector<seen_message> got;
  std::vector<std::string> sub_errors;
  bool sub_closed = false;
  std::atomic<bool> sub_done{false};
  std::thread subscriber([&] {
    try {
      const auto start = steady::now();
      const auto limit = start + duration + 40s;
      while (steady::now() < limit) {
        if (pub_done.load() && got.size() >= published.load()) break;
        // Paced while the publisher runs, then as fast as it can.
        const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
        if (!pub_done.load() && static_cast<double>(got.size()) >= sub_rate * elapsed) {
          std::this_thread::sleep_for(5ms);
          continue;
        }
        auto f = sub.read(5ms);
        if (!f) {
          if (sub.eof()) {
            sub_closed = true;
            break;
          }
          continue;
        }
        if (auto* m = std::get_if<message_frame>(&*f))
          got.push_back({std::stoull(m->payload.substr(0, 10)), m->key, m->owner_core, m->seq});
        else
          sub_errors.push_back(describe(*f));
      }
    } catch (const std::exception& e) {
      sub_errors.push_back(e.what());
    }
    sub_done.store(true);
  });
  const latency_samples during = good.sample_until([&] { return sub_done.load(); }, 10ms);
  subscriber.join();
  release.store(true);
  publisher.join();
  require_running(d);

  const std::uint64_t n = published.load();
  const double target = 2 * sub_rate * std::chrono::duration<double>(duration).count();
  MESSAGE("published " << n << " of the " << target << " the publisher wanted in "
                       << std::chrono::duration_cast<ms>(duration).count()
                       << " ms; the subscriber got " << got.size());
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK_FALSE(flood.peer_closed);
  CHECK_FALSE(sub_closed);
  CHECK_MESSAGE(sub_errors.empty(), (sub_errors.empty() ? std::string() : sub_errors.front()));
  // The publisher was held back to about the subscriber's pace (plus what
  // the kernel's socket buffers absorb).
  CHECK(static_cast<double>(n) < 0.9 * target);
  // Nothing lost, nothing twice, and in order per key and per owner core.
  CHECK(got.size() == n);
  std::set<std::uint64_t> indexes;
  std::map<std::string, std::uint64_t> next_index, last_seq_of_key;
  std::map<std::uint32_t, std::uint64_t> last_seq_of_core;
  std::size_t out_of_order = 0;
  for (const auto& m : got) {
    indexes.insert(m.index);
    auto [ni, fresh_key] = next_index.try_emplace(m.key, m.index);
    if (!fresh_key && m.index != ni->second) ++out_of_order;
    ni->second = m.index + keys;
    auto [ks, k_new] = last_seq_of_key.try_emplace(m.key, m.seq);
    if (!k_new && m.seq <= ks->second) ++out_of_order;
    ks->second = m.seq;
    auto [cs, c_new] = last_seq_of_core.try_emplace(m.core, m.seq);
    if (!c_new && m.seq <= cs->second) ++out_of_order;
    cs->second = m.seq;
  }
  CHECK(indexes.size() == n);
  CHECK((n == 0 || *indexes.rbegin() == n - 1));
  CHECK(out_of_order == 0);
  check_latency("while the publisher was paced", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

}  // namespace keyway::itest
