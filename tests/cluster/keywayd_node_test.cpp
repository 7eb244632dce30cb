// keywayd with a [cluster] section, against a real etcd: it checks what it can
// (etcd answers, its node id is free) and then refuses to run as a node,
// because forwarding between nodes is not built (docs/cluster.md).
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <climits>
#include <fstream>
#include <string>
#include <vector>

#include "cluster/membership.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/etcd_process.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::test::child_process;
using keyway::test::etcd_process;
using keyway::test::temp_dir;

/// A config file for one node: loopback listener, no admin, etcd at `etcd`.
std::string write_config(const temp_dir& dir, const std::string& etcd, const std::string& node_id) {
  const auto path = (dir.path() / ("node-" + node_id + ".toml")).string();
  std::ofstream(path) << "[listen]\ntcp = [\"127.0.0.1:7777\"]\n[admin]\nlisten = \"off\"\n"
                      << "[cluster]\nname = \"t\"\nnode_id = \"" << node_id << "\"\n"
                      << "peer_listen = \"tcp://127.0.0.1:7778\"\n"
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
    "keywayd [cluster]: with etcd up it checks its node id, then says a node cannot run yet") {
  etcd_process etcd;
  temp_dir dir;
  {
    child_process k({KEYWAYD_PATH, "--config", write_config(dir, etcd.endpoint(), "n1")});
    CHECK(k.wait(15s) == 2);
    const std::string err = k.err();
    INFO(err);
    CHECK(err.find("etcd answers and node id \"n1\" is free") != std::string::npos);
    CHECK(err.find("cannot run as a cluster node yet") != std::string::npos);
  }
  // It registered nothing: the id is still free for a node that joins.
  keyway::cluster::membership_config cfg;
  cfg.cluster = "t";
  cfg.self.id = "n1";
  cfg.self.peer_url = "tcp://127.0.0.1:7778";
  cfg.etcd_endpoints = {etcd.endpoint()};
  cfg.lease_ttl = 2s;
  keyway::cluster::membership holder(cfg);
  auto joined = holder.join();
  REQUIRE_MESSAGE(joined.has_value(), joined.error());

  // Now n1 is taken: keywayd names the node that holds it.
  child_process dup({KEYWAYD_PATH, "--config", write_config(dir, etcd.endpoint(), "n1")});
  CHECK(dup.wait(15s) == 1);
  const std::string err = dup.err();
  INFO(err);
  CHECK(err.find("node id \"n1\" is already registered in cluster \"t\"") != std::string::npos);
  CHECK(err.find("peer tcp://127.0.0.1:7778") != std::string::npos);
}
