// Slow consumers: a subscriber that never reads, with --max-pending-bytes
// 65536 and --slow-consumer-grace 300ms, under both policies, next to a
// healthy subscriber that must get everything. The publisher is paused while
// the stalled subscriber is over half its limit, for at most the grace; then
// the policy applies and the publisher goes on.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"

namespace keyway::itest {
namespace {

// 8,000 x 1 KiB: well over what the kernel buffers for a client that never
// reads (on loopback the daemon's send buffer autotunes up to tcp_wmem's
// 4 MiB; about 3 MB were measured), so the daemon's own queue must fill.
constexpr int messages = 8000;
constexpr int batch = 32;
constexpr std::size_t payload_size = 1024;

struct slow_setup {
  keywayd_process daemon;
  raw_client stalled;
  raw_client healthy;
  raw_client pub;

  explicit slow_setup(const std::string& policy)
      : daemon({"--workers", "2", "--max-pending-bytes", "65536", "--slow-consumer", policy,
                "--slow-consumer-grace", "300ms"}),
        // A small receive buffer: the kernel absorbs little of what the
        // daemon writes to the client that never reads.
        stalled(raw_client::connect(daemon.url(), 4096)),
        healthy(open_client(daemon.url(), "healthy")),
        pub(open_client(daemon.url(), "publisher")) {
    const welcome_frame w = stalled.hello("stalled");
    CHECK(w.max_pending_bytes == 65536);
    stalled.subscribe(1, "slow.>");
    healthy.subscribe(1, "slow.>");
  }

  /// Publishes messages [from, to) of 1 KiB in batches, waiting after each
  /// batch until the healthy subscriber has them all (so it never falls
  /// behind), while `stalled` reads nothing; the indexes the healthy one got
  /// go to `got`. With `stop_at_log`, stops after the first batch once the
  /// daemon's log contains it. Returns the index after the last published.
  int publish(int from, int to, std::multiset<int>& got, std::string_view stop_at_log = {}) {
    std::string payload(payload_size, 'x');
    int i = from;
    while (i < to) {
      const int end = std::min(i + batch, to);
      for (int j = i; j < end; ++j) {
        const std::string index = std::to_string(j);
        payload.replace(0, 8, index + std::string(8 - index.size(), ' '));
        const std::string key = "key-" + std::to_string(j % 64);
        proto::publish_fields f;
        f.subject = "slow.data";
        f.key = as_bytes(key);
        f.payload = as_bytes(payload);
        pub.queue_publish(f);
      }
      pub.flush();
      const auto want = static_cast<std::size_t>(end - i);
      const auto msgs = healthy.collect(want, default_timeout);
      for (const auto& m : msgs) got.insert(std::stoi(m.payload.substr(0, 8)));
      i = end;
      if (msgs.size() != want) break;  // reported by the caller's checks
      if (!stop_at_log.empty() && daemon.wait_log(stop_at_log, 0ms)) break;
    }
    return i;
  }
};

void check_healthy_got_everything(const std::multiset<int>& got) {
  CHECK(got.size() == static_cast<std::size_t>(messages));
  std::size_t missing = 0;
  for (int i = 0; i < messages; ++i) missing += got.count(i) != 1;
  CHECK(missing == 0);
}

}  // namespace

TEST_CASE(
    "slow consumer: disconnect policy sends slowConsumer and closes only the stalled subscriber") {
  slow_setup s("disconnect");
  std::multiset<int> got;
  // Publish until the daemon gives up on the stalled subscriber...
  const int stalled_at = s.publish(0, messages, got, "slow consumer:");
  REQUIRE_MESSAGE(stalled_at < messages, "the daemon never declared the stalled subscriber slow");

  // ... then read it at once (the daemon allows a fatal error's reader a short
  // grace period): what fitted before the limit, the slow_consumer error,
  // then the close.
  std::vector<server_frame> seen;
  const bool closed = s.stalled.wait_closed(20s, &seen);
  CHECK_MESSAGE(closed, "the daemon did not close the slow consumer");
  std::size_t deliveries = 0;
  std::vector<error_frame> errors;
  for (const auto& f : seen) {
    if (std::holds_alternative<message_frame>(f)) ++deliveries;
    if (const auto* e = std::get_if<error_frame>(&f)) errors.push_back(*e);
  }
  MESSAGE("the stalled subscriber got "
          << deliveries << " deliveries before the close; the publisher was at " << stalled_at);
  CHECK(deliveries < static_cast<std::size_t>(messages));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::errc::slow_consumer);
  CHECK(errors[0].fatal);
  CHECK(errors[0].message.find("max_pending_bytes") != std::string::npos);
  REQUIRE_FALSE(seen.empty());
  CHECK(std::holds_alternative<error_frame>(seen.back()));  // the last frame before the close

