// Chaos with real processes (docs/cluster.md, "Failures"): etcd and three
// keywayd nodes (--workers 1, lease_ttl 2 s) under acked load from
// publishers on n1 and n2 to subscribers on n1 (TCP) and n2 (Unix), while
// the test kills, stops or cuts something. Payloads carry (publisher,
// counter); chaos_check() reports, per subscriber, what was lost, duplicated
// or reordered per key, and whether both subscribers saw one order per key.
//
// Each case runs KEYWAY_CHAOS_RUNS times (default 5; 1 in sanitizer builds,
// which are several times slower). scripts/chaos --minutes N loops the whole
// file by hand for a soak.
#include <doctest/doctest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/cluster/cluster_clients.hpp"
#include "tests/support/cuttable_proxy.hpp"
#include "tests/support/keyway_cluster.hpp"
#include "tests/support/numbered.hpp"

namespace {

using namespace keyway::ctest;
using keyway::test::keyway_cluster;
using steady = std::chrono::steady_clock;

constexpr int keys = 16;
constexpr int max_per_publisher = 40000;  // bound on each loop, whatever the timing
constexpr auto ttl = std::chrono::seconds(2);

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif

int runs() {
  if (const char* v = std::getenv("KEYWAY_CHAOS_RUNS")) return std::max(1, std::atoi(v));
  return sanitized ? 1 : 5;
}

/// One publish_ack: its key, when it started and ended, and how it ended.
struct sent {
  std::size_t publisher = 0;
  std::string key;
  steady::time_point start, end;
  bool acked = false;
  std::string error;  // empty when acked
};

struct publisher {
  std::vector<sent> log;
  std::string fatal;  // the connection failed: the loop stopped
};

/// Publishers on some nodes, subscribers on others, until stop().
class load {
 public:
  load(keyway_cluster& c, std::vector<std::string> pub_urls, std::vector<std::string> sub_urls)
      : pubs_(pub_urls.size()), got_(sub_urls.size()) {
    for (std::size_t s = 0; s < sub_urls.size(); ++s) {
      subs_.push_back(must_connect(sub_urls[s], keyway::test::numbered("sub", s)));
      subscriptions_.push_back(must_subscribe(*subs_.back(), "chaos.>", got_[s]));
    }
    (void)c;
    for (std::size_t p = 0; p < pub_urls.size(); ++p)
      threads_.emplace_back([this, p, url = pub_urls[p]] { run(p, url); });
  }
  /// The usual load: publishers on n1 and n2; subscribers on n1 (TCP) and n2 (Unix).
  explicit load(keyway_cluster& c)
      : load(c, {c.tcp_url(0), c.tcp_url(1)}, {c.tcp_url(0), c.unix_url(1)}) {}
  ~load() { stop(); }

  /// Stops the publishers; each then publishes one end marker per key.
  void stop() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  const std::vector<publisher>& publishers() const { return pubs_; }
  std::vector<collector>& subscribers() { return got_; }

  /// Acked publishes so far, all publishers.
  std::size_t acked() const { return acked_.load(); }

 private:
  void run(std::size_t p, const std::string& url) {
    publisher& me = pubs_[p];
    auto c = kc::connect(url, [] {
      kc::connect_options o;
      o.client_name = "chaos-pub";
      o.reconnect.enabled = false;
      o.op_timeout = 20s;
      return o;
    }());
    if (!c) {
      me.fatal = "connect: " + c.error().to_string();
      return;
    }
    const std::string subject = "chaos.p" + std::to_string(p);
    for (int i = 0; i < max_per_publisher && !stop_.load(); ++i) {
      sent s;
      s.publisher = p;
      s.key = keyway::test::numbered("k", i % keys);
      kc::publish_options o;
      o.key = s.key;
      s.start = steady::now();
      auto a = (*c)->publish_ack(subject, std::to_string(p) + ":" + std::to_string(i), o);
      s.end = steady::now();
      s.acked = a.has_value();
      if (!a) s.error = a.error().to_string();
      me.log.push_back(std::move(s));
      if (a) ++acked_;
      if (!(*c)->is_open()) {
        me.fatal =
            "the connection closed after publish " + std::to_string(i) + ": " + me.log.back().error;
        return;
      }
    }
    for (int k = 0; k < keys; ++k) {
      kc::publish_options o;
      const std::string key = keyway::test::numbered("k", k);
      o.key = key;
      if (auto a = (*c)->publish_ack(subject, "end:" + std::to_string(p), o);
          !a && me.fatal.empty())
        me.fatal = "end marker: " + a.error().to_string();
    }
  }

