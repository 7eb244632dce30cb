// Operations: the admin HTTP endpoints (/metrics, /livez, /readyz, /healthz,
// /status), token auth and its reload on SIGHUP, reload refusals, the
// systemd notify protocol (a test socket plays the service manager) and
// socket activation (a pre-bound socket passed as fd 3).
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"

namespace keyway::itest {
namespace {

using test::child_process;
using test::http_get;

raw_client hello_with_token(const std::string& url, std::string_view token) {
  raw_client c = raw_client::connect(url);
  proto::hello_fields h;
  h.client_name = "token-test";
  h.auth_token = token;
  c.queue_hello(h);
  c.flush();
  return c;
}

bool welcomed(raw_client& c) {
  auto f = c.read(default_timeout);
  return f && std::holds_alternative<welcome_frame>(*f);
}

/// The service manager's end of NOTIFY_SOCKET: a datagram socket at a path.
class notify_socket {
 public:
  explicit notify_socket(const std::filesystem::path& path) : path_(path.string()) {
    fd_ = keyway::test::bind_unix(path_, SOCK_DGRAM);
  }
  ~notify_socket() { ::close(fd_); }
  const std::string& path() const { return path_; }
  /// Waits for a datagram containing `needle`; returns every datagram seen.
  bool wait_for(const std::string& needle, ms timeout, std::vector<std::string>* seen = nullptr) {
    const auto deadline = steady::now() + timeout;
    while (steady::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) continue;
      std::string msg(buf, static_cast<std::size_t>(n));
      if (seen) seen->push_back(msg);
      if (msg.find(needle) != std::string::npos) return true;
    }
    return false;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace

TEST_CASE("admin: livez readyz healthz and status answer while serving") {
  keywayd_process d({"--workers", "2"});
  REQUIRE_FALSE(d.admin_url().empty());
  const auto port = d.admin_port();
  CHECK(http_get(port, "/livez").status == 200);
  CHECK(http_get(port, "/readyz").status == 200);
  CHECK(http_get(port, "/healthz").status == 200);
  const auto verbose = http_get(port, "/readyz?verbose");
  CHECK(verbose.status == 200);
  CHECK(verbose.body.find("[+]worker 1 making progress") != std::string::npos);
  CHECK(http_get(port, "/nope").status == 404);
  CHECK(http_get(port, "/metrics", default_timeout, "POST").status == 405);

  raw_client a = open_client(d.url(), "a");
  raw_client b = open_client(d.url(), "b");
  a.subscribe(1, "ops.>");
  a.subscribe(2, "other");
  const auto st = http_get(port, "/status");
  CHECK(st.status == 200);
  CHECK(st.header("Content-Type") == "application/json");
  const auto j = nlohmann::json::parse(st.body);
  CHECK(j["version"] == KEYWAY_TEST_VERSION);
  CHECK(j["phase"] == "serving");
  CHECK(j["workers"].size() == 2);
  CHECK(j["connections"] == 2);
  CHECK(j["subscriptions"].get<int>() == 2);
  CHECK(j["listeners"][0] == d.url());
  CHECK(j["uptime_seconds"].get<double>() >= 0.0);
  int per_worker = 0;
  for (const auto& w : j["workers"]) per_worker += w["connections"].get<int>();
  CHECK(per_worker == 2);
}

TEST_CASE("admin: metrics count what was published and delivered") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  raw_client pub = open_client(d.url(), "pub");
  sub.subscribe(1, "m.>");
  constexpr int n = 500;
  for (int i = 0; i < n; ++i) pub.publish("m.x", std::string("k").append(std::to_string(i)), "p");
  pub.ping();
  REQUIRE(sub.collect(n, 10s).size() == n);
  (void)pub.publish_acked("m.acked", "k", "x");  // one more, acknowledged (m.> matches it)
  sub.collect(1, 5s);
  // Seven that no subscription matches: dropped at ingress, not routed.
  for (int i = 0; i < 7; ++i) pub.publish("nobody.listens", "k", "p");
  CHECK(pub.publish_acked("nobody.acked", "k", "x").delivered ==
        0);  // with an ack: routed, reaches 0
  pub.ping();
  raw_client bad = raw_client::connect(d.url());
  bad.send_hello(0, "unset-version");  // refused (a newer version would be negotiated down)
  bad.wait_closed(5s);

