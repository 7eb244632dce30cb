// keywayd with a [cluster] section, against a real etcd: what stops it from
// joining (etcd unreachable, its node id taken) is an error naming the cause,
// and a node alone in its cluster turns active and ready. Several nodes
// together: cluster_steady_test.cpp.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <climits>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/membership.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/etcd_process.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::test::child_process;
using keyway::test::etcd_process;
using keyway::test::temp_dir;

/// A free loopback port (bound and closed again).
std::uint16_t free_port() {
  const auto s = keyway::test::bind_loopback();
  ::close(s.fd);
  return s.port;
}

/// A config file for one node: loopback listener and admin on free ports,
/// etcd at `etcd`.
std::string write_config(const temp_dir& dir, const std::string& etcd, const std::string& node_id,
                         std::uint16_t admin_port = 0) {
  const auto path = (dir.path() / ("node-" + node_id + ".toml")).string();
  std::ofstream(path) << "[listen]\ntcp = [\"127.0.0.1:" << free_port() << "\"]\n"
                      << "[admin]\nlisten = \""
                      << (admin_port != 0 ? "127.0.0.1:" + std::to_string(admin_port) : "off")
                      << "\"\n[cluster]\nname = \"t\"\nnode_id = \"" << node_id << "\"\n"
                      << "peer_listen = \"tcp://127.0.0.1:" << free_port() << "\"\n"
                      << "etcd_endpoints = [\"" << etcd << "\"]\nlease_ttl = \"2s\"\n";
  return path;
}

}  // namespace

TEST_CASE("keywayd [cluster]: etcd unreachable at start is an error naming the endpoint") {
  temp_dir dir;
  const std::string etcd =
      "http://127.0.0.1:" + std::to_string(keyway::test::closed_loopback_port());
  child_process k({KEYWAYD_PATH, "--config", write_config(dir, etcd, "n1")});
  CHECK(k.wait(15s) == 1);
  const std::string err = k.err();
  INFO(err);
  CHECK(err.find("cannot join cluster \"t\"") != std::string::npos);
  CHECK(err.find("etcd") != std::string::npos);
  CHECK(err.find(etcd) != std::string::npos);
}

TEST_CASE(
    "keywayd [cluster]: alone in its cluster a node turns active and ready, and leaves on "
    "SIGTERM") {
  etcd_process etcd;
  temp_dir dir;
  const std::uint16_t admin = free_port();
  child_process k({KEYWAYD_PATH, "--config", write_config(dir, etcd.endpoint(), "n1", admin),
                   "--workers", "1"});
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  keyway::test::http_response ready;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      ready = keyway::test::http_get(admin, "/readyz");
      if (ready.status == 200) break;
    } catch (const std::runtime_error&) {  // not listening yet
    }
    std::this_thread::sleep_for(50ms);
  }
  INFO(k.err());
  REQUIRE(ready.status == 200);
  const auto status = keyway::test::http_get(admin, "/status");
  CHECK(status.body.find("\"cluster\":{\"name\":\"t\",\"node_id\":\"n1\",\"state\":\"active\"") !=
        std::string::npos);
  k.signal(SIGTERM);
  CHECK(k.wait(15s) == 0);
  CHECK(k.err().find("node \"n1\" left the cluster") != std::string::npos);
  // It left: the id is free again at once (no lease to wait out).
  keyway::cluster::membership_config cfg;
  cfg.cluster = "t";
  cfg.self.id = "n1";
  cfg.etcd_endpoints = {etcd.endpoint()};
  CHECK(keyway::cluster::check_join(cfg).has_value());
}

TEST_CASE("keywayd [cluster]: a node id another node holds is refused, naming that node") {
  etcd_process etcd;
  temp_dir dir;
  keyway::cluster::membership_config cfg;
  cfg.cluster = "t";
  cfg.self.id = "n1";
  cfg.self.peer_url = "tcp://127.0.0.1:7778";
  cfg.etcd_endpoints = {etcd.endpoint()};
  cfg.lease_ttl = 2s;
  keyway::cluster::membership holder(cfg);
  auto joined = holder.join();
  REQUIRE_MESSAGE(joined.has_value(), joined.error());

  child_process dup({KEYWAYD_PATH, "--config", write_config(dir, etcd.endpoint(), "n1")});
  CHECK(dup.wait(15s) == 1);
  const std::string err = dup.err();
  INFO(err);
  CHECK(err.find("node id \"n1\" is already registered in cluster \"t\"") != std::string::npos);
  CHECK(err.find("peer tcp://127.0.0.1:7778") != std::string::npos);
}