  std::vector<publisher> pubs_;
  std::vector<collector> got_;
  std::vector<std::unique_ptr<kc::connection>> subs_;
  std::vector<kc::subscription> subscriptions_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> acked_{0};
};

/// What the subscribers saw.
struct chaos_report {
  int lost = 0;          // publishes (acked or not) a subscriber never got
  int lost_acked = 0;    // of those, acked ones
  int lost_outside = 0;  // lost ones the case does not allow (see `may_lose`)
  int duplicated = 0;
  int reordered = 0;            // a publisher's counter not rising per key
  int keys_in_other_order = 0;  // keys whose common messages two subscribers saw in other orders
  int errors = 0;               // publishes answered with an error
  std::string first_error;
  std::string first_lost_outside;
};

/// Stops the load, waits for every end marker at every subscriber, then
/// counts. A publish lost at subscriber `si` is allowed only where
/// `may_lose(si, publish)` says so.
chaos_report chaos_check(load& l, keyway_cluster& cluster,
                         const std::function<bool(std::size_t, const sent&)>& may_lose) {
  l.stop();
  for (const auto& p : l.publishers()) REQUIRE_MESSAGE(p.fatal.empty(), p.fatal);
  chaos_report r;
  const auto& pubs = l.publishers();
  for (const auto& p : pubs)
    for (const auto& s : p.log)
      if (!s.acked) {
        ++r.errors;
        if (r.first_error.empty()) r.first_error = s.error;
      }
  std::vector<std::map<std::string, std::vector<std::pair<int, int>>>> order(
      l.subscribers().size());  // per subscriber: key → (publisher, counter)
  for (std::size_t si = 0; si < l.subscribers().size(); ++si) {
    collector& got = l.subscribers()[si];
    const bool all_in = got.wait_until(
        [&](const std::vector<kc::message>& ms) {
          return std::count_if(ms.begin(), ms.end(), [](const kc::message& m) {
                   return m.payload.rfind("end:", 0) == 0;
                 }) >= static_cast<long>(pubs.size()) * keys;
        },
        30s);
    REQUIRE_MESSAGE(
        all_in, "subscriber " << si << " did not get every end marker; " << cluster.diagnosis(30));
    std::map<std::pair<int, int>, int> count;
    std::map<std::pair<std::string, int>, int> last;
    for (const auto& m : got.messages()) {
      if (m.payload.rfind("end:", 0) == 0) continue;
      const auto colon = m.payload.find(':');
      const int p = std::stoi(m.payload.substr(0, colon));
      const int i = std::stoi(m.payload.substr(colon + 1));
      ++count[{p, i}];
      order[si][m.key].emplace_back(p, i);
      auto [it, fresh] = last.try_emplace({m.key, p}, i);
      if (!fresh) {
        if (i <= it->second) ++r.reordered;
        it->second = i;
      }
    }
    for (std::size_t p = 0; p < pubs.size(); ++p)
      for (std::size_t i = 0; i < pubs[p].log.size(); ++i) {
        const auto it = count.find({static_cast<int>(p), static_cast<int>(i)});
        if (it == count.end()) {
          const sent& s = pubs[p].log[i];
          ++r.lost;
          if (s.acked) ++r.lost_acked;
          if (!may_lose(si, s)) {
            ++r.lost_outside;
            if (r.first_lost_outside.empty())
              r.first_lost_outside = "subscriber " + std::to_string(si) + " never got publish " +
                                     std::to_string(i) + " of publisher " + std::to_string(p) +
                                     " (key " + s.key + (s.acked ? ", acked)" : ", not acked)");
          }
        } else if (it->second > 1) {
          r.duplicated += it->second - 1;
        }
      }
  }
  // One order per key: the messages two subscribers both got come in one order.
  for (std::size_t si = 1; si < order.size(); ++si)
    for (const auto& [key, seq] : order[0]) {
      const auto& other = order[si][key];
      const std::set<std::pair<int, int>> in_other(other.begin(), other.end());
      const std::set<std::pair<int, int>> in_first(seq.begin(), seq.end());
      std::vector<std::pair<int, int>> a, b;
      for (const auto& m : seq)
        if (in_other.count(m)) a.push_back(m);
      for (const auto& m : other)
        if (in_first.count(m)) b.push_back(m);
      if (a != b) ++r.keys_in_other_order;
    }
  return r;
}

std::string describe(const chaos_report& r) {
  return "lost " + std::to_string(r.lost) + " (acked " + std::to_string(r.lost_acked) +
         ", outside the allowed window " + std::to_string(r.lost_outside) + "), duplicated " +
         std::to_string(r.duplicated) + ", reordered " + std::to_string(r.reordered) +
         ", keys in another order " + std::to_string(r.keys_in_other_order) +
         ", publishes answered with an error " + std::to_string(r.errors) +
         (r.first_error.empty() ? "" : " (first: " + r.first_error + ")");
}

/// What every case asserts: nothing duplicated or reordered, one order per
/// key at every subscriber, and losses only where the case allows them.
void check_order_kept(const chaos_report& r) {
  CHECK(r.duplicated == 0);
  CHECK(r.reordered == 0);
  CHECK(r.keys_in_other_order == 0);
  CHECK_MESSAGE(r.lost_outside == 0, r.first_lost_outside);
}

/// Node i came back as a new incarnation (its log says so).
void check_rejoined(keyway_cluster& cluster, std::size_t i) {
  INFO(cluster.id(i) << "'s log:\n" << cluster.log(i));
  CHECK(cluster.log(i).find("rejoined as a new incarnation") != std::string::npos);
}

/// The node's owner_core_tag as its /status gives it (Message.ownerCore >> 8).
std::uint32_t owner_tag(keyway_cluster& cluster, std::size_t i) {
  const auto status = cluster.status(i);  // a local: ranging over a temporary's member dangles
  for (const auto& n : status["cluster"]["nodes"])
    if (n.value("self", false)) return n["owner_core_tag"].get<std::uint32_t>();
  FAIL("node " << cluster.id(i) << "'s /status lists no node with self: true");
  return 0;
}

std::int64_t epoch_of(keyway_cluster& cluster, std::size_t i) {
  return cluster.status(i)["cluster"]["epoch"].get<std::int64_t>();
}

double seconds(steady::duration d) {
  return std::chrono::duration<double>(d).count();
}

/// Waits until the load is going (2,000 deliveries at the first subscriber).
void wait_going(load& l) {
  REQUIRE(l.subscribers()[0].wait_until(
      [&](const std::vector<kc::message>& ms) { return ms.size() >= 2000; }, 20s));
}

/// Once the load is going: the keys node `i` orders, as the deliveries show.
std::set<std::string> keys_of(load& l, keyway_cluster& cluster, std::size_t i) {
  const std::uint32_t tag = owner_tag(cluster, i);
  wait_going(l);
  std::set<std::string> out;
  for (const auto& m : l.subscribers()[0].messages())
    if ((m.owner_core >> 8) == tag) out.insert(m.key);
  REQUIRE_MESSAGE(!out.empty(), cluster.id(i) << " ordered none of the " << keys << " keys");
  return out;
}

/// Relays the test can cut in front of node n3 (index 2): between it and
/// etcd, and in front of its peer listener (what the others dial: n3
/// advertises the relay as its peer URL).
struct relays {
  std::unique_ptr<keyway::test::cuttable_proxy> etcd, peer;

