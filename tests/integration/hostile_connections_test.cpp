// Hostile clients against the real keywayd: connections. An attacker
// announces a large frame before hello, opens connections past
// limits.max_connections, or floods the listener once keywayd is out of file
// descriptors. The daemon must refuse at once with the error that names the
// limit, keep its memory and CPU bounded, and keep serving the good client
// (tests/integration/hostile.hpp).
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "tests/integration/hostile.hpp"
#include "tests/integration/itest.hpp"
#include "tests/support/proc_stats.hpp"

namespace keyway::itest {
namespace {

/// tooManyConnections (wire ErrorCode 13), once proto::errc has it.
template <class Errc>
void check_too_many_connections(const error_frame& e) {
  if constexpr (requires { Errc::too_many_connections; }) {
    CHECK_MESSAGE(e.code == Errc::too_many_connections,
                  "got " << proto::to_string(e.code) << ": " << e.message);
    CHECK(static_cast<unsigned>(proto::to_wire(Errc::too_many_connections)) == 13u);
  } else {
    FAIL_CHECK("proto::errc has no too_many_connections (wire ErrorCode 13) yet; got "
               << proto::to_string(e.code));
  }
}

}  // namespace

// ---- before hello --------------------------------------------------------------

TEST_CASE("hostile: before hello only a hello-sized frame is accepted") {
  // A long handshake timeout: a daemon that waits for a frame's body must
  // not be rescued by the timeout here.
  keywayd_process d({"--workers", "2", "--handshake-timeout", "30s"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  for (const std::uint32_t announced : {64u * 1024, 1024u * 1024}) {
    CAPTURE(announced);
    raw_client bad = raw_client::connect(d.url());
    const auto start = steady::now();
    // The segment table alone: 8 bytes, then a segment that takes the rest.
    bad.send_raw(words({seg_table(0, announced / 8 - 1)}));
    const error_frame e = expect_fatal_then_close(bad, proto::errc::frame_too_large, 5s);
    const auto took = std::chrono::duration_cast<ms>(steady::now() - start);
    CHECK_MESSAGE(took < 2s, "refused after " << took.count() << " ms, not at once");
    CHECK_MESSAGE(e.message.find("before hello") != std::string::npos, e.message);
  }

  {  // A hello with its name and token at their limits still fits.
    raw_client c = raw_client::connect(d.url());
    const std::string name(256, 'n'), token(4096, 't');
    c.queue_hello({proto::protocol_version, name, token});
    c.flush();
    const auto f = c.read(default_timeout);
    REQUIRE(f.has_value());
    CHECK_MESSAGE(std::holds_alternative<welcome_frame>(*f), describe(*f));
  }

  // 300 connections each send all but the last byte of a 1 MiB frame, before hello.
  constexpr int connections = 300;
  std::vector<std::byte> frame = words({seg_table(0, static_cast<std::uint32_t>(mib / 8 - 1))});
  frame.resize(mib - 1, std::byte{0});
  rss_watch rss(d.pid());
  std::vector<raw_client> held;
  int cut_off = 0;  // connections whose write failed: closed under them
  for (int i = 0; i < connections; ++i) {
    held.push_back(raw_client::connect(d.url()));
    try {
      held.back().send_raw(frame, 5s);
    } catch (const io_error&) {
      ++cut_off;
    }
  }
  std::this_thread::sleep_for(200ms);
  const std::uint64_t growth = rss.growth();
  MESSAGE(connections << " connections sent " << frame.size() << " bytes each before hello ("
                      << cut_off << " were cut off); keywayd's RSS grew by " << growth / 1024
                      << " KiB");
  CHECK(growth < 32 * mib + asan_rss_slack);
  held.clear();
  require_running(d);

  check_latency("after the frames", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

// ---- connections ---------------------------------------------------------------

TEST_CASE("hostile: a connection over limits.max_connections is refused with tooManyConnections") {
  keywayd_process d({"--workers", "2", "--max-connections", "3"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client second = open_client(d.url(), "second");
  raw_client third = open_client(d.url(), "third");

  raw_client over = raw_client::connect(d.url());
  std::vector<server_frame> seen;
  CHECK(over.wait_closed(5s, &seen));
  require_running(d);
  REQUIRE(seen.size() == 1);
  const auto* e = std::get_if<error_frame>(&seen[0]);
  REQUIRE_MESSAGE(e != nullptr, describe(seen[0]));
  check_too_many_connections<proto::errc>(*e);
  CHECK(e->fatal);
  CHECK_MESSAGE(e->message.find("limits.max_connections") != std::string::npos, e->message);

  // A place that frees up is taken (the close is counted asynchronously).
  third.close();
  bool welcomed = false;
  std::string last;
  for (const auto deadline = steady::now() + 5s; !welcomed && steady::now() < deadline;) {
    raw_client c = raw_client::connect(d.url());
    try {
      (void)c.hello("retry", 2s);
      welcomed = true;
    } catch (const io_error& x) {
      last = x.what();
      std::this_thread::sleep_for(50ms);
    }
  }
  CHECK_MESSAGE(welcomed, last);
  check_latency("after the refusal", baseline, good.sample(baseline_round_trips));
  good.settle();
  second.ping();
}

TEST_CASE("hostile: out of file descriptors keywayd backs off instead of spinning on accept") {
  keywayd_process d({"--workers", "2", "--max-connections", "1000"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  // The daemon raises its soft RLIMIT_NOFILE to the hard limit at start, so
  // the low limit is set on it, soft and hard, once it runs.
  const rlimit low{64, 64};
  REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, &low, nullptr) == 0);
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  const std::size_t fds = test::open_fd_count(d.pid());
  MESSAGE("keywayd has " << fds << " descriptors open before the flood, out of 64");
  REQUIRE(fds < 56);

  const std::size_t log_before = d.log().size();
  std::vector<raw_client> flood;
  for (int i = 0; i < 200; ++i)
    flood.push_back(raw_client::connect(d.url()));  // completes in the backlog
  const auto cpu_before = test::cpu_time(d.pid());
  REQUIRE(cpu_before.has_value());
  const auto start = steady::now();
  background_probe probe(good, 100ms);
  std::this_thread::sleep_for(3s);
  const auto cpu_after = test::cpu_time(d.pid());
  const auto wall = std::chrono::duration_cast<ms>(steady::now() - start);
  const latency_samples during = probe.finish();
  require_running(d);
  REQUIRE(cpu_after.has_value());
  const auto cpu = std::chrono::duration_cast<ms>(*cpu_after - *cpu_before);
  const std::string flood_log = d.log().substr(log_before);
  const auto lines = std::count(flood_log.begin(), flood_log.end(), '\n');
  MESSAGE("over " << wall.count() << " ms with 200 connections pending, keywayd used "
                  << cpu.count() << " ms of CPU and logged " << lines
                  << " lines; the first: " << flood_log.substr(0, flood_log.find('\n')));
  CHECK(cpu < 500ms);
  CHECK(lines < 100);
  check_latency("during the flood", baseline, during);

  flood.clear();
  std::optional<raw_client> fresh;
  std::string last;
  for (const auto deadline = steady::now() + 10s; !fresh && steady::now() < deadline;) {
    try {
      fresh.emplace(open_client(d.url(), "after-the-flood"));
    } catch (const io_error& x) {
      last = x.what();
      std::this_thread::sleep_for(100ms);
    }
  }
  REQUIRE_MESSAGE(fresh.has_value(), "no new client was served after the flood: " << last);
  good.settle();
  check_round_trip(*fresh, good.client());
  check_round_trip(good.client(), *fresh);
}

TEST_CASE("hostile: keywayd logs the max_connections it derives from RLIMIT_NOFILE") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  const std::string log = d.log();
  const auto at = log.find("max_connections");
  REQUIRE_MESSAGE(at != std::string::npos, "keywayd's start-up log:\n" << log);
  const auto begin = log.rfind('\n', at);
  const std::string line =
      log.substr(begin == std::string::npos ? 0 : begin + 1,
                 log.find('\n', at) - (begin == std::string::npos ? 0 : begin + 1));
  MESSAGE(line);
  CHECK(line.find("RLIMIT_NOFILE") != std::string::npos);
}

}  // namespace keyway::itest
