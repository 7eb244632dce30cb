// The keyway CLI (KEYWAY_CLI_PATH) end to end against keywayd: the ready line
// on stderr, --count with {i} templating, --json output of every verb, --ack
// summaries, request/reply and the exit codes of req (0, 3 timeout, 4 no
// responders) and of a refused connection (1); --version, unknown commands,
// durations without a unit and --count 0 (exit 2); `keyway bench` in its four
// modes; and sub and reply riding through a restart of keywayd (or, with
// --no-reconnect, exiting 1). Every wait has a deadline.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <keyway/client.hpp>
#include "client/cli/format.hpp"

#include "tests/support/child_process.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/unit/client/test_daemon.hpp"

using namespace std::chrono_literals;
using keyway::test::child_process;
using keyway::test::start_daemon;
using keyway::test::stop_daemon;

namespace {

child_process keyway_cli(const std::string& url, std::vector<std::string> args) {
  args.insert(args.begin(), {KEYWAY_CLI_PATH, "--server", url});
  return child_process(std::move(args));
}

/// The CLI without --server (it needs none, or fails before connecting).
child_process keyway_bare(std::vector<std::string> args) {
  args.insert(args.begin(), KEYWAY_CLI_PATH);
  return child_process(std::move(args));
}

/// The JSON document `text` holds; a test failure (with the text) if none.
nlohmann::json json_of(const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    FAIL("not JSON (" << e.what() << "): " << text);
    return {};
  }
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(text.substr(start, nl - start));
  return lines;
}

}  // namespace

