// A 3-node cluster in its steady state (tests/support/keyway_cluster.hpp: a
// real etcd and three keywayd processes with --workers 1): every node's
// /status lists the three active at one epoch; publishes on any
// node reach the subscribers on every node once each, in one order per key;
// queue groups span the cluster and stay key-affine; request/reply crosses
// nodes; delivery stamps (ownerCore, seq) are per owner node. docs/cluster.md.
//
// Every test waits for its deliveries with sentinels: after its messages,
// each publisher publishes one sentinel per key it used. A publisher's
// messages of one key keep their order, so a subscriber that has every
// sentinel has every message published before them; the waits are bounded.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keyway/client.hpp>

#include "cluster/placement.hpp"
#include "tests/cluster/cluster_clients.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/keyway_cluster.hpp"
#include "tests/support/numbered.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::ctest::collector;
using keyway::ctest::must_connect;
using keyway::ctest::must_publish;
using keyway::ctest::must_subscribe;
using keyway::test::keyway_cluster;
namespace kc = keyway::client;

constexpr auto delivery_timeout = 30s;  // for all of a test's deliveries to arrive

/// The time left until `deadline` (zero once it passed).
std::chrono::milliseconds left(std::chrono::steady_clock::time_point deadline) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return std::max(d, std::chrono::milliseconds(0));
}

/// A client connection and what its subscription received, with where it is.
struct subscriber {
  std::string where;  // "n2 over unix://..."
  std::unique_ptr<kc::connection> conn;
  collector got;
};

/// One subscriber on node `node` over TCP (`unix` false) or its Unix socket.
std::unique_ptr<subscriber> open_subscriber(const keyway_cluster& cluster, std::size_t node,
                                            bool unix, const std::string& pattern,
                                            const std::string& group = {}) {
  auto s = std::make_unique<subscriber>();
  const std::string url = unix ? cluster.unix_url(node) : cluster.tcp_url(node);
  s->where = cluster.id(node) + " over " + url;
  s->conn = must_connect(url, "sub-" + cluster.id(node) + (unix ? "-unix" : "-tcp"));
  must_subscribe(*s->conn, pattern, s->got, group);
  return s;
}

/// Number of deliveries whose payload starts with "end:".
std::size_t sentinel_count(const std::vector<kc::message>& ms) {
  return static_cast<std::size_t>(std::count_if(
      ms.begin(), ms.end(), [](const kc::message& m) { return m.payload.rfind("end:", 0) == 0; }));
}

