// Lame duck (docs/protocol.md, Draining): on SIGTERM keywayd first sends every
// client a `draining` frame, serves on for server.lame_duck_grace (less once
// no client is left), then drains and closes. And the welcome lists the other
// servers of the deployment (server.advertise / --advertise).
#include <doctest/doctest.h>

#include <signal.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/numbered.hpp"

namespace keyway::itest {
namespace {

using test::numbered;

/// Reads until `c` gets a draining frame; other frames are kept back.
std::optional<draining_frame> await_draining(raw_client& c, ms timeout = default_timeout) {
  auto f = c.wait_for(
      [](const server_frame& x) { return std::holds_alternative<draining_frame>(x); }, timeout);
  if (!f) return std::nullopt;
  return std::get<draining_frame>(*f);
}

}  // namespace

TEST_CASE("lame duck: on SIGTERM every client gets draining before its connection closes") {
  for (const char* grace : {"0", "300ms"}) {
    CAPTURE(grace);
    keywayd_process d({"--workers", "2", "--lame-duck-grace", grace});
    // Four clients, so both workers have some (connections are dealt out in
    // turn); one of them subscribed.
    std::vector<raw_client> clients;
    for (int i = 0; i < 4; ++i)
      clients.push_back(open_client(d.url(), "client-" + std::to_string(i)));
    clients[0].subscribe(1, "lame.>");
    const auto code = d.stop(SIGTERM);
    INFO("daemon log:\n" << d.log());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    for (auto& c : clients) {
      std::vector<server_frame> seen;
      REQUIRE(c.wait_closed(default_timeout, &seen));
      // Exactly one draining, and nothing but a shuttingDown error after it.
      int drainings = 0;
      bool after = false;
      for (const auto& f : seen) {
        if (const auto* dr = std::get_if<draining_frame>(&f)) {
          ++drainings;
          after = true;
          CHECK(dr->grace_ms == (std::string(grace) == "0" ? 0u : 300u));
          CHECK(dr->reason.find("shutting down") != std::string::npos);
        } else if (const auto* e = std::get_if<error_frame>(&f)) {
          CHECK_MESSAGE(after, "an error before draining: " << describe(f));
          CHECK(e->code == proto::errc::shutting_down);
        } else {
          FAIL_CHECK("unexpected frame at shutdown: " << describe(f));
        }
      }
      CHECK(drainings == 1);
    }
    CHECK(d.log().find("lame duck") != std::string::npos);
  }
}

TEST_CASE(
    "lame duck: during the grace the server serves on, refuses new connections, and ends once "
    "clients left") {
  // A grace far longer than the test may take: the daemon must end it early,
  // when its last client leaves.
  keywayd_process d({"--workers", "2", "--lame-duck-grace", "10m"});
  raw_client sub = open_client(d.url(), "sub");
  raw_client pub = open_client(d.url(), "pub");
  raw_client late = raw_client::connect(d.url());  // connected, no hello yet
  sub.subscribe(1, "grace.>");
  ::kill(d.pid(), SIGTERM);
  // sub and pub sit on different workers: once both heard, both workers told
  // their clients, and worker 0 closed the listeners before it did.
  const auto told_sub = await_draining(sub);
  const auto told_pub = await_draining(pub);
  INFO("daemon log:\n" << d.log());
  REQUIRE(told_sub.has_value());
  REQUIRE(told_pub.has_value());
  CHECK(told_pub->grace_ms == 600'000);
  CHECK_THROWS_AS(raw_client::connect(d.url()), io_error);

  // Publishes are still read, routed, delivered and acknowledged.
  for (int i = 0; i < 50; ++i) {
    const ack_frame a = pub.publish_acked("grace.m", numbered("k", i), std::to_string(i));
    CHECK(a.delivered == 1);
  }
  pub.ping();
  const auto got = sub.collect(50, default_timeout);
  CHECK(got.size() == 50);
  sub.ping();

  // A handshake that completes during the grace: welcome, then draining.
  const welcome_frame w = late.hello("late");
  CHECK_FALSE(w.server_id.empty());
  const auto told_late = await_draining(late);
  CHECK(told_late.has_value());

  // Every client leaves: the grace ends, the drain runs, exit 0.
  sub.close();
  pub.close();
  late.close();
  const auto code = d.stop(SIGTERM, 20s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

TEST_CASE("welcome: connectUrls carries server.advertise, from the flags or the file") {
  SUBCASE("flags") {
    keywayd_process d(
        {"--advertise", "tcp://10.0.0.2:7400", "--advertise", "unix:///run/keyway/keyway.sock"});
    raw_client c = raw_client::connect(d.url());
    const welcome_frame w = c.hello("advertised");
    CHECK(w.connect_urls ==
          std::vector<std::string>{"tcp://10.0.0.2:7400", "unix:///run/keyway/keyway.sock"});
  }
  SUBCASE("config file, and a reload changes it for new connections") {
    temp_dir dir;
    const auto conf = dir.path() / "keyway.toml";
    std::ofstream(conf) << "[server]\nadvertise = [\"tcp://keyway-b.example:7400\"]\n"
                        << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    keywayd_process d({"--config", conf.string()});
    raw_client before = raw_client::connect(d.url());
    CHECK(before.hello("before").connect_urls ==
          std::vector<std::string>{"tcp://keyway-b.example:7400"});
    std::ofstream(conf)
        << "[server]\nadvertise = [\"tcp://[fd00::3]:7400\", \"tcp://10.0.0.3:7400\"]\n"
        << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    ::kill(d.pid(), SIGHUP);
    REQUIRE(d.wait_log("SIGHUP: reloaded", 5s));
    raw_client after = raw_client::connect(d.url());
    CHECK(after.hello("after").connect_urls ==
          std::vector<std::string>{"tcp://[fd00::3]:7400", "tcp://10.0.0.3:7400"});
  }
  SUBCASE("none configured: an empty list") {
    keywayd_process d;
    raw_client c = raw_client::connect(d.url());
    CHECK(c.hello("plain").connect_urls.empty());
  }
}

TEST_CASE(
    "welcome: a bad --advertise stops keywayd with a one-line error naming the key, the value and "
    "the rule") {
  CHECK_THROWS_WITH_AS(
      keywayd_process({"--advertise", "tcp://10.0.0.2"}, 5s),
      doctest::Contains(
          "command line: server.advertise[0] = \"tcp://10.0.0.2\" is not a client URL: "
          "missing :PORT; write tcp://HOST:PORT"),
      std::runtime_error);
}

}  // namespace keyway::itest
