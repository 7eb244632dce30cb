// The cluster fixture itself (tests/support/keyway_cluster.hpp): the config
// it writes for a node passes keywayd's own check, and a node that cannot
// start makes the fixture throw an error that names the node and carries
// its config and log.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "tests/support/child_process.hpp"
#include "tests/support/keyway_cluster.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::test::child_process;
using keyway::test::closed_loopback_port;
using keyway::test::cluster_node_config;
using keyway::test::cluster_options;
using keyway::test::keyway_cluster;
using keyway::test::temp_dir;

}  // namespace

TEST_CASE("cluster harness: keywayd --check-config accepts the config written for a node") {
  temp_dir dir;
  cluster_node_config c;
  c.id = "n1";
  c.tcp_port = closed_loopback_port();
  c.admin_port = closed_loopback_port();
  c.peer_port = closed_loopback_port();
  c.unix_path = (dir.path() / "kw-n1.sock").string();
  c.etcd_endpoints = {"http://127.0.0.1:" + std::to_string(closed_loopback_port())};
  const std::string path = (dir.path() / "node-n1.toml").string();
  c.write(path);
  INFO("config:\n" << c.toml());
  child_process k({KEYWAYD_PATH, "--config", path, "--workers", "1", "--check-config"});
  const auto code = k.wait(15s);
  INFO("stdout: " << k.out() << "\nstderr: " << k.err());
  CHECK(code == 0);
  CHECK(k.out().find("configuration is valid") != std::string::npos);
}

TEST_CASE(
    "cluster harness: a node that cannot start makes the fixture throw with its config and log") {
  // etcd is up, but the node is pointed at an endpoint nobody listens on.
  const std::string nowhere = "http://127.0.0.1:" + std::to_string(closed_loopback_port());
  cluster_options o;
  o.nodes = 1;
  o.etcd_endpoints = {nowhere};
  o.ready_timeout = 5s;
  std::string what;
  try {
    keyway_cluster cluster(o);
  } catch (const std::exception& e) {
    what = e.what();
  }
  INFO("the fixture said:\n" << what);
  REQUIRE_FALSE(what.empty());
  CHECK(what.find("keyway_cluster: ") == 0);
  CHECK(what.find("node n1") != std::string::npos);
  CHECK(what.find(nowhere) != std::string::npos);  // in the config or the log
  // keywayd's own words are in it (its log, or /status and the log tail).
  CHECK(what.find("keywayd") != std::string::npos);
}