  // keywayd counts the refused connection out right after it shuts the
  // socket, which the client may see first: wait for the gauge.
  auto r = http_get(d.admin_port(), "/metrics");
  for (const auto end = steady::now() + 5s;
       r.body.find("keyway_connections{transport=\"tcp\"} 2") == std::string::npos &&
       steady::now() < end;) {
    std::this_thread::sleep_for(10ms);
    r = http_get(d.admin_port(), "/metrics");
  }
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  const std::string& m = r.body;
  CHECK(metric_sum(m, "keyway_messages_received_total") == n + 1 + 7 + 1);
  CHECK(metric_sum(m, "keyway_messages_routed_total") == n + 1 + 1);
  CHECK(metric_sum(m, "keyway_messages_unmatched_total") == 7);
  CHECK(metric_sum(m, "keyway_messages_delivered_total") == n + 1);
  CHECK(metric_sum(m, "keyway_delivery_latency_seconds_count") == n + 1);
  CHECK(metric_sum(m, "keyway_acks_sent_total") == 3);  // the subscribe and the two acked publishes
  CHECK(m.find("keyway_errors_total{code=\"unsupported_version\"} 1") != std::string::npos);
  CHECK(m.find("keyway_connections{transport=\"tcp\"} 2") != std::string::npos);
  CHECK(metric_sum(m, "keyway_connections_accepted_total") == 3);
  CHECK(metric_sum(m, "keyway_received_bytes_total") > 0);
  CHECK(m.find("keyway_build_info{version=\"" KEYWAY_TEST_VERSION "\"} 1") != std::string::npos);
  CHECK(m.find("\nprocess_cpu_seconds_total ") != std::string::npos);
  CHECK(metric_sum(m, "process_resident_memory_bytes") > 1e6);
  CHECK(metric_sum(m, "process_start_time_seconds") > 1.7e9);
  CHECK(metric_sum(m, "process_open_fds") > 3);
  CHECK(m.find("# TYPE keyway_delivery_latency_seconds histogram") != std::string::npos);
  // Labels never carry a subject or a key.
  CHECK(m.find("m.x") == std::string::npos);
}

TEST_CASE("admin: readyz turns 503 while draining") {
  // A subscriber that never reads keeps the drain waiting (up to its timeout).
  keywayd_process d({"--workers", "2", "--drain-timeout", "3s", "--max-pending-bytes", "67108864"});
  raw_client stuck = raw_client::connect(d.url(), 4096);
  (void)stuck.hello("stuck");
  stuck.subscribe(1, "flood");
  raw_client pub = open_client(d.url(), "pub");
  const std::string payload(60000, 'x');
  for (int i = 0; i < 200; ++i) pub.publish("flood", "k", payload);
  pub.ping(20s);
  REQUIRE(http_get(d.admin_port(), "/readyz").status == 200);
  ::kill(d.pid(), SIGTERM);
  REQUIRE(d.wait_log("stopped accepting", 5s));  // logged once /readyz turned
  const auto r = http_get(d.admin_port(), "/readyz?verbose");
  CHECK(r.status == 503);
  CHECK(r.body.find("[-]phase draining") != std::string::npos);
  CHECK(http_get(d.admin_port(), "/livez").status == 200);
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

TEST_CASE("auth: right wrong and missing tokens and a reload that changes them") {
  temp_dir dir;
  const auto tokens = dir.path() / "tokens";
  std::ofstream(tokens) << "# comment\n  alpha-secret  \n\nbeta-secret\n";
  const auto conf = dir.path() / "keyway.toml";
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                      << "[auth]\ntokens_file = \"" << tokens.string() << "\"\n";
  keywayd_process d({"--config", conf.string()});

  raw_client right = hello_with_token(d.url(), "beta-secret");
  CHECK(welcomed(right));
  for (const char* bad : {"beta-secre", "beta-secretX", "", "alpha"}) {
    CAPTURE(bad);
    raw_client c = hello_with_token(d.url(), bad);
    std::vector<server_frame> seen;
    CHECK(c.wait_closed(5s, &seen));
    REQUIRE(seen.size() == 1);
    const auto* e = std::get_if<error_frame>(&seen[0]);
    REQUIRE(e != nullptr);
    CHECK(e->code == proto::errc::auth_failed);
    CHECK(e->message.find(*bad ? "not one this server accepts" : "no auth token") !=
          std::string::npos);
  }

  std::ofstream(tokens) << "gamma-secret\n";
  ::kill(d.pid(), SIGHUP);
  REQUIRE(d.wait_log("SIGHUP: reloaded", 5s));
  raw_client old_token = hello_with_token(d.url(), "alpha-secret");
  CHECK(old_token.wait_closed(5s));
  raw_client new_token = hello_with_token(d.url(), "gamma-secret");
  CHECK(welcomed(new_token));
  // A connection authenticated before the reload stays open.
  right.ping();
  const auto m = http_get(d.admin_port(), "/metrics").body;
  CHECK(metric_sum(m, "keyway_auth_failures_total") == 5);
}

TEST_CASE("reload: a listener change is refused and the old config stays") {
  temp_dir dir;
  const auto conf = dir.path() / "keyway.toml";
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                      << "[limits]\nmax_subscriptions = 1\n";
  keywayd_process d({"--config", conf.string()});
  raw_client c = open_client(d.url(), "c");
  c.subscribe(1, "a");
  c.queue_subscribe({2, "b", {}, 77});
  c.flush();
  CHECK(c.await_error().code == proto::errc::too_many_subscriptions);

  // A live change: the limit goes up without a restart.
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                      << "[limits]\nmax_subscriptions = 5\n";
  ::kill(d.pid(), SIGHUP);
  REQUIRE(d.wait_log("SIGHUP: reloaded", 5s));
  c.subscribe(2, "b");

  // A change that cannot apply live is refused, naming the key.
  std::ofstream(conf)
      << "[listen]\ntcp = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
      << "[limits]\nmax_subscriptions = 1\n";
  ::kill(d.pid(), SIGHUP);
  REQUIRE(d.wait_log("cannot change while keywayd runs", 5s));
  CHECK(d.log().find("listen cannot change") != std::string::npos);
  c.subscribe(3, "c");  // still 5: the refused file changed nothing

  // A broken file is refused too, with the problem.
  std::ofstream(conf) << "[limits]\nmax_subscriptions = \"many\"\n";
  ::kill(d.pid(), SIGHUP);
  REQUIRE(d.wait_log("was not reloaded", 5s));
  CHECK(d.wait_log("limits.max_subscriptions", 5s));
  c.subscribe(4, "d");
  check_daemon_serves(d, c);
}

TEST_CASE("reload: turning the idle timeout off keeps open connections open") {
  temp_dir dir;
  const auto conf = dir.path() / "keyway.toml";
  const std::string base = "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
  std::ofstream(conf) << base << "[limits]\nidle_timeout = \"600ms\"\n";
  keywayd_process d({"--config", conf.string()});
  raw_client c = open_client(d.url(), "c");  // its idle timer is armed for 600 ms
  std::ofstream(conf) << base << "[limits]\nidle_timeout = 0\n";
  ::kill(d.pid(), SIGHUP);
  REQUIRE(d.wait_log("SIGHUP: reloaded", 5s));
  std::this_thread::sleep_for(1200ms);  // two of the old periods, nothing sent
  c.ping();
  CHECK(d.log().find("idle_timeout") == std::string::npos);
  check_daemon_serves(d, c);
}

TEST_CASE("systemd: READY then RELOADING and READY on SIGHUP then STOPPING with watchdog pings") {
  temp_dir dir;
  notify_socket manager(dir.path() / "notify");
  const auto conf = dir.path() / "keyway.toml";
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
  keywayd_process d({"--config", conf.string()}, 10s,
                    {{"NOTIFY_SOCKET=" + manager.path(), "WATCHDOG_USEC=400000"}, -1});
  std::vector<std::string> seen;
  CHECK(manager.wait_for("READY=1", 5s, &seen));
  CHECK(seen.back().find("STATUS=serving on " + d.url()) != std::string::npos);
  CHECK(manager.wait_for("WATCHDOG=1", 3s));
  CHECK(manager.wait_for("WATCHDOG=1", 3s));
  ::kill(d.pid(), SIGHUP);
  seen.clear();
  CHECK(manager.wait_for("RELOADING=1", 5s, &seen));
  CHECK(seen.back().find("MONOTONIC_USEC=") != std::string::npos);
  CHECK(manager.wait_for("READY=1", 5s));
  ::kill(d.pid(), SIGTERM);
  CHECK(manager.wait_for("STOPPING=1", 5s));
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

TEST_CASE("systemd: a socket passed with LISTEN_FDS is adopted instead of binding") {
  const auto [fd, port] = keyway::test::bind_loopback();
  REQUIRE(::listen(fd, 64) == 0);
  const std::string url = "tcp://127.0.0.1:" + std::to_string(port);
  keywayd_process d({"--workers", "2"}, 10s, {{}, fd});
  ::close(fd);
  REQUIRE(d.addresses().size() == 1);
  CHECK(d.addresses()[0] == url);
  CHECK(d.log().find("(from systemd)") != std::string::npos);
  raw_client a = open_client(url, "a");
  raw_client b = open_client(url, "b");
  check_round_trip(a, b);
}

}  // namespace keyway::itest

namespace keyway::itest {

TEST_CASE("systemd: a Unix socket passed with LISTEN_FDS is adopted") {
  temp_dir dir;
  const std::string path = (dir.path() / "act.sock").string();
  const int fd = keyway::test::bind_unix(path);
  REQUIRE(::listen(fd, 64) == 0);
  keywayd_process d({"--workers", "2"}, 10s, {{}, fd});
  ::close(fd);
  REQUIRE(d.addresses().size() == 1);
  CHECK(d.addresses()[0] == "unix://" + path);
  raw_client a = open_client("unix://" + path, "a");
  raw_client b = open_client("unix://" + path, "b");
  check_round_trip(a, b);
}

TEST_CASE("config: flags override the file and check-config reports every problem") {
  temp_dir dir;
  const auto conf = dir.path() / "keyway.toml";
  const std::string sock = (dir.path() / "k.sock").string();
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\nunix = [\"" << sock
                      << "\"]\nunix_socket_mode = \"0600\"\n"
                      << "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_subscriptions = 1\n";
  {
    child_process check({KEYWAYD_PATH, "--check-config", "--config", conf.string()});
    CHECK(check.wait(10s) == 0);
    CHECK(check.out().find("configuration is valid") != std::string::npos);
  }
  keywayd_process d({"--config", conf.string(), "--max-subscriptions", "3"});
  struct stat st {};
  REQUIRE(::stat(sock.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  raw_client c = open_client(d.url(), "c");
  c.subscribe(1, "a");
  c.subscribe(2, "b");
  c.subscribe(3, "c");  // the flag's 3, not the file's 1
  c.queue_subscribe({4, "d", {}, 99});
  c.flush();
  const error_frame e = c.await_error();
  CHECK(e.code == proto::errc::too_many_subscriptions);
  CHECK(e.message.find("limits.max_subscriptions is 3") != std::string::npos);

  const auto bad = dir.path() / "bad.toml";
  std::ofstream(bad) << "[server]\nwrokers = 2\n[limits]\nmax_payload = 0\n";
  child_process check({KEYWAYD_PATH, "--check-config", "--config", bad.string()});
  CHECK(check.wait(10s) == 2);
  const std::string err = check.err();
  INFO(err);
  CHECK(err.find("unknown key server.wrokers") != std::string::npos);
  CHECK(err.find("limits.max_payload = 0 is out of range") != std::string::npos);
  CHECK(err.find(bad.string()) != std::string::npos);

  // Checks of the machine run on a file that parses: a missing directory.
  const auto nodir = dir.path() / "nodir.toml";
  std::ofstream(nodir) << "[listen]\nunix = [\"/nonexistent-dir/k.sock\"]\n";
  child_process check2({KEYWAYD_PATH, "--check-config", "--config", nodir.string()});
  CHECK(check2.wait(10s) == 2);
  CHECK(check2.err().find("directory /nonexistent-dir does not exist") != std::string::npos);

  // Flags get the file's checks: ranges and units, every problem reported.
  child_process check3({KEYWAYD_PATH, "--check-config", "--max-payload", "100000000",
                        "--max-connections", "-1", "--idle-timeout", "5x"});
  CHECK(check3.wait(10s) == 2);
  const std::string err3 = check3.err();
  INFO(err3);
  CHECK(err3.find("command line: limits.max_payload = 100000000 is out of range; allowed "
                  "1..67108864 bytes") != std::string::npos);
  CHECK(err3.find("limits.max_connections = -1 is out of range") != std::string::npos);
  CHECK(err3.find("\"5x\" is not a duration") != std::string::npos);
}

TEST_CASE("config: check-config validates [cluster] offline") {
  temp_dir dir;
  const auto bad = dir.path() / "bad.toml";
  std::ofstream(bad) << "[cluster]\nnode_id = \"a b\"\nlease_ttl = \"1s\"\n"
                     << "etcd_endpoints = [\"https://127.0.0.1:2379\"]\n";
  child_process check({KEYWAYD_PATH, "--check-config", "--config", bad.string()});
  CHECK(check.wait(10s) == 2);
  const std::string err = check.err();
  INFO(err);
  CHECK(err.find("cluster.node_id = \"a b\"") != std::string::npos);
  CHECK(err.find("cluster.lease_ttl = \"1s\" is out of range; allowed 2s..10m") !=
        std::string::npos);
  CHECK(err.find("cluster.etcd_endpoints[0]") != std::string::npos);

  const auto good = dir.path() / "good.toml";
  std::ofstream(good) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n"
                      << "[cluster]\nnode_id = \"n1\"\n";
  child_process ok({KEYWAYD_PATH, "--check-config", "--config", good.string()});
  CHECK(ok.wait(10s) == 0);
  CHECK(ok.out().find("configuration is valid") != std::string::npos);
  // Starting it is tested against a real etcd in tests/cluster/keywayd_node_test.cpp.
}

TEST_CASE("config: a usage error exits 2 with CLI11's message, --help exits 0") {
  child_process bogus({KEYWAYD_PATH, "--bogus"});
  CHECK(bogus.wait(10s) == 2);
  INFO(bogus.err());
  CHECK(bogus.err().find("--bogus") != std::string::npos);

  child_process bad_choice({KEYWAYD_PATH, "--check-config", "--partitioner", "modulo"});
  CHECK(bad_choice.wait(10s) == 2);

  child_process help({KEYWAYD_PATH, "--help"});
  CHECK(help.wait(10s) == 0);
  CHECK(help.out().find("--partitioner") != std::string::npos);
}

TEST_CASE("config: --partitioner range is accepted with the file's split points, as in the file") {
  temp_dir dir;
  const auto conf = dir.path() / "keyway.toml";
  std::ofstream(conf) << "[routing]\npartitioner = \"range\"\nsplit_points = [\"m\"]\n";
  child_process with_flag(
      {KEYWAYD_PATH, "--check-config", "--config", conf.string(), "--partitioner", "range"});
  CHECK(with_flag.wait(10s) == 0);
  // Without split points the flag gets the file's rule.
  child_process no_points({KEYWAYD_PATH, "--check-config", "--partitioner", "range"});
  CHECK(no_points.wait(10s) == 2);
  INFO(no_points.err());
  CHECK(no_points.err().find("needs routing.split_points") != std::string::npos);
}

}  // namespace keyway::itest