  void etcd_through_relay(keyway::test::cluster_options& o) {
    o.etcd_for = [this](std::size_t node, const std::string& url) {
      if (node != 2) return std::vector<std::string>{url};
      etcd = std::make_unique<keyway::test::cuttable_proxy>(
          static_cast<std::uint16_t>(std::stoi(url.substr(url.rfind(':') + 1))));
      return std::vector<std::string>{etcd->http_url()};
    };
  }
  void peers_through_relay(keyway::test::cluster_options& o) {
    o.peer_advertise_for = [this](std::size_t node, std::uint16_t port) -> std::string {
      if (node != 2) return {};
      peer = std::make_unique<keyway::test::cuttable_proxy>(port);
      return peer->tcp_url();
    };
  }
};

/// Polls node i's /readyz?verbose for up to 10 s until it says the node is
/// not ordering; returns how long that took, or nullopt (then `last` has
/// the last answer).
std::optional<double> wait_not_ordering(keyway_cluster& cluster, std::size_t i,
                                        steady::time_point since, std::string& last) {
  for (int k = 0; k < 100; ++k) {
    std::this_thread::sleep_for(100ms);
    const auto r =
        keyway::test::http_get(cluster.admin_port(i), "/readyz?verbose", std::chrono::seconds(2));
    last = r.body;
    if (r.status == 503 && r.body.find("not ordering") != std::string::npos)
      return seconds(steady::now() - since);
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("cluster chaos: kill -9 an owner node under load") {
  std::vector<double> failovers;
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    keyway_cluster cluster;
    load l(cluster);
    // A client of n3 with reconnect on (the default), given only n3's URL:
    // it learns the others from n3's welcome.
    collector roamer_got;
    std::mutex roamer_mu;
    std::string roamer_errors;  // what the client reported, for the failure message
    auto roamer = kc::connect(cluster.tcp_url(2), [&] {
      kc::connect_options o;
      o.client_name = "chaos-roamer";
      o.on_error = [&](const kc::error& e) {
        std::lock_guard lock(roamer_mu);
        roamer_errors += e.to_string() + "\n";
      };
      return o;
    }());
    REQUIRE_MESSAGE(roamer.has_value(), roamer.error().to_string());
    must_subscribe(**roamer, "chaos.>", roamer_got);
    const std::set<std::string> dead_keys = keys_of(l, cluster, 2);
    const std::int64_t epoch_before = epoch_of(cluster, 0);

    const auto killed = steady::now();
    cluster.kill_node(2);
    cluster.wait_ready(20s);  // n1 and n2 list only each other, active
    const auto ready = steady::now();
    // The roamer moved to n1 or n2 and gets deliveries there.
    REQUIRE_MESSAGE(
        roamer_got.wait_until(
            [&](const std::vector<kc::message>&) {
              return (*roamer)->status() == kc::connection_status::connected &&
                     (*roamer)->info().url != cluster.tcp_url(2);
            },
            10s),
        "the client of n3 did not reconnect elsewhere; it is at " << (*roamer)->info().url);
    const std::string moved_to = (*roamer)->info().url;
    CHECK((moved_to == cluster.tcp_url(0) || moved_to == cluster.tcp_url(1)));
    CHECK((*roamer)->stats().reconnects >= 1);
    const std::size_t roamer_had = roamer_got.size();
    CHECK_MESSAGE(
        roamer_got.wait_until(
            [&](const std::vector<kc::message>& ms) { return ms.size() > roamer_had; }, 10s),
        "the client of n3 got nothing at " << moved_to << "; it reported:\n"
                                           << [&] {
                                                std::lock_guard lock(roamer_mu);
                                                return roamer_errors;
                                              }());
    const double reconnected = seconds(steady::now() - killed);
    CHECK(epoch_of(cluster, 0) > epoch_before);
    CHECK(epoch_of(cluster, 1) == epoch_of(cluster, 0));
    std::this_thread::sleep_for(1s);  // load on the new ring

    // Loss only on n3's keys, for publishes that were in flight at the kill
    // (acked within 0.5 s before it) or came after it.
    const auto r = chaos_check(l, cluster, [&](std::size_t, const sent& s) {
      return dead_keys.count(s.key) != 0 && s.end >= killed - 500ms;
    });
    // Failover (the load has stopped: its logs are complete): the kill to the first acked publish,
    // on a key n3 owned, that started after the kill.
    std::optional<steady::time_point> first;
    for (const auto& p : l.publishers())
      for (const auto& s : p.log)
        if (s.acked && s.start >= killed && dead_keys.count(s.key) && (!first || s.end < *first))
          first = s.end;
    REQUIRE_MESSAGE(first.has_value(), "no publish on n3's keys was acked after the kill");
    const double failover = seconds(*first - killed);
    failovers.push_back(failover);

    MESSAGE("kill -9 n3, run " << run << ": failover " << failover << " s (ready after "
                               << seconds(ready - killed) << " s; n3's client delivered to at "
                               << moved_to << " " << reconnected << " s after); " << describe(r));
    check_order_kept(r);
    // Every error names the lost owner and is retriable (owner_lost).
    for (const auto& p : l.publishers())
      for (const auto& s : p.log)
        if (!s.acked) CHECK_MESSAGE(s.error.find("owner_lost") != std::string::npos, s.error);
    const double bound = seconds(ttl) + (sanitized ? 4.0 : 1.0);
    CHECK_MESSAGE(failover <= bound, "failover " << failover << " s; at most " << bound << " s");
  }
  std::sort(failovers.begin(), failovers.end());
  MESSAGE("kill -9: failover over " << failovers.size() << " runs: median "
                                    << failovers[failovers.size() / 2] << " s, max "
                                    << failovers.back() << " s");
}

TEST_CASE("cluster chaos: a node stopped for less than TTL/2 changes nothing and loses nothing") {
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    keyway_cluster cluster;
    load l(cluster);
    wait_going(l);
    const std::int64_t epoch_before = epoch_of(cluster, 0);
    ::kill(cluster.process(2).pid(), SIGSTOP);
    std::this_thread::sleep_for(600ms);  // TTL/2 is 1 s
    ::kill(cluster.process(2).pid(), SIGCONT);
    std::this_thread::sleep_for(1s);
    const auto r = chaos_check(l, cluster, [](std::size_t, const sent&) { return false; });
    MESSAGE("SIGSTOP n3 for 0.6 s, run " << run << ": " << describe(r));
    CHECK(epoch_of(cluster, 0) == epoch_before);
    CHECK(epoch_of(cluster, 1) == epoch_before);
    CHECK(r.lost == 0);
    CHECK(r.errors == 0);
    CHECK(r.duplicated == 0);
    CHECK(r.reordered == 0);
    CHECK(r.keys_in_other_order == 0);
    cluster.wait_ready(10s);
  }
}

TEST_CASE("cluster chaos: etcd killed for 10 s: routing goes on, nothing lost, joins refused") {
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    keyway_cluster cluster;
    load l(cluster);
    wait_going(l);
    const std::int64_t epoch_before = epoch_of(cluster, 0);
    cluster.etcd().kill();
    const auto down = steady::now();
    std::this_thread::sleep_for(ttl + 1s);  // past every lease's TTL
    // Routing goes on: acked publishes keep coming.
    const std::size_t acked_before = l.acked();
    std::this_thread::sleep_for(1s);
    CHECK(l.acked() > acked_before);
    // Readiness says so, and stays ready: the ring is the last one etcd gave.
    for (std::size_t n = 0; n < 3; ++n) {
      const auto r =
          keyway::test::http_get(cluster.admin_port(n), "/readyz?verbose", std::chrono::seconds(2));
      CHECK_MESSAGE(r.status == 200, r.body);
      CHECK_MESSAGE(r.body.find("etcd unreachable") != std::string::npos, r.body);
    }
    // A join is refused while etcd is away: the new node exits naming etcd.
    {
      const std::string failed = cluster.try_start_node();
      CHECK_MESSAGE(failed.find("exited with status 1") != std::string::npos, failed);
      CHECK_MESSAGE(failed.find(cluster.etcd().endpoint()) != std::string::npos, failed);
    }
    std::this_thread::sleep_until(down + 10s);
    cluster.etcd().restart();
    std::this_thread::sleep_for(ttl);  // keepalives succeed again: same leases, same ring
    const auto r = chaos_check(l, cluster, [](std::size_t, const sent&) { return false; });
    MESSAGE("etcd killed for 10 s, run " << run << ": " << describe(r));
    CHECK(r.lost == 0);
    CHECK(r.errors == 0);
    CHECK(r.duplicated == 0);
    CHECK(r.reordered == 0);
    CHECK(r.keys_in_other_order == 0);
    for (std::size_t n = 0; n < 3; ++n) CHECK(epoch_of(cluster, n) == epoch_before);
    for (std::size_t n = 0; n < 3; ++n) {
      INFO(cluster.id(n) << "'s log:\n" << cluster.log(n));
      CHECK(cluster.log(n).find("rejoined as a new incarnation") == std::string::npos);
    }
  }
}

