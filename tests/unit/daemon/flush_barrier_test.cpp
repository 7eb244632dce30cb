// Ping barriers under credit pressure: keywayd's server in this process with
// mesh rings of 8 slots, so that a connection publishing 1000 messages runs
// out of credit every few of them and its ping, read in the same buffer, waits
// behind the publish that is held for credit. The pong must still come after
// every delivery of those publishes to the connection's own subscription, in
// ping order, and a connection closed while its barriers are out must not
// disturb anyone.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include "daemon/router.hpp"
#include "daemon/server.hpp"
#include "tests/support/numbered.hpp"
#include "tests/support/raw_client.hpp"

namespace keyway::daemon {
namespace {

using namespace std::chrono_literals;
using itest::as_bytes;
using itest::message_frame;
using itest::open_client;
using itest::pong_frame;
using itest::raw_client;

using keyway::test::numbered;

std::uint64_t paused_reads(const server& s) {
  std::uint64_t n = 0;
  for (std::uint32_t w = 0; w < s.context().workers; ++w) n += s.context().stats[w]->paused_reads();
  return n;
}

server_options small_rings(unsigned workers) {
  server_options o;
  o.listen = {parse_listen_url("tcp://127.0.0.1:0")};
  o.admin.reset();
  o.workers = workers;
  o.ring_capacity = 8;
  o.lame_duck_grace = std::chrono::milliseconds(0);
  return o;
}

/// Queues `n` publishes to `subject` with distinct keys (prefix + i).
void queue_publishes(raw_client& c, std::string_view subject, const std::string& prefix, int n) {
  for (int i = 0; i < n; ++i) {
    const std::string key = prefix + std::to_string(i);
    proto::publish_fields f;
    f.subject = subject;
    f.key = as_bytes(key);
    f.payload = as_bytes(key);
    c.queue_publish(f);
  }
}

}  // namespace

TEST_CASE(
    "flush barrier: on 8-slot rings, pongs wait for every own delivery of the publishes before "
    "them") {
  server s(small_rings(2));
  s.start();
  const std::string url = s.addresses().front();
  // Two connections, one per worker: each publishes to its own subscription.
  std::vector<raw_client> clients;
  for (int i = 0; i < 2; ++i) {
    clients.push_back(open_client(url, numbered("c", i)));
    clients.back().subscribe(1, "own." + std::to_string(i) + ".>");
  }
  const std::uint64_t paused_before = paused_reads(s);
  for (int round = 0; round < 10; ++round) {
    CAPTURE(round);
    for (std::size_t i = 0; i < clients.size(); ++i) {
      CAPTURE(i);
      raw_client& c = clients[i];
      const std::string subject = "own." + std::to_string(i) + ".x";
      // Two pings after 500 publishes each, and one after none: in one write.
      queue_publishes(c, subject, numbered("a", round) + "-", 500);
      c.queue_ping(1);
      queue_publishes(c, subject, numbered("b", round) + "-", 500);
      c.queue_ping(2);
      c.queue_ping(3);
      c.flush();
      std::vector<std::uint64_t> pongs;
      std::vector<std::size_t> before;
      std::set<std::string> payloads;
      const auto deadline = std::chrono::steady_clock::now() + 30s;
      while (pongs.size() < 3 && std::chrono::steady_clock::now() < deadline) {
        auto f = c.read(10s);
        if (!f) break;
        if (const auto* m = std::get_if<message_frame>(&*f)) {
          payloads.insert(m->payload);
        } else if (const auto* p = std::get_if<pong_frame>(&*f)) {
          pongs.push_back(p->id);
          before.push_back(payloads.size());
        } else {
          FAIL_CHECK("unexpected " << itest::describe(*f));
        }
      }
      REQUIRE(pongs == std::vector<std::uint64_t>{1, 2, 3});
      CHECK(before[0] >= 500);
      CHECK(before[1] == 1000);
      CHECK(before[2] == 1000);
    }
  }
  // The publishes did wait for credit: the pings queued behind held ones.
  CHECK(paused_reads(s) > paused_before);

  // Connections that leave with barriers (and pongs) still on their way.
  for (int i = 0; i < 4; ++i) {
    raw_client leaver = open_client(url, "leaver");
    leaver.subscribe(1, "leave.>");
    for (int k = 0; k < 10; ++k) {
      queue_publishes(leaver, "leave.now", std::to_string(k) + "-", 100);
      leaver.queue_ping(static_cast<std::uint64_t>(k));
    }
    leaver.flush();
    leaver.close();
  }
  for (auto& c : clients) c.ping(10s);
  CHECK(s.drain_and_stop());
}

TEST_CASE("flush barrier: with one worker there is no mesh, and pongs are still in order") {
  server s(small_rings(1));
  s.start();
  raw_client c = open_client(s.addresses().front(), "alone");
  c.subscribe(1, "own.>");
  queue_publishes(c, "own.x", "k", 1000);
  for (std::uint64_t id = 1; id <= 3; ++id) c.queue_ping(id);
  c.flush();
  std::size_t deliveries = 0;
  std::vector<std::uint64_t> pongs;
  while (pongs.size() < 3) {
    auto f = c.read(10s);
    REQUIRE(f.has_value());
    if (std::holds_alternative<message_frame>(*f)) {
      ++deliveries;
    } else if (const auto* p = std::get_if<pong_frame>(&*f)) {
      pongs.push_back(p->id);
      CHECK(deliveries == 1000);
    }
  }
  CHECK(pongs == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(s.drain_and_stop());
}

}  // namespace keyway::daemon
