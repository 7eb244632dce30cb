// Cluster membership (cluster/membership.hpp) against a real etcd 3.4: several
// members in this process stand for several nodes; each test case starts its
// own etcd (tests/support/etcd_process.hpp).
#include "cluster/membership.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cluster/etcd.hpp"
#include "tests/support/etcd_process.hpp"
#include "tests/support/local_socket.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::cluster::cluster_view;
using keyway::cluster::membership;
using keyway::cluster::membership_config;
using keyway::cluster::node_info;
using keyway::cluster::node_state;
using keyway::test::etcd_process;
using clock_type = std::chrono::steady_clock;

/// One node's membership, and every (epoch, ring) its observer saw, in order.
struct node {
  struct ring_change {
    std::int64_t epoch;
    std::vector<std::string> ring;
    bool operator==(const ring_change&) const = default;
  };

  node(const std::vector<std::string>& endpoints, const std::string& id,
       std::chrono::milliseconds ttl = 2s, const std::string& cluster = "test") {
    membership_config cfg;
    cfg.cluster = cluster;
    cfg.self.id = id;
    cfg.self.client_urls = {"tcp://127.0.0.1:7400"};
    cfg.self.peer_url = "tcp://127.0.0.1:7402";
    cfg.self.workers = 1;
    cfg.etcd_endpoints = endpoints;
    cfg.lease_ttl = ttl;
    cfg.etcd_timeout = 1s;
    m = std::make_unique<membership>(std::move(cfg), [this](const cluster_view& v) {
      std::lock_guard lock(mu);
      if (changes.empty() || changes.back().ring != v.ring) changes.push_back({v.epoch, v.ring});
      cv.notify_all();
    });
  }

  /// Waits until `pred(view)` holds; false after `limit`.
  bool wait_for(const std::function<bool(const cluster_view&)>& pred,
                std::chrono::milliseconds limit = 8s) {
    const auto deadline = clock_type::now() + limit;
    std::unique_lock lock(mu);
    while (true) {
      lock.unlock();
      auto v = m->view();
      lock.lock();
      if (v && pred(*v)) return true;
      if (cv.wait_until(lock, std::min(deadline, clock_type::now() + 50ms)) ==
              std::cv_status::timeout &&
          clock_type::now() >= deadline)
        return false;
    }
  }

  bool wait_ring(const std::vector<std::string>& ring, std::chrono::milliseconds limit = 8s) {
    return wait_for([&](const cluster_view& v) { return v.ring == ring; }, limit);
  }

  std::vector<ring_change> seen() {
    std::lock_guard lock(mu);
    return changes;
  }

  std::mutex mu;
  std::condition_variable cv;
  std::vector<ring_change> changes;
  std::unique_ptr<membership> m;
};

void join_active(node& n) {
  auto joined = n.m->join();
  REQUIRE_MESSAGE(joined.has_value(), joined.error());
  auto active = n.m->set_state(node_state::active);
  REQUIRE_MESSAGE(active.has_value(), active.error());
}

}  // namespace