TEST_CASE(
    "cluster chaos: cut off from etcd and from a peer, nodes stop ordering, and go on once etcd "
    "is back") {
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    keyway_cluster cluster;
    load l(cluster);
    const std::set<std::string> dead_keys = keys_of(l, cluster, 2);
    // etcd goes, past every lease's TTL: routing goes on (the links are all up).
    cluster.etcd().kill();
    std::this_thread::sleep_for(ttl + 500ms);
    // Then n3 dies: n1 and n2 can no longer tell whether they still own
    // their keys (n3 might be alive and the one cut off), so they stop.
    const auto killed = steady::now();
    cluster.kill_node(2);
    std::this_thread::sleep_for(1s);
    const std::size_t acked_then = l.acked();
    std::this_thread::sleep_for(1s);
    CHECK(l.acked() == acked_then);  // nothing ordered meanwhile
    for (std::size_t n = 0; n < 2; ++n) {
      const auto r =
          keyway::test::http_get(cluster.admin_port(n), "/readyz?verbose", std::chrono::seconds(2));
      CHECK_MESSAGE(r.status == 503, r.body);
      CHECK_MESSAGE(r.body.find("not ordering") != std::string::npos, r.body);
    }
    // etcd back: leases confirmed again, n3's expires, the ring moves on.
    cluster.etcd().restart();
    cluster.wait_ready(20s);
    CHECK(l.acked() > acked_then);
    std::this_thread::sleep_for(1s);
    // Lost: n3's keys around the kill, and publishes answered ownerLost
    // (a node that stopped ordering refused what another still forwarded).
    const auto r = chaos_check(l, cluster, [&](std::size_t, const sent& s) {
      if (!s.acked && s.error.find("owner_lost") != std::string::npos && s.end >= killed)
        return true;
      return dead_keys.count(s.key) != 0 && s.end >= killed - 500ms;
    });
    MESSAGE("etcd and n3 lost, run " << run << ": " << describe(r));
    check_order_kept(r);
  }
}

