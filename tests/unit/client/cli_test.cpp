// The keyway CLI (KEYWAY_CLI_PATH) end to end against keywayd: the ready line
// on stderr, --count with {i} templating, --json output, --ack summaries,
// request/reply and the exit codes of req (0, 3 timeout, 4 no responders)
// and of a refused connection (1). Every wait has a deadline.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

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