TEST_CASE("membership: every node sees the same sequence of epochs and rings") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node a(eps, "a"), b(eps, "b"), c(eps, "c");
  join_active(a);
  REQUIRE(a.wait_ring({"a"}));
  join_active(b);
  REQUIRE(a.wait_ring({"a", "b"}));
  REQUIRE(b.wait_ring({"a", "b"}));
  join_active(c);
  for (node* n : {&a, &b, &c}) REQUIRE(n->wait_ring({"a", "b", "c"}));

  // b drains (leaves the ring but stays registered), then leaves for good.
  REQUIRE(b.m->set_state(node_state::draining).has_value());
  for (node* n : {&a, &c}) REQUIRE(n->wait_ring({"a", "c"}));
  REQUIRE(b.m->leave().has_value());
  REQUIRE(a.wait_for([](const cluster_view& v) { return v.find("b") == nullptr; }));

  // c joined last: from its activation on, a and c saw the same sequence.
  auto sa = a.seen(), sc = c.seen();
  INFO("a saw " << sa.size() << " rings, c " << sc.size());
  REQUIRE(sa.size() >= 3);
  const auto from =
      std::find_if(sa.begin(), sa.end(), [](const auto& r) { return r.ring.size() == 3; });
  REQUIRE(from != sa.end());
  const auto from_c =
      std::find_if(sc.begin(), sc.end(), [](const auto& r) { return r.ring.size() == 3; });
  REQUIRE(from_c != sc.end());
  CHECK(std::vector(from, sa.end()) == std::vector(from_c, sc.end()));
  // Epochs rise with every change of the ring.
  for (std::size_t i = 1; i < sa.size(); ++i) CHECK(sa[i].epoch > sa[i - 1].epoch);

  // The view describes each node as it registered.
  auto v = a.m->view();
  const auto* mc = v->find("c");
  REQUIRE(mc != nullptr);
  CHECK(mc->info.state == node_state::active);
  CHECK(mc->info.peer_url == "tcp://127.0.0.1:7402");
  CHECK(mc->info.client_urls == std::vector<std::string>{"tcp://127.0.0.1:7400"});
  CHECK(mc->lease != 0);
  CHECK(v->epoch == sa.back().epoch);
}

TEST_CASE("membership: a duplicate node id is refused, naming the node that holds it") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node first(eps, "n1"), second(eps, "n1");
  join_active(first);
  REQUIRE(first.wait_ring({"n1"}));
  auto dup = second.m->join();
  REQUIRE_FALSE(dup.has_value());
  INFO(dup.error());
  CHECK(dup.error().find("node id \"n1\" is already registered in cluster \"test\"") !=
        std::string::npos);
  CHECK(dup.error().find("/keyway/test/nodes/n1") != std::string::npos);
  CHECK(dup.error().find("state active") != std::string::npos);
  // The refused node left nothing behind, and the first is untouched.
  CHECK_FALSE(second.m->lease_held());
  auto v = first.m->view();
  CHECK(v->ring == std::vector<std::string>{"n1"});
  CHECK(v->members.size() == 1);
  // The same id in another cluster is another key.
  node other(eps, "n1", 2s, "other");
  join_active(other);
  CHECK(other.wait_ring({"n1"}));
}

TEST_CASE("membership: a node that stops renewing its lease drops out of every ring") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node a(eps, "a"), b(eps, "b", 2s);
  join_active(a);
  join_active(b);
  REQUIRE(a.wait_ring({"a", "b"}));
  // As after a crash: b's process goes away without leaving.
  const auto stopped = clock_type::now();
  b.m.reset();
  REQUIRE(a.wait_ring({"a"}, 6s));
  const auto gone = clock_type::now() - stopped;
  MESSAGE("b left a's ring " << std::chrono::duration_cast<std::chrono::milliseconds>(gone).count()
                             << " ms after it stopped (lease_ttl 2000 ms)");
  CHECK(gone >= 1s);  // not before the lease could expire
  CHECK(a.m->lease_held());
}

TEST_CASE("membership: etcd unreachable at start is an error naming the endpoint") {
  const std::uint16_t port = keyway::test::closed_loopback_port();
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  node n({url}, "a");
  const auto started = clock_type::now();
  auto joined = n.m->join();
  REQUIRE_FALSE(joined.has_value());
  INFO(joined.error());
  CHECK(joined.error().find("cannot join cluster \"test\"") != std::string::npos);
  CHECK(joined.error().find(url) != std::string::npos);
  CHECK(clock_type::now() - started < 5s);
  CHECK_FALSE(n.m->lease_held());
}