/// Runs `body(p)` on one thread per publisher and joins them; returns the
/// first error any of them reported (empty if none). No doctest assertions
/// on these threads: they report by returning a string.
std::string run_publishers(std::size_t count, const std::function<std::string(std::size_t)>& body) {
  std::vector<std::string> errors(count);
  std::vector<std::thread> threads;
  for (std::size_t p = 0; p < count; ++p)
    threads.emplace_back([&, p] {
      try {
        errors[p] = body(p);
      } catch (const std::exception& e) {
        errors[p] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (std::size_t p = 0; p < count; ++p)
    if (!errors[p].empty()) return "publisher " + std::to_string(p) + ": " + errors[p];
  return {};
}

/// Publishes without an assertion (for publisher threads): "" or the error.
std::string publish(kc::connection& c, const std::string& subject, const std::string& key,
                    const std::string& payload) {
  kc::publish_options o;
  o.key = key;
  auto r = c.publish(subject, payload, o);
  return r ? std::string() : "publish " + payload + " on " + key + ": " + r.error().to_string();
}

/// One publisher on each of nodes 0..publishers-1, all at once: `rounds`
/// times every key (key_prefix + k, k < keys) with payload "P:I", then an
/// end marker "end:P" per key, then a flush. The first error, or "".
std::string publish_rounds(const keyway_cluster& cluster, std::size_t publishers,
                           const std::string& subject, int rounds, int keys,
                           const std::string& key_prefix) {
  std::vector<std::unique_ptr<kc::connection>> pubs;
  for (std::size_t p = 0; p < publishers; ++p)
    pubs.push_back(must_connect(cluster.tcp_url(p), "pub-" + cluster.id(p)));
  return run_publishers(publishers, [&](std::size_t p) -> std::string {
    kc::connection& c = *pubs[p];
    for (int r = 0; r < rounds; ++r)
      for (int k = 0; k < keys; ++k)
        if (auto e = publish(c, subject, keyway::test::numbered(key_prefix, k),
                             std::to_string(p) + ":" + std::to_string(r * keys + k));
            !e.empty())
          return e;
    for (int k = 0; k < keys; ++k)
      if (auto e = publish(c, subject, keyway::test::numbered(key_prefix, k),
                           "end:" + std::to_string(p));
          !e.empty())
        return e;
    auto f = c.flush();
    return f ? std::string() : "flush: " + f.error().to_string();
  });
}

/// The value of the sample `series` (name and labels, exactly as rendered)
/// in a Prometheus text page; -1 if absent.
double metric_value(const std::string& page, const std::string& series) {
  const std::string at = "\n" + series + " ";
  const auto p = page.find(at);
  if (p == std::string::npos) return -1;
  return std::stod(page.substr(p + at.size(), page.find('\n', p + at.size()) - p - at.size()));
}

/// "P:I" → (P, I); "end:P" → (P, -1); anything else → (-1, -1).
std::pair<int, int> parse_payload(const std::string& s) {
  try {
    if (s.rfind("end:", 0) == 0) return {std::stoi(s.substr(4)), -1};
    const auto colon = s.find(':');
    if (colon == std::string::npos) return {-1, -1};
    return {std::stoi(s.substr(0, colon)), std::stoi(s.substr(colon + 1))};
  } catch (const std::exception&) {
    return {-1, -1};
  }
}

}  // namespace

TEST_CASE(
    "cluster steady: /status on every node lists every node active with its client and peer URLs, "
    "at one epoch, and the welcome lists them") {
  keyway_cluster cluster;
  std::set<std::int64_t> epochs;
  for (std::size_t n = 0; n < cluster.size(); ++n) {
    const auto st = cluster.status(n);
    INFO("GET /status of " << cluster.id(n) << ": " << st.dump());
    REQUIRE(st.contains("cluster"));
    const auto& c = st["cluster"];
    CHECK(c.value("name", std::string()) == cluster.name());
    CHECK(c.value("node_id", std::string()) == cluster.id(n));
    CHECK(c.value("state", std::string()) == "active");
    REQUIRE(c.contains("epoch"));
    REQUIRE(c["epoch"].is_number_integer());
    CHECK(c["epoch"].get<std::int64_t>() > 0);
    epochs.insert(c["epoch"].get<std::int64_t>());
    REQUIRE(c.contains("nodes"));
    REQUIRE(c["nodes"].is_array());
    CHECK(c["nodes"].size() == cluster.size());
    for (std::size_t m = 0; m < cluster.size(); ++m) {
      const auto it = std::find_if(c["nodes"].begin(), c["nodes"].end(), [&](const auto& e) {
        return e.is_object() && e.value("id", std::string()) == cluster.id(m);
      });
      REQUIRE_MESSAGE(it != c["nodes"].end(), "node " << cluster.id(m) << " is not listed");
      INFO("entry of " << cluster.id(m) << ": " << it->dump());
      CHECK(it->value("state", std::string()) == "active");
      CHECK(it->value("peer_url", std::string()) == cluster.at(m).config.peer_url());
      REQUIRE(it->contains("client_urls"));
      REQUIRE((*it)["client_urls"].is_array());
      const auto urls = (*it)["client_urls"].get<std::vector<std::string>>();
      CHECK_MESSAGE(std::find(urls.begin(), urls.end(), cluster.tcp_url(m)) != urls.end(),
                    "client_urls lacks the advertised " << cluster.tcp_url(m));
      // Links up from this node's one worker to each other node.
      if (m != n) CHECK(it->value("links_up", 0) == 1);
    }
  }
  CHECK_MESSAGE(epochs.size() == 1, "the nodes report " << epochs.size() << " different epochs");
  // A client of any node is told every node's client URL, to reconnect elsewhere.
  for (std::size_t n = 0; n < cluster.size(); ++n) {
    auto c = must_connect(cluster.unix_url(n), "urls");
    const auto urls = c->info().connect_urls;
    for (std::size_t m = 0; m < cluster.size(); ++m)
      CHECK_MESSAGE(std::find(urls.begin(), urls.end(), cluster.tcp_url(m)) != urls.end(),
                    "the welcome of " << cluster.id(n) << " lacks " << cluster.tcp_url(m));
  }
}

TEST_CASE(
    "cluster steady: every subscriber on every node gets every message once, in one order per "
    "key") {
  keyway_cluster cluster;  // n1, n2, n3
  REQUIRE(cluster.size() == 3);
  constexpr std::size_t publishers = 3;
  constexpr int per_publisher = 300;
  // Publisher p cycles over k0 (every publisher's), k<p+1> (its own) and k4
  // (every publisher's): shared keys interleave publishers from all nodes.
  const auto key_of = [](std::size_t p, int i) {
    switch (i % 3) {
      case 0:
        return std::string("k0");
      case 1:
        return keyway::test::numbered("k", p + 1);
      default:
        return std::string("k4");
    }
  };
  const auto keys_of = [](std::size_t p) {
    return std::vector<std::string>{"k0", keyway::test::numbered("k", p + 1), "k4"};
  };

  // Subscribers on every node, over TCP and over the Unix socket, each
  // acknowledged (by every node) before anything is published.
  std::vector<std::unique_ptr<subscriber>> subs;
  for (std::size_t n = 0; n < cluster.size(); ++n)
    for (const bool unix : {false, true})
      subs.push_back(open_subscriber(cluster, n, unix, "steady.>"));

  std::vector<std::unique_ptr<kc::connection>> pubs;
  for (std::size_t p = 0; p < publishers; ++p)
    pubs.push_back(must_connect(cluster.tcp_url(p), "pub-" + cluster.id(p)));

  const std::string failed = run_publishers(publishers, [&](std::size_t p) -> std::string {
    kc::connection& c = *pubs[p];
    const std::string subject = "steady.from." + cluster.id(p);
    for (int i = 0; i < per_publisher; ++i)
      if (auto e = publish(c, subject, key_of(p, i), std::to_string(p) + ":" + std::to_string(i));
          !e.empty())
        return e;
    for (const auto& k : keys_of(p))
      if (auto e = publish(c, subject, k, "end:" + std::to_string(p)); !e.empty()) return e;
    auto f = c.flush();
    return f ? std::string() : "flush: " + f.error().to_string();
  });
  REQUIRE_MESSAGE(failed.empty(), failed);

  const std::size_t sentinels = publishers * 3;
  const auto deadline = std::chrono::steady_clock::now() + delivery_timeout;
  for (auto& s : subs) {
    const bool all = s->got.wait_until(
        [&](const std::vector<kc::message>& ms) { return sentinel_count(ms) >= sentinels; },
        left(deadline));
    CHECK_MESSAGE(all, s->where << " got " << sentinel_count(s->got.messages()) << " of "
                                << sentinels << " sentinels and " << s->got.size()
                                << " deliveries in all; the cluster:\n"
                                << cluster.diagnosis(10));
  }

  // What each subscriber saw, per key: the payloads in arrival order.
  using per_key_t = std::map<std::string, std::vector<std::string>>;
  std::vector<per_key_t> seen(subs.size());
  std::map<std::string, std::pair<std::uint32_t, std::uint64_t>> first_stamps;  // payload → stamp
  for (std::size_t si = 0; si < subs.size(); ++si) {
    const subscriber& s = *subs[si];
    INFO("subscriber " << s.where);
    const auto got = s.got.messages();
    std::map<std::pair<int, int>, int> count;          // (publisher, counter) → deliveries
    std::map<std::pair<std::string, int>, int> last;   // (key, publisher) → last counter
    std::map<std::string, std::uint32_t> core_of_key;  // key → ownerCore
    std::size_t out_of_order = 0, core_changes = 0, bad = 0, stamp_differs = 0;
    std::string first_problem;
    for (const auto& m : got) {
      const auto [p, i] = parse_payload(m.payload);
      const bool sentinel = m.payload.rfind("end:", 0) == 0;
      if (p < 0 || p >= static_cast<int>(publishers) ||
          (!sentinel && (i < 0 || i >= per_publisher)) ||
          (!sentinel && m.key != key_of(static_cast<std::size_t>(p), i)) ||
          m.subject != "steady.from." + cluster.id(static_cast<std::size_t>(p))) {
        if (++bad == 1)
          first_problem = "unexpected delivery " + m.subject + " " + m.key + " " + m.payload;
        continue;
      }
      seen[si][m.key].push_back(m.payload);
      if (!sentinel) ++count[{p, i}];
      // Per key, one publisher's messages keep their order; its sentinel is last.
      const int order = sentinel ? per_publisher : i;
      auto [it, fresh] = last.try_emplace({m.key, p}, order);
      if (!fresh) {
        if (order <= it->second && ++out_of_order == 1)
          first_problem = "on " + m.key + " " + m.payload + " came after counter " +
                          std::to_string(it->second) + " of the same publisher";
        it->second = order;
      }
      // One key, one owner core.
      auto [c, new_key] = core_of_key.try_emplace(m.key, m.owner_core);
      if (!new_key && c->second != m.owner_core) ++core_changes;
      // The owner stamps a message once: every subscriber sees the same stamp.
      auto [st, first] =
          first_stamps.try_emplace(m.payload + "/" + m.key, std::make_pair(m.owner_core, m.seq));
      if (!first && st->second != std::make_pair(m.owner_core, m.seq)) ++stamp_differs;
    }
    std::size_t lost = 0, duplicated = 0;
    std::string lost_example, dup_example;
    for (std::size_t p = 0; p < publishers; ++p)
      for (int i = 0; i < per_publisher; ++i) {
        const auto it = count.find({static_cast<int>(p), i});
        const int n = it == count.end() ? 0 : it->second;
        if (n == 0 && lost++ == 0) lost_example = std::to_string(p) + ":" + std::to_string(i);
        if (n > 1 && duplicated++ == 0) dup_example = std::to_string(p) + ":" + std::to_string(i);
      }
    INFO("first problem: " << first_problem);
    CHECK_MESSAGE(lost == 0, lost << " of " << publishers * per_publisher << " messages lost, e.g. "
                                  << lost_example);
    CHECK_MESSAGE(duplicated == 0,
                  duplicated << " messages delivered more than once, e.g. " << dup_example);
    CHECK(bad == 0);
    CHECK_MESSAGE(out_of_order == 0, out_of_order << " deliveries out of their publisher's order");
    CHECK_MESSAGE(core_changes == 0,
                  core_changes << " deliveries with another ownerCore than the key's first");
    CHECK_MESSAGE(
        stamp_differs == 0,
        stamp_differs
            << " deliveries stamped (ownerCore, seq) differently than at another subscriber");
  }

  // Every subscriber saw the identical sequence per key.
  for (std::size_t si = 1; si < subs.size(); ++si) {
    for (const auto& [key, reference] : seen[0]) {
      const auto& mine = seen[si][key];
      if (mine == reference) continue;
      std::size_t at = 0;
      while (at < mine.size() && at < reference.size() && mine[at] == reference[at]) ++at;
      FAIL_CHECK("key " << key << ": " << subs[si]->where << " saw " << mine.size()
                        << " deliveries, " << subs[0]->where << " " << reference.size()
                        << "; they differ first at index " << at << " ("
                        << (at < mine.size() ? mine[at] : "end") << " vs "
                        << (at < reference.size() ? reference[at] : "end") << ")");
    }
    CHECK(seen[si].size() == seen[0].size());
  }
  CHECK(seen[0].size() == 5);  // k0..k4

  // The traffic shows per peer: every node sent messages to every other one
  // (each orders some keys that have subscribers everywhere), its links are
  // up, and the cluster has three active members.
  for (std::size_t n = 0; n < cluster.size(); ++n) {
    const std::string metrics =
        keyway::test::http_get(cluster.admin_port(n), "/metrics", std::chrono::seconds(2)).body;
    INFO(
        cluster.id(n) << "'s /metrics (cluster part): "
                      << metrics.substr(std::min(metrics.find("keyway_cluster_"), metrics.size())));
    CHECK(metric_value(metrics, "keyway_cluster_members{state=\"active\"}") == 3);
    for (std::size_t m = 0; m < cluster.size(); ++m) {
      if (m == n) continue;
      const std::string peer = "{peer=\"" + cluster.id(m) + "\"}";
      CHECK(metric_value(metrics, "keyway_cluster_peer_up" + peer) == 1);
      CHECK(metric_value(metrics, "keyway_cluster_peer_sent_messages_total" + peer) > 0);
      CHECK(metric_value(metrics, "keyway_cluster_peer_sent_bytes_total" + peer) > 0);
      // Batches: far fewer frames than messages (interest frames are among them).
      CHECK(metric_value(metrics, "keyway_cluster_peer_sent_frames_total" + peer) <
            metric_value(metrics, "keyway_cluster_peer_sent_messages_total" + peer));
      // Everything was delivered: nothing waits on the links (the lag is shown, and small).
      const double lag = metric_value(metrics, "keyway_cluster_peer_lag_seconds" + peer);
      CHECK(lag >= 0);
      CHECK(lag < 1);
    }
  }
}

TEST_CASE(
    "cluster steady: a queue group with one member per node gets each message once, one member per "
    "key") {
  keyway_cluster cluster;
  constexpr std::size_t publishers = 3;
  constexpr int keys = 64, rounds = 2;
  const auto key = [](int k) { return keyway::test::numbered("key-", k); };

  // One member per node (n2's over the Unix socket), one group.
  std::vector<std::unique_ptr<subscriber>> members;
  for (std::size_t n = 0; n < cluster.size(); ++n)
    members.push_back(open_subscriber(cluster, n, n == 1, "qg.>", "workers"));

  const std::string failed = publish_rounds(cluster, publishers, "qg.work", rounds, keys, "key-");
  REQUIRE_MESSAGE(failed.empty(), failed);

  // Each sentinel goes to one member: wait until the members have them all.
  const std::size_t sentinels = publishers * keys;
  const auto deadline = std::chrono::steady_clock::now() + delivery_timeout;
  std::size_t have = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    have = 0;
    for (const auto& m : members) have += sentinel_count(m->got.messages());
    if (have >= sentinels) break;
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE_MESSAGE(have >= sentinels, "the members got " << have << " of " << sentinels
                                                        << " sentinels; the cluster:\n"
                                                        << cluster.diagnosis(10));

  std::map<std::pair<int, int>, int> count;  // (publisher, n) → deliveries, all members
  std::map<std::string, std::set<std::size_t>> owners;  // key → members that got any of it
  std::size_t bad = 0;
  std::vector<std::size_t> per_member(members.size(), 0);
  for (std::size_t mi = 0; mi < members.size(); ++mi)
    for (const auto& m : members[mi]->got.messages()) {
      const auto [p, n] = parse_payload(m.payload);
      const bool sentinel = m.payload.rfind("end:", 0) == 0;
      if (p < 0 || p >= static_cast<int>(publishers) || m.subject != "qg.work" ||
          (!sentinel && (n < 0 || n >= rounds * keys || m.key != key(n % keys)))) {
        ++bad;
        continue;
      }
      owners[m.key].insert(mi);
      ++per_member[mi];
      if (!sentinel) ++count[{p, n}];
    }
  CHECK(bad == 0);
  std::size_t lost = 0, duplicated = 0;
  for (std::size_t p = 0; p < publishers; ++p)
    for (int n = 0; n < rounds * keys; ++n) {
      const auto it = count.find({static_cast<int>(p), n});
      const int c = it == count.end() ? 0 : it->second;
      lost += c == 0;
      duplicated += c > 1;
    }
  CHECK_MESSAGE(lost == 0, lost << " messages reached no member");
  CHECK_MESSAGE(duplicated == 0,
                duplicated << " messages reached more than one member (or one twice)");
  CHECK(owners.size() == static_cast<std::size_t>(keys));
  for (const auto& [k, who] : owners) {
    std::string list;
    for (const std::size_t mi : who) list += members[mi]->where + "; ";
    CHECK_MESSAGE(who.size() == 1, k << " went to " << who.size() << " members: " << list);
  }
  const auto busy =
      std::count_if(per_member.begin(), per_member.end(), [](std::size_t n) { return n > 0; });
  INFO("deliveries per member: " << per_member[0] << ", " << per_member[1] << ", "
                                 << per_member[2]);
  CHECK(busy > 1);  // 64 keys over 3 members: all on one would be chance of 3^-63
}

TEST_CASE(
    "cluster steady: requests from other nodes reach a responder on n1, and nobody anywhere means "
    "no_responders") {
  keyway_cluster cluster;
  auto responder = must_connect(cluster.tcp_url(0), "responder-n1");
  std::atomic<int> answered{0};
  kc::connection* r = responder.get();
  auto sub = r->subscribe("svc.echo", [r, &answered](const kc::message& m) {
    if (r->respond(m, "echo:" + m.payload)) ++answered;
  });
  REQUIRE_MESSAGE(sub.has_value(), (sub ? std::string() : sub.error().to_string()));

  // Requesters on n2 (TCP) and n3 (Unix socket), right after the ack.
  std::vector<std::pair<std::string, std::unique_ptr<kc::connection>>> requesters;
  requesters.emplace_back("n2 over TCP", must_connect(cluster.tcp_url(1), "req-n2"));
  requesters.emplace_back("n3 over unix", must_connect(cluster.unix_url(2), "req-n3"));
  int sent = 0;
  for (auto& [where, c] : requesters) {
    INFO("requester " << where);
    for (int i = 0; i < 20; ++i) {
      const std::string q = where.substr(0, 2) + "-" + std::to_string(i);
      kc::request_options o;
      const std::string k = "rk-" + std::to_string(i);
      if (i % 2 == 0) o.key = k;  // keyed and unkeyed requests
      auto reply = c->request("svc.echo", q, 5s, o);
      ++sent;
      REQUIRE_MESSAGE(
          reply.has_value(),
          "request " << q << ": " << (reply ? std::string() : reply.error().to_string()));
      CHECK(reply->payload == "echo:" + q);
    }
  }
  CHECK(answered.load() == sent);

  // A subject nobody subscribes to on any node: no_responders, not a timeout.
  for (std::size_t n = 0; n < cluster.size(); ++n) {
    auto c = must_connect(cluster.tcp_url(n), "nobody-" + cluster.id(n));
    auto reply = c->request("svc.nobody", "anyone?", 1s);
    INFO("request on " << cluster.id(n));
    REQUIRE_FALSE(reply.has_value());
    CHECK_MESSAGE((reply.error().code == kc::server_errc::no_responders),
                  reply.error().to_string());
  }
}

TEST_CASE(
    "cluster steady: ownerCore is one per owner node and seq rises per ownerCore at every "
    "subscriber") {
  keyway_cluster cluster;
  constexpr std::size_t publishers = 3;
  constexpr int keys = 64, rounds = 3;

  std::vector<std::unique_ptr<subscriber>> subs;
  for (std::size_t n = 0; n < cluster.size(); ++n)
    subs.push_back(open_subscriber(cluster, n, n == 1, "own.>"));
  const std::string failed = publish_rounds(cluster, publishers, "own.x", rounds, keys, "own-");
  REQUIRE_MESSAGE(failed.empty(), failed);

  const std::size_t sentinels = publishers * keys;
  const auto deadline = std::chrono::steady_clock::now() + delivery_timeout;
  for (auto& s : subs) {
    const bool all = s->got.wait_until(
        [&](const std::vector<kc::message>& ms) { return sentinel_count(ms) >= sentinels; },
        left(deadline));
    REQUIRE_MESSAGE(all, s->where << " got " << sentinel_count(s->got.messages()) << " of "
                                  << sentinels << " sentinels; the cluster:\n"
                                  << cluster.diagnosis(10));
  }

  // The owner node of each key, as cluster::placement places it for the ring
  // {n1, n2, n3}.
  auto placed = keyway::cluster::placement::build({cluster.id(0), cluster.id(1), cluster.id(2)}, 1);
  REQUIRE_MESSAGE(placed.has_value(), (placed ? std::string() : placed.error()));

  std::map<std::string, std::uint32_t> reference;  // key → ownerCore at the first subscriber
  for (const auto& s : subs) {
    INFO("subscriber " << s->where);
    const auto got = s->got.messages();
    CHECK(got.size() == publishers * (rounds * keys + keys));
    std::map<std::string, std::uint32_t> core_of_key;
    std::map<std::uint32_t, std::uint64_t> last_seq;
    std::size_t core_changes = 0, seq_not_rising = 0;
    for (const auto& m : got) {
      auto [it, fresh] = core_of_key.try_emplace(m.key, m.owner_core);
      if (!fresh && it->second != m.owner_core) ++core_changes;
      auto [ls, first] = last_seq.try_emplace(m.owner_core, m.seq);
      if (!first) {
        if (m.seq <= ls->second) ++seq_not_rising;
        ls->second = m.seq;
      }
    }
    CHECK_MESSAGE(core_changes == 0,
                  core_changes << " deliveries with another ownerCore than their key's first");
    CHECK_MESSAGE(seq_not_rising == 0,
                  seq_not_rising << " deliveries whose seq did not rise for their ownerCore");
    // Three owner nodes with one worker each: three ownerCores.
    std::set<std::uint32_t> cores;
    for (const auto& [k, c] : core_of_key) cores.insert(c);
    CHECK_MESSAGE(cores.size() == 3, "ownerCores seen: " << cores.size());
    // Keys share an ownerCore exactly when placement gives them the same node.
    std::size_t disagree = 0;
    std::string example;
    for (const auto& [k1, c1] : core_of_key)
      for (const auto& [k2, c2] : core_of_key) {
        const bool same_node = placed->owner(k1) == placed->owner(k2);
        if (same_node != (c1 == c2) && disagree++ == 0)
          example = k1 + " (" + placed->owner(k1) + ", core " + std::to_string(c1) + ") and " + k2 +
                    " (" + placed->owner(k2) + ", core " + std::to_string(c2) + ")";
      }
    CHECK_MESSAGE(disagree == 0, disagree << " key pairs where sharing an ownerCore differs from "
                                             "sharing an owner node, e.g. "
                                          << example);
    if (reference.empty()) reference = core_of_key;
    CHECK(core_of_key == reference);  // every node names the owners alike
  }
  // /status tells which node an ownerCore is: ownerCore / 256 is the owner
  // node's owner_core_tag (one worker each: ownerCore % 256 is 0).
  std::map<std::string, std::uint32_t> tag_of_node;
  const auto status = cluster.status(0);
  for (const auto& node : status["cluster"]["nodes"])
    tag_of_node[node.value("id", std::string())] = node.value("owner_core_tag", 0u);
  REQUIRE(tag_of_node.size() == 3);
  for (const auto& [k, c] : reference) {
    INFO("key " << k << " ownerCore " << c << " placed on " << placed->owner(k));
    CHECK(c / 256 == tag_of_node[placed->owner(k)]);
    CHECK(c % 256 == 0);
  }
}

TEST_CASE("cluster steady: a flush covers the publishes forwarded to other nodes") {
  // flush() means "routed": once it returns, every earlier publish was
  // ordered by its owner, wherever that is. So a subscription made after the
  // flush sees none of them, only what is published after it.
  keyway_cluster cluster;
  // An early subscriber on n3: with interest somewhere, the publishes are
  // forwarded to their owners rather than dropped where they are read.
  collector early_got;
  auto early = must_connect(cluster.tcp_url(2), "early-sub");
  must_subscribe(*early, "flush.t", early_got);
  auto pub = must_connect(cluster.tcp_url(0), "flusher");
  constexpr int before = 200000;  // enough to leave a backlog on the links when the pong is early
  for (int i = 0; i < before; ++i)
    must_publish(*pub, "flush.t", keyway::test::numbered("k", i % 64), "before");
  auto f = pub->flush();
  REQUIRE_MESSAGE(f.has_value(), "flush: " << (f ? std::string() : f.error().to_string()));

  collector got;
  auto sub = must_connect(cluster.tcp_url(1), "late-sub");
  must_subscribe(*sub, "flush.t", got);
  for (int k = 0; k < 64; ++k)
    must_publish(*pub, "flush.t", keyway::test::numbered("k", k), "after");
  REQUIRE(got.wait_until([](const auto& ms) { return ms.size() >= 64; }, 10s));
  std::this_thread::sleep_for(200ms);  // anything late would show up now
  const auto ms = got.messages();
  const auto stale = std::count_if(ms.begin(), ms.end(),
                                   [](const kc::message& m) { return m.payload == "before"; });
  CHECK_MESSAGE(stale == 0, stale << " messages published before the flush were delivered to a "
                                     "subscription made after it");
  CHECK(ms.size() == 64);
}