  // The healthy subscriber got, and keeps getting, everything.
  CHECK(s.publish(stalled_at, messages, got) == messages);
  check_healthy_got_everything(got);
  CHECK_FALSE(s.healthy.eof());
  check_daemon_serves(s.daemon, s.healthy);
  check_daemon_serves(s.daemon, s.pub);
}

TEST_CASE("slow consumer: disconnect policy closes a subscriber that never reads") {
  slow_setup s("disconnect");
  const pid_t pid = s.daemon.pid();
  const std::size_t sockets_before = socket_count(pid);
  std::multiset<int> got;
  CHECK(s.publish(0, messages, got) == messages);
  check_healthy_got_everything(got);
  // "send a slow_consumer error, then close": the stalled client never reads
  // the error, but the daemon must still let go of the connection rather
  // than hold its socket and queue for as long as the peer stays silent.
  const auto deadline = steady::now() + 10s;
  std::size_t sockets_now = socket_count(pid);
  while (sockets_now >= sockets_before && steady::now() < deadline) {
    std::this_thread::sleep_for(20ms);
    sockets_now = socket_count(pid);
  }
  MESSAGE("keywayd sockets: " << sockets_before << " before the stall, " << sockets_now
                              << " after it");
  CHECK_MESSAGE(sockets_now < sockets_before,
                "keywayd still holds the socket of the slow consumer it decided to disconnect");
  CHECK(s.daemon.log().find("slow consumer") != std::string::npos);
  // It is closed from the client's side too (what it reads now is whatever
  // was already in the kernel's buffers).
  CHECK(s.stalled.wait_closed(20s));
  check_daemon_serves(s.daemon, s.healthy);
}

TEST_CASE(
    "slow consumer: drop policy keeps the stalled subscriber open and drops only its messages") {
  slow_setup s("drop");
  std::multiset<int> got;
  CHECK(s.publish(0, messages, got) == messages);
  check_healthy_got_everything(got);

  // The stalled subscriber gets what was queued before the limit; the rest
  // was dropped for it alone. No error frame, no close.
  // This stays a quiet window, not a sentinel: under the drop policy a
  // sentinel can itself be dropped for this subscriber, so waiting for one
  // proves nothing (and may never end). Nothing depends on catching every
  // delivery here: the checks below are bounds, and what is still on its way
  // at the end of the window is read up to the pong below.
  auto delivered = s.stalled.collect_until_quiet(300ms, 30s);
  CHECK_FALSE(s.stalled.eof());
  s.stalled.ping();  // still open, still answered
  // Deliveries that were still on their way when the quiet period ended
  // came before the pong; anything else would be wrong.
  while (auto f = s.stalled.read(0ms)) {
    if (auto* m = std::get_if<message_frame>(&*f))
      delivered.push_back(std::move(*m));
    else
      FAIL_CHECK("unexpected " << describe(*f));
  }
  MESSAGE("the stalled subscriber got " << delivered.size() << " of " << messages << " deliveries");
  CHECK(delivered.size() > 0);
  CHECK(delivered.size() < static_cast<std::size_t>(messages));
  std::set<int> indexes;
  for (const auto& m : delivered) indexes.insert(std::stoi(m.payload.substr(0, 8)));
  CHECK(indexes.size() == delivered.size());  // dropped, never duplicated

  // Once it reads again, new messages reach it (and everyone else).
  const ack_frame a = s.pub.publish_acked("slow.after", "k", "after the stall");
  CHECK(a.delivered == 2);
  const auto after = s.stalled.collect(1, default_timeout);
  REQUIRE(after.size() == 1);
  CHECK(after[0].payload == "after the stall");
  const auto healthy_after = s.healthy.collect(1, default_timeout);
  REQUIRE(healthy_after.size() == 1);
  CHECK(healthy_after[0].payload == "after the stall");
  check_daemon_serves(s.daemon, s.stalled);
}

}  // namespace keyway::itest
