// Stopping one node of a 3-node cluster (tests/support/keyway_cluster.hpp)
// with SIGTERM: it leaves etcd before it exits, and the other two go on as a
// cluster of two. docs/cluster.md ("Leaving revokes the lease, which deletes
// the key at once").
#include <doctest/doctest.h>

#include <chrono>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "cluster/etcd.hpp"
#include "tests/support/keyway_cluster.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::test::keyway_cluster;

/// The node ids registered under /keyway/<name>/nodes/, with their states.
std::set<std::string> registered(keyway::cluster::etcd_client& etcd, const std::string& name,
                                 std::set<std::string>* states = nullptr) {
  const std::string prefix = "/keyway/" + name + "/nodes/";
  auto r = etcd.range_prefix(prefix);
  REQUIRE_MESSAGE(r.has_value(), (r ? std::string() : r.error()));
  std::set<std::string> ids;
  for (const auto& kv : r->kvs) {
    ids.insert(kv.key.substr(prefix.size()));
    if (states) {
      const auto j = nlohmann::json::parse(kv.value, nullptr, false);
      states->insert(j.is_object() ? j.value("state", std::string("?")) : std::string("not JSON"));
    }
  }
  return ids;
}

}  // namespace

TEST_CASE(
    "cluster stop: a node stopped with SIGTERM exits 0, its etcd key is gone at once, and the "
    "other two list only each other") {
  keyway_cluster cluster;
  keyway::cluster::etcd_client etcd({cluster.etcd().endpoint()}, 5s);
  std::set<std::string> states;
  CHECK(registered(etcd, cluster.name(), &states) ==
        std::set<std::string>{cluster.id(0), cluster.id(1), cluster.id(2)});
  CHECK(states == std::set<std::string>{"active"});

  const auto code = cluster.stop_node(2);
  INFO("the stopped node's log:\n" << cluster.log(2));
  REQUIRE_MESSAGE(code.has_value(), "n3 did not exit within 20 s of SIGTERM");
  CHECK(*code == 0);
  // Its key went with its lease when it left: were it left to expire, it
  // would still be there for up to lease_ttl (2 s) after the exit.
  CHECK(registered(etcd, cluster.name()) == std::set<std::string>{cluster.id(0), cluster.id(1)});

  // n1 and n2 stay ready and list exactly each other, active (throws with a
  // diagnosis if not).
  cluster.wait_ready();
  CHECK(cluster.running(0));
  CHECK(cluster.running(1));
  CHECK_FALSE(cluster.running(2));
}
