// A planned membership change under load, with real processes: a 4th node
// joins a 3-node cluster, then one of the first three leaves by SIGTERM
// (drain). Publishers on two nodes keep publishing (acked, so a publish held
// by the hand-off shows as a pause); subscribers on two nodes must see every
// message exactly once, each publisher's order per key, and one order per key
// at every subscriber. The pause is reported (p99, max), not asserted.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/cluster/cluster_clients.hpp"
#include "tests/support/keyway_cluster.hpp"
#include "tests/support/numbered.hpp"

namespace {

using namespace keyway::ctest;
using keyway::test::keyway_cluster;

constexpr int keys = 16;
constexpr int max_per_publisher = 20000;  // bound on the loop, whatever the timing

struct publisher_result {
  int sent = 0;
  std::vector<double> ack_ms;  // each acked publish's round trip
  std::string error;
};

}  // namespace

TEST_CASE(
    "cluster membership: a node joins, then one drains, under load: 0 lost, 0 duplicated, 0 "
    "reordered") {
  keyway_cluster cluster;
  // Subscribers on n1 (TCP) and n2 (Unix); publishers on n1 and n2. n3 drains
  // later, so it has no clients of the test.
  collector got_a, got_b;
  auto sub_a = must_connect(cluster.tcp_url(0), "sub-n1");
  auto sub_b = must_connect(cluster.unix_url(1), "sub-n2");
  must_subscribe(*sub_a, "move.>", got_a);
  must_subscribe(*sub_b, "move.>", got_b);

  // The publishers' URLs, read before start_node() grows the cluster's table.
  const std::vector<std::string> pub_urls{cluster.tcp_url(0), cluster.tcp_url(1)};
  std::atomic<bool> stop{false};
  std::vector<publisher_result> results(2);
  std::vector<std::thread> threads;
  for (int p = 0; p < 2; ++p)
    threads.emplace_back([&, p] {
      auto c = kc::connect(pub_urls[static_cast<std::size_t>(p)], [] {
        kc::connect_options o;
        o.client_name = "pub";
        o.reconnect.enabled = false;
        o.op_timeout = 20s;
        return o;
      }());
      if (!c) {
        results[p].error = "connect: " + c.error().to_string();
        return;
      }
      auto& r = results[p];
      for (int i = 0; i < max_per_publisher && !stop.load(); ++i) {
        const std::string key = keyway::test::numbered("k", i % keys);
        kc::publish_options o;
        o.key = key;
        const auto t0 = std::chrono::steady_clock::now();
        auto a = (*c)->publish_ack("move.p" + std::to_string(p),
                                   std::to_string(p) + ":" + std::to_string(i), o);
        if (!a) {
          r.error = "publish " + std::to_string(i) + ": " + a.error().to_string();
          return;
        }
        r.ack_ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
        r.sent = i + 1;
      }
      // One end marker per key: a subscriber holding them all has everything.
      for (int k = 0; k < keys; ++k) {
        kc::publish_options o;
        const std::string key = keyway::test::numbered("k", k);
        o.key = key;
        if (auto a = (*c)->publish_ack("move.p" + std::to_string(p), "end:" + std::to_string(p), o);
            !a && r.error.empty())
          r.error = "end marker: " + a.error().to_string();
      }
    });

  std::this_thread::sleep_for(300ms);
  const std::size_t n4 = cluster.start_node();  // joins, turns active: keys move to it
  std::this_thread::sleep_for(300ms);
  CHECK(cluster.stop_node(2) == 0);  // n3 drains: its keys move away
  cluster.wait_ready();
  std::this_thread::sleep_for(300ms);
  stop = true;
  for (auto& t : threads) t.join();
  for (const auto& r : results) REQUIRE_MESSAGE(r.error.empty(), r.error);
  // Every hand-off finished: none gave up waiting (a stuck fence).
  for (std::size_t n = 0; n < cluster.size(); ++n) {
    INFO(cluster.id(n) << "'s log:\n" << cluster.log(n));
    CHECK(cluster.log(n).find("did not finish") == std::string::npos);
  }
  CHECK(n4 == 3);

  std::vector<double> all;
  for (const auto& r : results) all.insert(all.end(), r.ack_ms.begin(), r.ack_ms.end());
  std::sort(all.begin(), all.end());
  REQUIRE(!all.empty());
  MESSAGE("acked publishes: " << all.size() << "; round trip p50 " << all[all.size() / 2]
                              << " ms, p99 " << all[all.size() * 99 / 100] << " ms, max "
                              << all.back() << " ms (the hand-offs hold the moved keys)");

  std::map<std::string, std::vector<std::string>> order[2];  // per subscriber: key → payloads
  int idx = 0;
  for (collector* got : {&got_a, &got_b}) {
    const bool all_in = got->wait_until(
        [&](const std::vector<kc::message>& ms) {
          return std::count_if(ms.begin(), ms.end(), [](const kc::message& m) {
                   return m.payload.rfind("end:", 0) == 0;
                 }) >= 2 * keys;
        },
        30s);
    REQUIRE_MESSAGE(
        all_in, "subscriber " << idx << " did not get every end marker; " << cluster.diagnosis(20));
    std::map<std::pair<int, int>, int> count;
    std::map<std::pair<std::string, int>, int> last;
    int reordered = 0;
    for (const auto& m : got->messages()) {
      order[idx][m.key].push_back(m.payload);
      if (m.payload.rfind("end:", 0) == 0) continue;
      const auto colon = m.payload.find(':');
      const int p = std::stoi(m.payload.substr(0, colon));
      const int i = std::stoi(m.payload.substr(colon + 1));
      ++count[{p, i}];
      auto [it, fresh] = last.try_emplace({m.key, p}, i);
      if (!fresh) {
        if (i <= it->second) ++reordered;
        it->second = i;
      }
    }
    int lost = 0, duplicated = 0;
    for (int p = 0; p < 2; ++p)
      for (int i = 0; i < results[p].sent; ++i) {
        const auto it = count.find({p, i});
        if (it == count.end())
          ++lost;
        else if (it->second > 1)
          duplicated += it->second - 1;
      }
    INFO("subscriber " << idx);
    CHECK(lost == 0);
    CHECK(duplicated == 0);
    CHECK(reordered == 0);
    ++idx;
  }
  // One order per key: both subscribers saw the same sequence for every key.
  int differ = 0;
  for (const auto& [key, seq] : order[0])
    if (order[1][key] != seq) ++differ;
  CHECK(differ == 0);
}