TEST_CASE(
    "cluster chaos: a node stopped for 3 x TTL orders nothing stale when it wakes, and rejoins") {
  std::vector<double> rejoins;
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    keyway_cluster cluster;
    // A publisher and a subscriber on n3 too. What n3's publisher sent
    // while n3 was stopped waits in n3's socket: on waking, n3 must not order
    // it by the ring it had (its keys are others' by then), or n1's and n2's
    // subscribers would miss what n3 acked.
    load l(cluster, {cluster.tcp_url(0), cluster.tcp_url(1), cluster.tcp_url(2)},
           {cluster.tcp_url(0), cluster.unix_url(1), cluster.tcp_url(2)});
    const std::set<std::string> stalled_keys = keys_of(l, cluster, 2);

    const auto stopped = steady::now();
    ::kill(cluster.process(2).pid(), SIGSTOP);
    std::this_thread::sleep_for(3 * ttl);
    ::kill(cluster.process(2).pid(), SIGCONT);
    const auto woke = steady::now();
    cluster.wait_ready(20s);  // n3 back in the ring, as a new incarnation
    const auto back = steady::now();
    const double rejoin = seconds(back - woke);
    rejoins.push_back(rejoin);
    std::this_thread::sleep_for(1s);
    // n3's subscriber misses what was published while n3 was out of the ring
    // (until it is back); n1's and n2's only what n3 had taken in for its
    // keys and not delivered when it stopped.
    const auto r = chaos_check(l, cluster, [&](std::size_t si, const sent& s) {
      if (si == 2) return s.end >= stopped - 500ms && s.start <= back;
      // n3's publisher: what it sent while n3 was stopped, if acked, was
      // routed after n3 woke, by the new ring: n1 and n2 got it.
      if (s.publisher == 2 && s.start > stopped) return !s.acked;
      return stalled_keys.count(s.key) != 0 && s.end >= stopped - 500ms && s.start <= woke;
    });
    double stale = 0;
    for (std::size_t n = 0; n < 3; ++n) {
      const std::string metrics =
          keyway::test::http_get(cluster.admin_port(n), "/metrics", std::chrono::seconds(2)).body;
      const std::string series = "keyway_dropped_messages_total{reason=\"stale_peer\"} ";
      if (const auto at = metrics.find("\n" + series); at != std::string::npos)
        stale += std::stod(metrics.substr(at + 1 + series.size()));
    }
    MESSAGE("SIGSTOP n3 for " << seconds(3 * ttl) << " s, run " << run << ": rejoined " << rejoin
                              << " s after SIGCONT; stale messages dropped " << stale << "; "
                              << describe(r));
    check_order_kept(r);
    check_rejoined(cluster, 2);
    CHECK_MESSAGE(rejoin <= seconds(2 * ttl) + (sanitized ? 6.0 : 0.0),
                  "rejoined " << rejoin << " s after SIGCONT; at most 2 x TTL");
  }
  std::sort(rejoins.begin(), rejoins.end());
  MESSAGE("SIGSTOP 3 x TTL: rejoin over " << rejoins.size() << " runs: median "
                                          << rejoins[rejoins.size() / 2] << " s, max "
                                          << rejoins.back() << " s");
}

