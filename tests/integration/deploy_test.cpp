// The deploy kit against the real tools: systemd-analyze verify on the units,
// promtool on the alert rules and on keywayd's /metrics, and a real
// Prometheus server scraping a running keywayd, read back through its query
// API. Each tool is the Debian package's (scripts/deps.sh installs them).
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/integration/itest.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"

namespace keyway::itest {
namespace {

using test::child_process;
using test::http_get;

/// Runs a command line through sh; returns {exit code, stdout + stderr}.
std::pair<int, std::string> run(const std::string& command, ms timeout = 60s) {
  child_process p({"/bin/sh", "-c", command});
  const auto code = p.wait(timeout);
  return {code.value_or(-1), p.out() + p.err()};
}

}  // namespace

TEST_CASE("deploy: systemd-analyze verify passes on the units") {
  const std::string dir = KEYWAY_TEST_UNITS_DIR;
  const auto [code, out] = run("systemd-analyze verify " + dir + "/keyway.service " + dir + "/keyway.socket 2>&1");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("keyway.service") == std::string::npos);  // no complaint names our units
}

TEST_CASE("deploy: promtool checks the alert rules and runs their unit tests") {
  const std::string dir = std::string(KEYWAY_SOURCE_DIR) + "/deploy/prometheus";
  auto [code, out] = run("cd " + dir + " && promtool check rules alerts.yml && promtool test rules alerts_test.yml");
  INFO(out);
  CHECK(code == 0);
  std::tie(code, out) = run("cd " + dir + " && promtool check config prometheus.yml");
  INFO(out);
  CHECK(code == 0);
}

TEST_CASE("deploy: a real Prometheus scrapes keywayd and promtool accepts its metrics") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  raw_client pub = open_client(d.url(), "pub");
  sub.subscribe(1, "prom.>");
  constexpr int n = 1234;
  for (int i = 0; i < n; ++i) pub.publish("prom.x", std::string("k").append(std::to_string(i % 50)), "payload");
  pub.ping();
  REQUIRE(sub.collect(n, 10s).size() == n);

  temp_dir dir;
  {
    const auto r = http_get(d.admin_port(), "/metrics");
    REQUIRE(r.status == 200);
    std::ofstream(dir.path() / "metrics.txt") << r.body;
  }
  auto [code, out] = run("promtool check metrics < " + (dir.path() / "metrics.txt").string());
  INFO("promtool check metrics: " << out);
  CHECK(code == 0);

  const std::uint16_t port = keyway::test::closed_loopback_port();
  std::ofstream(dir.path() / "prometheus.yml")
      << "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keyway\n    static_configs:\n"
      << "      - targets: [\"127.0.0.1:" << d.admin_port() << "\"]\n";
  child_process prom({"/usr/bin/prometheus", "--config.file=" + (dir.path() / "prometheus.yml").string(),
                      "--storage.tsdb.path=" + (dir.path() / "data").string(),
                      "--web.listen-address=127.0.0.1:" + std::to_string(port)});
  // Ask until the scraped sum shows every publish (bounded: 60 s).
  double seen = -1;
  std::string last;
  const auto deadline = steady::now() + 60s;
  while (steady::now() < deadline && seen != n) {
    std::this_thread::sleep_for(500ms);
    try {
      const auto r = http_get(port, "/api/v1/query?query=sum(keyway_messages_received_total)", 5s);
      last = r.body;
      if (r.status != 200) continue;
      const auto j = nlohmann::json::parse(r.body);
      if (j["status"] == "success" && !j["data"]["result"].empty())
        seen = std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
    } catch (const std::exception& e) {
      last = e.what();  // Prometheus still starting
    }
  }
  INFO("last answer: " << last << "\nprometheus stderr:\n" << prom.err());
  CHECK(seen == n);
  const auto up = http_get(port, "/api/v1/query?query=up%7Bjob%3D%22keyway%22%7D", 5s);
  CHECK(up.body.find("\"value\":[") != std::string::npos);
  CHECK(up.body.find("\"1\"]") != std::string::npos);
  prom.signal(SIGTERM);
  CHECK(prom.wait(20s).has_value());
}

}  // namespace keyway::itest