TEST_CASE("client cli: sub --json prints what pub --count sends") {
  auto d = start_daemon();
  {
    auto sub = keyway_cli(d->url(), {"sub", "cli.>", "--count", "3", "--json"});
    REQUIRE_MESSAGE(sub.wait_for_stderr("subscribed to cli.>", 10s), sub.err());

    auto pub = keyway_cli(d->url(), {"pub", "cli.x", "p{i}\"", "--count", "3", "--key", "k{i}"});
    CHECK(pub.wait(10s) == 0);
    CHECK(pub.err().find("published 3 messages to cli.x in ") != std::string::npos);

    REQUIRE(sub.wait(10s) == 0);
    const auto lines = lines_of(sub.out());
    REQUIRE(lines.size() == 3);
    for (int i = 0; i < 3; ++i) {
      const std::string& l = lines[static_cast<std::size_t>(i)];
      CAPTURE(l);
      const std::string n = std::to_string(i);
      CHECK(l.starts_with(R"({"subject":"cli.x","key":"k)" + n + R"(","payload":"p)" + n +
                          R"(\"","core":)"));
      CHECK(l.find(R"("seq":)") != std::string::npos);
      CHECK(l.ends_with(R"("reply_to":""})"));
    }
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: plain sub output and pub --ack summary") {
  auto d = start_daemon();
  {
    auto sub = keyway_cli(d->url(), {"sub", "plain.x", "--count", "1"});
    REQUIRE(sub.wait_for_stderr("subscribed to plain.x", 10s));
    auto pub = keyway_cli(d->url(), {"pub", "plain.x", "hello", "--key", "user-7", "--ack"});
    CHECK(pub.wait(10s) == 0);
    CHECK(pub.err().find("delivered to 1 subscriber") != std::string::npos);
    REQUIRE(sub.wait(10s) == 0);
    const auto lines = lines_of(sub.out());
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].starts_with("["));
    CHECK(lines[0].ends_with("] plain.x user-7: hello"));

    auto none = keyway_cli(d->url(), {"pub", "plain.nobody", "x", "--ack", "--count", "2"});
    CHECK(none.wait(10s) == 0);
    CHECK(none.err().find("acks: 2 ok, 0 deliveries in all, 0 failed") != std::string::npos);

    auto bad = keyway_cli(d->url(), {"pub", "wild.*", "x"});
    CHECK(bad.wait(10s) == 1);
    CHECK(bad.err().find("wildcard") != std::string::npos);
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: req and reply with their exit codes") {
  auto d = start_daemon();
  {
    auto reply = keyway_cli(d->url(), {"reply", "svc.cli", "--count", "2", "pong"});
    REQUIRE(reply.wait_for_stderr("subscribed to svc.cli", 10s));
    auto req = keyway_cli(d->url(), {"req", "svc.cli", "ping"});
    CHECK(req.wait(10s) == 0);
    CHECK(req.out() == "pong\n");
    auto keyed = keyway_cli(d->url(), {"req", "svc.cli", "again", "--key", "k", "--timeout", "5s"});
    CHECK(keyed.wait(10s) == 0);
    CHECK(keyed.out() == "pong\n");
    CHECK(reply.wait(10s) == 0);  // answered --count 2

    auto echo = keyway_cli(d->url(), {"reply", "svc.echo", "--count", "1"});
    REQUIRE(echo.wait_for_stderr("subscribed to svc.echo", 10s));
    auto echoed = keyway_cli(d->url(), {"req", "svc.echo", "same back"});
    CHECK(echoed.wait(10s) == 0);
    CHECK(echoed.out() == "same back\n");
    CHECK(echo.wait(10s) == 0);

    auto nobody = keyway_cli(d->url(), {"req", "svc.nobody", "x"});
    CHECK(nobody.wait(10s) == 4);
    CHECK(nobody.err().find("no responders for svc.nobody") != std::string::npos);

    auto quiet = keyway_cli(d->url(), {"sub", "svc.quiet"});
    REQUIRE(quiet.wait_for_stderr("subscribed to svc.quiet", 10s));
    const auto start = std::chrono::steady_clock::now();
    auto slow = keyway_cli(d->url(), {"req", "svc.quiet", "x", "--timeout", "300ms"});
    CHECK(slow.wait(10s) == 3);
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
    CHECK(slow.err().find("request to svc.quiet timed out after 300ms") != std::string::npos);
    quiet.signal(SIGTERM);
    CHECK(quiet.wait(10s) == 0);  // SIGTERM ends sub cleanly

    auto usage = keyway_cli(d->url(), {"req", "svc.cli", "--timeout", "soon"});
    CHECK(usage.wait(10s) == 2);
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: a refused connection is a clear error") {
  const std::string url = "tcp://127.0.0.1:" + std::to_string(keyway::test::closed_loopback_port());

  auto pub = keyway_cli(url, {"pub", "a.b", "x"});
  CHECK(pub.wait(10s) == 1);
  CHECK(pub.err().find("cannot connect to " + url) != std::string::npos);
  CHECK(pub.err().find("refused") != std::string::npos);

  auto bad_url = keyway_cli("localhost:7400", {"sub", "a"});
  CHECK(bad_url.wait(10s) == 2);
  CHECK(bad_url.err().find("tcp://HOST:PORT") != std::string::npos);
}

TEST_CASE("client cli: --version, version, and unknown or missing commands") {
  const std::string version(keyway::client::version());
  auto v = keyway_bare({"--version"});
  CHECK(v.wait(10s) == 0);
  CHECK(v.out() == "keyway " + version + "\n");

  auto plain = keyway_bare({"version"});
  CHECK(plain.wait(10s) == 0);
  CHECK(plain.out() == "keyway " + version + "\n");
  auto json = keyway_bare({"version", "--json"});
  CHECK(json.wait(10s) == 0);
  CHECK(json_of(json.out())["version"] == version);

  auto unknown = keyway_bare({"--server", "tcp://127.0.0.1:1", "frobnicate", "x"});
  CHECK(unknown.wait(10s) == 2);
  CHECK(unknown.err() ==
        "keyway: unknown command 'frobnicate'; commands: pub, sub, req, reply, bench, version\n");
  CHECK(unknown.out().empty());

  auto none = keyway_bare({"--server", "tcp://127.0.0.1:1"});
  CHECK(none.wait(10s) == 2);
  CHECK(none.err().find("no command given; commands: pub, sub, req, reply, bench, version") !=
        std::string::npos);
}

TEST_CASE("client cli: durations need a unit and counts start at 1") {
  // Checked before connecting: no daemon needed.
  const std::string nowhere =
      "tcp://127.0.0.1:" + std::to_string(keyway::test::closed_loopback_port());
  struct usage_case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<usage_case> cases{
      {{"req", "a.b", "--timeout", "5"},
       "keyway: --timeout: '5' has no unit; use e.g. 5ms, 5s, 1m\n"},
      {{"req", "a.b", "-t", "1.5"},
       "keyway: --timeout: '1.5' has no unit; use e.g. 1.5ms, 1.5s, 1m\n"},
      {{"req", "a.b", "--timeout", "0s"},
       "keyway: --timeout: '0s' is not positive; use e.g. 500ms, 2s, 1m\n"},
      {{"req", "a.b", "--timeout", "soon"},
       "keyway: --timeout: 'soon' is not a duration; use e.g. 500ms, 2s, 1m (units: us, ms, s, "
       "m)\n"},
      {{"pub", "a.b", "x", "--count", "2", "--buffer-wait", "30"},
       "keyway: --buffer-wait: '30' has no unit; use e.g. 30ms, 30s, 1m\n"},
      {{"bench", "sub", "--timeout", "10"},
       "keyway: --timeout: '10' has no unit; use e.g. 10ms, 10s, 1m\n"},
      {{"pub", "a.b", "x", "--count", "0"},
       "keyway: --count must be at least 1; leave it out to publish once\n"},
      {{"sub", "a.b", "-n", "0"},
       "keyway: --count must be at least 1; leave it out to receive until interrupted\n"},
      {{"reply", "a.b", "--count", "0"},
       "keyway: --count must be at least 1; leave it out to answer until interrupted\n"},
      {{"sub", "a.b", "--count", "ten"}, "keyway: --count: 'ten' is not a whole number\n"},
      {{"bench", "pub", "--msgs", "0"}, "keyway: --msgs must be at least 1\n"},
      {{"bench", "pub", "--sub", "2"},
       "keyway: bench: --sub: pub mode has no subscribers; use sub, queue or request mode\n"},
      {{"bench", "fast"}, "keyway: bench: unknown mode 'fast'; modes: pub, sub, queue, request\n"},
  };
  for (const usage_case& c : cases) {
    auto cli = keyway_cli(nowhere, c.args);
    CAPTURE(c.message);
    CHECK(cli.wait(10s) == 2);
    CHECK(cli.err() == c.message);
  }

  // The pure parser, with every unit.
  std::string problem;
  using std::chrono::milliseconds;
  CHECK(keyway::cli::parse_duration_flag("--t", "250us", problem) == milliseconds(1));
  CHECK(keyway::cli::parse_duration_flag("--t", "5ms", problem) == milliseconds(5));
  CHECK(keyway::cli::parse_duration_flag("--t", "1.5s", problem) == milliseconds(1500));
  CHECK(keyway::cli::parse_duration_flag("--t", "1m", problem) == milliseconds(60000));
  CHECK_FALSE(keyway::cli::parse_duration_flag("--t", "5", problem));
  CHECK(problem == "--t: '5' has no unit; use e.g. 5ms, 5s, 1m");
  CHECK_FALSE(keyway::cli::parse_duration_flag("--t", "", problem));
  CHECK_FALSE(keyway::cli::parse_duration_flag("--t", "2h", problem));
  CHECK(keyway::cli::parse_count_flag("--n", "7", 1, problem) == 7u);
  CHECK_FALSE(keyway::cli::parse_count_flag("--n", "-1", 1, problem));
  CHECK_FALSE(keyway::cli::parse_count_flag("--n", "99999999999999999999999", 1, problem));
  CHECK(problem == "--n: '99999999999999999999999' is too large");

  // With a unit, every duration flag is taken: the request then runs.
  auto d = start_daemon();
  {
    for (const char* t : {"500ms", "5s", "1m"}) {
      auto req = keyway_cli(d->url(), {"req", "dur.nobody", "x", "--timeout", t});
      CAPTURE(t);
      CHECK(req.wait(10s) == 4);  // no responders: the flag was accepted
    }
    auto pub = keyway_cli(d->url(), {"pub", "dur.x", "x", "--count", "2", "--buffer-wait", "5s"});
    CHECK(pub.wait(10s) == 0);
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: --json on pub, req and reply") {
  auto d = start_daemon();
  {
    auto reply = keyway_cli(d->url(), {"reply", "json.svc", "pong", "--count", "1", "--json"});
    REQUIRE(reply.wait_for_stderr("subscribed to json.svc", 10s));
    auto req = keyway_cli(d->url(), {"req", "json.svc", "ping \"1\"", "--key", "k1", "--json"});
    REQUIRE(req.wait(10s) == 0);
    const auto answer = json_of(req.out());
    CHECK(answer["payload"] == "pong");
    CHECK(answer["subject"].get<std::string>().starts_with("_INBOX."));
    CHECK(answer["rtt_ms"].is_number());
    CHECK(answer["rtt_ms"].get<double>() >= 0);
    CHECK(answer.contains("core"));
    CHECK(answer.contains("seq"));

    REQUIRE(reply.wait(10s) == 0);
    const auto served = lines_of(reply.out());
    REQUIRE(served.size() == 1);
    const auto request = json_of(served[0]);
    CHECK(request["subject"] == "json.svc");
    CHECK(request["key"] == "k1");
    CHECK(request["payload"] == "ping \"1\"");
    CHECK(request["answer"] == "pong");
    CHECK(request["reply_to"].get<std::string>().starts_with("_INBOX."));
    CHECK_FALSE(request.contains("error"));

    auto pub = keyway_cli(d->url(), {"pub", "json.x", "m{i}", "--count", "3", "--json"});
    REQUIRE(pub.wait(10s) == 0);
    const auto summary = json_of(pub.out());
    CHECK(summary["subject"] == "json.x");
    CHECK(summary["count"] == 3);
    CHECK(summary["published"] == 3);
    CHECK(summary["ack"] == false);
    CHECK(summary["lost"] == 0);
    CHECK(summary["ok"] == true);
    CHECK(summary["seconds"].is_number());
    CHECK(summary["msgs_per_sec"].is_number());
    CHECK_FALSE(summary.contains("acked"));
    CHECK(pub.err().empty());  // the human summary gives way to the JSON one

    auto acked = keyway_cli(d->url(), {"pub", "json.nobody", "x", "--ack", "--json"});
    REQUIRE(acked.wait(10s) == 0);
    const auto a = json_of(acked.out());
    CHECK(a["ack"] == true);
    CHECK(a["acked"] == 1);
    CHECK(a["delivered"] == 0);
    CHECK(a["failed"] == 0);

    auto refused = keyway_cli(d->url(), {"pub", "json.*", "x", "--json"});
    CHECK(refused.wait(10s) == 1);
    const auto r = json_of(refused.out());
    CHECK(r["ok"] == false);
    CHECK(r["published"] == 0);
    CHECK(r["error"].get<std::string>().find("wildcard") != std::string::npos);
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: bench in pub, sub, queue and request modes") {
  auto d = start_daemon();
  {
    auto run = [&](std::vector<std::string> args) {
      args.insert(args.begin(), "bench");
      auto b = keyway_cli(d->url(), args);
      const auto rc = b.wait(60s);
      INFO("stdout: " << b.out() << "\nstderr: " << b.err());
      CHECK(rc == 0);
      CHECK(b.err().empty());
      return json_of(b.out());
    };

    const auto pub = run({"pub", "--msgs", "2000", "--pub", "2", "--json"});
    CHECK(pub["mode"] == "pub");
    CHECK(pub["msgs"] == 2000);
    CHECK(pub["ok"] == true);
    CHECK(pub["shortfall"] == 0);
    CHECK(pub["pub"]["msgs"] == 2000);
    CHECK(pub["pub"]["bytes"] == 2000 * 128);
    CHECK(pub["pub"]["clients"] == 2);
    CHECK(pub["pub"]["members"].size() == 2);
    CHECK(pub["pub"]["msgs_per_sec"].get<double>() > 0);
    CHECK_FALSE(pub.contains("sub"));
    CHECK_FALSE(pub.contains("latency_us"));

    const auto acked = run({"pub", "--msgs", "2000", "--ack", "--size", "16", "--json"});
    CHECK(acked["pub"]["msgs"] == 2000);
    CHECK(acked["latency_us"]["count"] == 2000);
    CHECK(acked["latency_us"]["p50"].get<double>() <= acked["latency_us"]["p99"].get<double>());

    const auto sub = run({"sub", "--msgs", "2000", "--pub", "2", "--sub", "2", "--json"});
    CHECK(sub["ok"] == true);
    CHECK(sub["pub"]["msgs"] == 2000);
    CHECK(sub["sub"]["clients"] == 2);
    CHECK(sub["sub"]["msgs"] == 4000);  // every subscriber gets every message
    CHECK(sub["sub"]["expected"] == 4000);
    for (const auto& m : sub["sub"]["members"]) {
      CHECK(m["msgs"] == 2000);
      CHECK(m["expected"] == 2000);
    }

    const auto queue =
        run({"queue", "--msgs", "2000", "--sub", "3", "--key-space", "16", "--json"});
    CHECK(queue["ok"] == true);
    CHECK(queue["sub"]["msgs"] == 2000);  // each message reached one member of the group
    std::uint64_t sum = 0;
    for (const auto& m : queue["sub"]["members"]) sum += m["msgs"].get<std::uint64_t>();
    CHECK(sum == 2000);

    const auto request = run({"request", "--msgs", "2000", "--pub", "2", "--sub", "2", "--json"});
    CHECK(request["ok"] == true);
    CHECK(request["pub"]["msgs"] == 2000);  // replies received
    CHECK(request["sub"]["msgs"] == 2000);  // requests answered
    const auto& lat = request["latency_us"];
    CHECK(lat["count"] == 2000);
    CHECK(lat["p50"].get<double>() > 0);
    CHECK(lat["p50"].get<double>() <= lat["p90"].get<double>());
    CHECK(lat["p90"].get<double>() <= lat["p99"].get<double>());
    CHECK(lat["p99"].get<double>() <= lat["max"].get<double>());

    // The text report: a header line, then one line per role.
    auto text = keyway_cli(d->url(), {"bench", "sub", "--msgs", "2000"});
    REQUIRE(text.wait(60s) == 0);
    const auto lines = lines_of(text.out());
    REQUIRE(lines.size() == 3);
    CHECK(lines[0].starts_with("keyway bench sub: 2000 msgs of 128 bytes to bench."));
    CHECK(lines[1].starts_with("pub "));
    CHECK(lines[1].find(" 2000 msgs in ") != std::string::npos);
    CHECK(lines[1].find("msgs/s") != std::string::npos);
    CHECK(lines[1].find("MB/s") != std::string::npos);
    CHECK(lines[2].starts_with("sub "));
    CHECK(lines[2].find(" 2000/2000 msgs in ") != std::string::npos);
  }
  stop_daemon(*d);
}

namespace {

/// Publishes "after-<n>" to `subject` with --ack, one process each, until
/// `wanted` of them were delivered to a subscriber (the ones before the
/// subscription is back reach nobody and are not counted). Returns the
/// payloads delivered, in order; bounded in attempts and time.
std::vector<std::string> publish_until_delivered(const std::string& url, const std::string& subject,
                                                 std::size_t wanted) {
  std::vector<std::string> delivered;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  for (int n = 0;
       n < 300 && delivered.size() < wanted && std::chrono::steady_clock::now() < deadline; ++n) {
    const std::string payload = "after-" + std::to_string(n);
    auto pub = keyway_cli(url, {"pub", subject, payload, "--ack"});
    const auto rc = pub.wait(15s);
    if (rc == 0 && pub.err().find("delivered to 1 subscriber") != std::string::npos)
      delivered.push_back(payload);
    else
      std::this_thread::sleep_for(50ms);  // the daemon or the subscription is not back yet
  }
  return delivered;
}

bool wait_lines(const child_process& p, std::size_t n, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (lines_of(p.out()).size() < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("client cli: sub and reply ride through a restart of keywayd") {
  auto d = start_daemon();
  const std::string url = d->url();
  {
    auto sub = keyway_cli(url, {"sub", "ride.x", "--count", "10"});
    REQUIRE_MESSAGE(sub.wait_for_stderr("subscribed to ride.x", 10s), sub.err());
    auto reply = keyway_cli(url, {"reply", "ride.svc", "--count", "2"});
    REQUIRE_MESSAGE(reply.wait_for_stderr("subscribed to ride.svc", 10s), reply.err());

    auto before = keyway_cli(url, {"pub", "ride.x", "before-{i}", "--count", "3"});
    CHECK(before.wait(10s) == 0);
    auto one = keyway_cli(url, {"req", "ride.svc", "one"});
    CHECK(one.wait(10s) == 0);
    CHECK(one.out() == "one\n");
    REQUIRE_MESSAGE(wait_lines(sub, 3, 10s), sub.out());

    keyway::test::restart_daemon(d);
    REQUIRE(d->url() == url);

    const auto after = publish_until_delivered(url, "ride.x", 7);
    REQUIRE(after.size() == 7);
    const auto rc = sub.wait(15s);
    INFO("sub stdout:\n" << sub.out() << "sub stderr:\n" << sub.err());
    CHECK(rc == 0);
    const auto lines = lines_of(sub.out());
    REQUIRE(lines.size() == 10);
    for (std::size_t i = 0; i < 10; ++i) {
      const std::string want = i < 3 ? "before-" + std::to_string(i) : after[i - 3];
      CAPTURE(i);
      CHECK(lines[i].ends_with("] ride.x: " + want));
    }
    CHECK(sub.err().find("keyway: disconnected from " + url + " (") != std::string::npos);
    CHECK(sub.err().find("); reconnecting\n") != std::string::npos);
    CHECK(sub.err().find("keyway: reconnected to " + url + "\n") != std::string::npos);

    // reply is back too: requests to it are answered again (a few may find
    // no responder while its subscription is being restored).
    int two_rc = -1;
    std::string two_out;
    for (int attempt = 0; attempt < 100 && two_rc != 0; ++attempt) {
      auto two = keyway_cli(url, {"req", "ride.svc", "two"});
      two_rc = two.wait(10s).value_or(-1);
      two_out = two.out();
      if (two_rc != 0) std::this_thread::sleep_for(50ms);
    }
    CHECK(two_rc == 0);
    CHECK(two_out == "two\n");
    CHECK(reply.wait(10s) == 0);
    CHECK(reply.err().find("keyway: reconnected to " + url) != std::string::npos);
  }
  stop_daemon(*d);
}

TEST_CASE("client cli: with --no-reconnect, sub exits 1 when keywayd stops") {
  auto d = start_daemon();
  const std::string url = d->url();
  auto sub = keyway_cli(url, {"sub", "gone.x", "--no-reconnect"});
  REQUIRE(sub.wait_for_stderr("subscribed to gone.x", 10s));
  auto reply = keyway_cli(url, {"reply", "gone.svc", "--no-reconnect"});
  REQUIRE(reply.wait_for_stderr("subscribed to gone.svc", 10s));
  stop_daemon(*d);
  CHECK(sub.wait(15s) == 1);
  CHECK(sub.err().find("keyway: lost the connection to " + url) != std::string::npos);
  CHECK(sub.err().find("not reconnecting (--no-reconnect)") != std::string::npos);
  CHECK(sub.err().find("reconnecting\n") == std::string::npos);
  CHECK(reply.wait(15s) == 1);
  CHECK(reply.err().find("keyway: lost the connection to " + url) != std::string::npos);
}