TEST_CASE(
    "cluster chaos: a node cut off from etcd only stops ordering once the others drop it, and "
    "rejoins") {
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    // n3 reaches etcd through a relay the test cuts: etcd and the other
    // nodes stay up, and n3 still reaches them (a one-sided partition).
    relays n3;
    keyway::test::cluster_options o;
    n3.etcd_through_relay(o);
    keyway_cluster cluster(o);
    const auto& relay = n3.etcd;
    // A publisher on n3 as well: once n3 may not order, its publishes wait.
    load l(cluster, {cluster.tcp_url(0), cluster.tcp_url(1), cluster.tcp_url(2)},
           {cluster.tcp_url(0), cluster.unix_url(1)});
    const std::set<std::string> cut_keys = keys_of(l, cluster, 2);
    const auto cut = steady::now();
    relay->cut();
    // Its lease expires in etcd; n1 and n2 drop it and close its links; n3,
    // with neither etcd nor links, stops ordering.
    std::string last;
    const auto stopped = wait_not_ordering(cluster, 2, cut, last);
    CHECK_MESSAGE(stopped.has_value(), "n3's /readyz?verbose 10 s after the cut: " << last);
    const double stop_after = stopped.value_or(-1);
    // The others carry on without it.
    const std::size_t acked_before = l.acked();
    std::this_thread::sleep_for(1s);
    CHECK(l.acked() > acked_before);
    // Back in touch: etcd says its lease is gone, and it rejoins.
    relay->restore();
    cluster.wait_ready(20s);
    std::this_thread::sleep_for(1s);
    // Lost: n3's keys, and n3's publisher's publishes, from the cut until the
    // others took over (n3 ordered them meanwhile, or they were refused), and
    // publishes answered ownerLost.
    const auto r = chaos_check(l, cluster, [&](std::size_t, const sent& s) {
      if (s.end < cut - 500ms) return false;
      if (!s.acked && s.error.find("owner_lost") != std::string::npos) return true;
      return cut_keys.count(s.key) != 0 || s.publisher == 2;
    });
    MESSAGE("n3 cut off from etcd, run " << run << ": it stopped ordering " << stop_after
                                         << " s after the cut; " << describe(r));
    check_order_kept(r);
    check_rejoined(cluster, 2);
  }
}