TEST_CASE("membership: a node's lease outlives a short etcd outage, and the watch resumes") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node a(eps, "a", 6s), b(eps, "b", 6s);
  join_active(a);
  join_active(b);
  REQUIRE(a.wait_ring({"a", "b"}));
  etcd.stop();
  std::this_thread::sleep_for(1s);
  etcd.restart();
  // The outage was shorter than the lease: nobody left, and changes flow again.
  CHECK(a.m->lease_held());
  REQUIRE(b.m->set_state(node_state::draining).has_value());
  CHECK(a.wait_ring({"a"}));
  CHECK(a.m->view()->find("b") != nullptr);
}

TEST_CASE(
    "membership: an etcd outage longer than the lease keeps the lease: same incarnation after") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node a(eps, "a", 2s);
  join_active(a);
  const auto lease = a.m->lease();
  const auto renewed = a.m->last_renewed();
  etcd.kill();
  std::this_thread::sleep_for(4s);  // twice the TTL
  // Not known to be gone: etcd did not answer at all.
  CHECK(a.m->lease_held());
  CHECK_FALSE(a.m->etcd_reachable());
  CHECK(clock_type::now() - a.m->last_renewed() >= 2s);
  etcd.restart();
  // etcd restores leases with their TTL renewed: the next keepalive succeeds.
  const auto deadline = clock_type::now() + 6s;
  while (a.m->last_renewed() <= renewed + 4s && clock_type::now() < deadline)
    std::this_thread::sleep_for(50ms);
  CHECK(a.m->last_renewed() > renewed + 4s);
  CHECK(a.m->lease_held());
  CHECK(a.m->lease() == lease);
  CHECK(a.m->incarnation() == 1);
}

TEST_CASE(
    "membership: a node whose lease is revoked behind its back rejoins as a new incarnation") {
  etcd_process etcd;
  const std::vector<std::string> eps{etcd.endpoint()};
  node a(eps, "a"), b(eps, "b", 3s);
  join_active(a);
  join_active(b);
  REQUIRE(a.wait_ring({"a", "b"}));
  const auto old_lease = b.m->lease();
  CHECK(b.m->incarnation() == 1);
  CHECK(b.m->etcd_reachable());

  // As if b had stalled past its lease: etcd drops its key.
  keyway::cluster::etcd_client admin(eps, 2s);
  REQUIRE(admin.lease_revoke(old_lease).has_value());
  REQUIRE(a.wait_ring({"a"}));
  // b notices at its next keepalive (every lease_ttl / 3), and registers again, joining.
  REQUIRE(a.wait_for([](const cluster_view& v) {
    const auto* mb = v.find("b");
    return mb != nullptr && mb->info.state == node_state::joining;
  }));
  // etcd took the new key a moment before b's register call returned.
  for (int i = 0; i < 100 && b.m->incarnation() < 2; ++i) std::this_thread::sleep_for(20ms);
  CHECK(b.m->incarnation() == 2);
  CHECK(b.m->lease_held());
  CHECK(b.m->lease() != old_lease);
  CHECK(a.m->view()->find("b")->lease == b.m->lease());
  // Active again under the new lease: back in the ring at a later epoch.
  const auto epoch_without_b = a.m->view()->epoch;
  REQUIRE(b.m->set_state(node_state::active).has_value());
  REQUIRE(a.wait_ring({"a", "b"}));
  CHECK(a.m->view()->epoch > epoch_without_b);
}

TEST_CASE("membership: etcd_reachable follows etcd going away and coming back") {
  etcd_process etcd;
  node a({etcd.endpoint()}, "a", 3s);
  join_active(a);
  CHECK(a.m->etcd_reachable());
  etcd.stop();
  const auto wait_until = [&](bool want) {
    const auto deadline = clock_type::now() + 6s;
    while (a.m->etcd_reachable() != want && clock_type::now() < deadline)
      std::this_thread::sleep_for(50ms);
    return a.m->etcd_reachable() == want;
  };
  CHECK(wait_until(false));
  etcd.restart();
  CHECK(wait_until(true));
  CHECK(a.m->lease_held());
}