TEST_CASE(
    "cluster chaos: a node partitioned from etcd and its peers stops ordering, and the others "
    "take its keys") {
  std::vector<double> stops, failovers;
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    // n3 behind two relays: to etcd, and in front of its peer listener. The
    // cut closes the links the others dial to n3 and n3's etcd; n3's own
    // links to them are closed by them once its lease expires (they refuse
    // a stale incarnation), so then it reaches nobody.
    relays n3;
    keyway::test::cluster_options o;
    n3.etcd_through_relay(o);
    n3.peers_through_relay(o);
    keyway_cluster cluster(o);
    load l(cluster, {cluster.tcp_url(0), cluster.tcp_url(1), cluster.tcp_url(2)},
           {cluster.tcp_url(0), cluster.unix_url(1)});
    const std::set<std::string> cut_keys = keys_of(l, cluster, 2);
    const std::int64_t epoch_before = epoch_of(cluster, 0);
    const auto cut = steady::now();
    n3.etcd->cut();
    n3.peer->cut();
    std::string last;
    const auto stopped = wait_not_ordering(cluster, 2, cut, last);
    CHECK_MESSAGE(stopped.has_value(), "n3's /readyz?verbose 10 s after the cut: " << last);
    // The majority side moved to a ring without n3, and goes on.
    CHECK(epoch_of(cluster, 0) > epoch_before);
    CHECK(epoch_of(cluster, 1) == epoch_of(cluster, 0));
    const std::size_t acked_before = l.acked();
    std::this_thread::sleep_for(1s);
    CHECK(l.acked() > acked_before);
    n3.etcd->restore();
    n3.peer->restore();
    cluster.wait_ready(20s);
    std::this_thread::sleep_for(1s);
    const auto r = chaos_check(l, cluster, [&](std::size_t, const sent& s) {
      if (s.end < cut - 500ms) return false;
      if (!s.acked && s.error.find("owner_lost") != std::string::npos) return true;
      return cut_keys.count(s.key) != 0 || s.publisher == 2;
    });
    // Failover: the cut to the first acked publish on one of n3's keys, from
    // n1's or n2's publisher, that started once the cut links were seen down
    // (the relay closes them at once; what n3 acked just before is excluded).
    std::optional<steady::time_point> first;
    for (const auto& p : l.publishers())
      for (const auto& s : p.log)
        if (s.publisher != 2 && s.acked && s.start >= cut + 200ms && cut_keys.count(s.key) &&
            (!first || s.end < *first))
          first = s.end;
    CHECK_MESSAGE(first.has_value(), "no publish on n3's keys was acked on n1 or n2 after the cut");
    if (stopped) stops.push_back(*stopped);
    if (first) failovers.push_back(seconds(*first - cut));
    MESSAGE("n3 partitioned, run " << run << ": it stopped ordering " << stopped.value_or(-1)
                                   << " s after the cut; n3's keys acked elsewhere after "
                                   << (first ? seconds(*first - cut) : -1.0) << " s; "
                                   << describe(r));
    check_order_kept(r);
    check_rejoined(cluster, 2);
  }
  std::sort(stops.begin(), stops.end());
  std::sort(failovers.begin(), failovers.end());
  if (!stops.empty() && !failovers.empty())
    MESSAGE("partition: over " << runs() << " runs, n3 stopped ordering after median "
                               << stops[stops.size() / 2] << " s, max " << stops.back()
                               << " s; its keys failed over after median "
                               << failovers[failovers.size() / 2] << " s, max " << failovers.back()
                               << " s");
}

TEST_CASE(
    "cluster chaos: a peer unreachable for over twice the lease is treated as dead: its keys' "
    "publishes fail instead of waiting, and resume once it is back") {
  for (int run = 1; run <= runs(); ++run) {
    INFO("run " << run);
    // The links the others dial to n3 go through a relay the test cuts; n3
    // keeps etcd, so it stays registered and the ring does not change.
    relays n3;
    keyway::test::cluster_options o;
    n3.peers_through_relay(o);
    keyway_cluster cluster(o);
    load l(cluster);
    const std::set<std::string> cut_keys = keys_of(l, cluster, 2);
    const std::int64_t epoch_before = epoch_of(cluster, 0);
    const auto cut = steady::now();
    n3.peer->cut();
    std::this_thread::sleep_for(2 * ttl + 1s);  // unreachable after twice the lease
    CHECK(epoch_of(cluster, 0) == epoch_before);
    // The publishers are not stuck behind n3's keys: acks keep coming.
    const std::size_t acked_before = l.acked();
    std::this_thread::sleep_for(1s);
    CHECK(l.acked() > acked_before);
    const auto restored = steady::now();
    n3.peer->restore();
    cluster.wait_ready(20s);
    std::this_thread::sleep_for(1s);
    // Lost: only what was refused (ownerLost), on n3's keys.
    const auto r = chaos_check(l, cluster, [&](std::size_t, const sent& s) {
      return !s.acked && cut_keys.count(s.key) != 0 && s.end >= cut;
    });
    std::size_t unreachable = 0, acked_after = 0;
    for (const auto& p : l.publishers())
      for (const auto& s : p.log) {
        if (!s.acked) {
          CHECK_MESSAGE(s.error.find("owner_lost") != std::string::npos, s.error);
          CHECK_MESSAGE(cut_keys.count(s.key) != 0, s.key << ": " << s.error);
          if (s.error.find("unreachable") != std::string::npos) ++unreachable;
        }
        if (s.acked && s.start > restored && cut_keys.count(s.key) != 0) ++acked_after;
      }
    MESSAGE("n3's links cut for " << seconds(restored - cut) << " s, run " << run << ": "
                                  << unreachable << " publishes refused as unreachable, "
                                  << acked_after << " acked on its keys after; " << describe(r));
    CHECK(unreachable > 0);
    CHECK(acked_after > 0);
    check_order_kept(r);
    CHECK(cluster.log(2).find("rejoined as a new incarnation") == std::string::npos);
  }
}
