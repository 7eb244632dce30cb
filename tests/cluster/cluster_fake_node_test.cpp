// Cluster nodes against a node played by this test with the cluster
// library: "f1" registers in etcd like a keywayd (membership), admits the
// real nodes' links and sees what they send, and dials node n1 to send it
// frames a keywayd would not send on cue. A real etcd and two keywayd nodes
// (n1, n2).
//
// Fencing (docs/cluster.md, "Failures"): n1 takes a delivery for a key only
// from the key's owner under the epoch the delivery carries. f1 sends
// deliveries stamped with the epochs the test chooses; a second played
// node, "f2", joins to move the ring on when the test wants. One case each:
//  - stamped with n1's epoch, from the owner: delivered;
//  - stamped with an older ring under which f1 owned nothing: dropped as
//    stale_owner, logged;
//  - stamped with a newer epoch: held, and what follows on the link behind it,
//    until n1's watch reaches that epoch; then both delivered, in order;
//  - stamped with the old ring for a key that moved to f2: delivered while
//    that hand-off is open (the old owner drains), dropped once it is over;
//  - stamped with an epoch n1 never reaches: the link is closed after a
//    heartbeat's wait, and nothing of it delivered.
//
// Links that come back: a peer's subscriptions stay while its new link's
// snapshot is on its way, and those the snapshot leaves out go when it ends.
#include <doctest/doctest.h>

#include <asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <keyway/client.hpp>

#include "cluster/membership.hpp"
#include "cluster/peer_link.hpp"
#include "cluster/placement.hpp"
#include "tests/cluster/cluster_clients.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/keyway_cluster.hpp"
#include "tests/support/numbered.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::ctest::collector;
using keyway::ctest::must_connect;
using keyway::ctest::must_subscribe;
using keyway::test::keyway_cluster;
namespace cl = keyway::cluster;
namespace kc = keyway::client;

/// Runs `io` until `done()` holds; false after `limit`.
bool pump_until(asio::io_context& io, const std::function<bool()>& done,
                std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_for(5ms);
  }
  return true;
}

void pump(asio::io_context& io, std::chrono::milliseconds d) {
  pump_until(
      io, [] { return false; }, d);
}

/// A series' value in node i's /metrics; -1 if it is not there.
double metric(const keyway_cluster& c, std::size_t i, const std::string& series) {
  const std::string body = keyway::test::http_get(c.admin_port(i), "/metrics", 2s).body;
  const auto at = body.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(body.substr(at + series.size() + 2));
}

/// A node this test plays (see the top of the file).
class fake_node {
 public:
  fake_node(asio::io_context& io, const keyway_cluster& c, std::string id)
      : io_(io),
        cluster_(c.name()),
        id_(std::move(id)),
        listener_(
            io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0),
            [this](const cl::peer_hello&) {
              return keyway::result<cl::peer_listener::admission, std::string>(
                  cl::peer_listener::admission{
                      cl::peer_welcome{id_, member_ ? member_->lease() : 0, 0, 1}, 0});
            },
            {},
            [this](const cl::peer_hello& h, std::uint32_t, cl::peer_frame& f) {
              if (const auto* in = std::get_if<cl::peer_interest>(&f)) {
                for (const auto& ch : in->changes)
                  if (ch.add && h.node_id == "n1") n1_subs_[ch.pattern] = {ch.conn, ch.sid};
                if (in->snapshot_done && h.node_id == "n1") ++n1_snapshots_;
              }
              if (const auto* d = std::get_if<cl::peer_delivers>(&f))
                for (const auto& item : d->items) received_.emplace_back(item.msg.subject);
              return cl::peer_listener::taken::yes;
            }) {
    cl::membership_config cfg;
    cfg.cluster = c.name();
    cfg.self.id = id_;
    cfg.self.client_urls = {"tcp://127.0.0.1:" + std::to_string(listener_.port())};
    cfg.self.peer_url = "tcp://127.0.0.1:" + std::to_string(listener_.port());
    cfg.self.workers = 1;
    cfg.etcd_endpoints = {c.etcd().endpoint()};
    cfg.lease_ttl = 2000ms;
    member_ = std::make_unique<cl::membership>(std::move(cfg));
    const auto joined = member_->join();
    REQUIRE_MESSAGE(joined.has_value(), id_ << " join: " << (joined ? "" : joined.error()));
  }

  ~fake_node() {
    if (link_) link_->stop();
    listener_.close();
    if (member_) (void)member_->leave();
  }

  void activate() {
    const auto r = member_->set_state(cl::node_state::active);
    REQUIRE_MESSAGE(r.has_value(), id_ << " active: " << (r ? "" : r.error()));
  }

  /// n1's subscription to `pattern` (conn, sid), once n1 announced it.
  bool knows(const std::string& pattern) const { return n1_subs_.count(pattern) != 0; }

  /// Dials n1 (worker 0's link, as a keywayd with one worker would).
  void dial(std::uint16_t peer_port, std::int64_t epoch) {
    cl::peer_hello h;
    h.cluster = cluster_;
    h.node_id = id_;
    h.incarnation = member_->lease();
    h.epoch = epoch;
    h.worker = 0;
    h.protocol_version = cl::peer_protocol_version();
    link_ = cl::peer_dialer::start(
        io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), peer_port), h,
        {[this](const cl::peer_welcome&) { ++ups_; },
         [this](const std::string& why) { downs_.push_back(why); }});
  }
  /// Closes the link to n1 (dial() opens a new one).
  void hang_up() {
    link_->stop();
    link_.reset();
  }
  bool up() const { return link_ && link_->up(); }
  /// Announces subscriptions of this node to n1, as a worker's snapshot does
  /// (`done`: the snapshot ends here).
  void announce(const std::vector<cl::peer_interest_change>& subs, bool done) {
    link_->send_frames(cl::encode_peer_frame(cl::peer_interest{subs, done}));
  }
  /// Snapshots of n1's subscriptions received (one per link from n1).
  std::size_t n1_snapshots() const { return n1_snapshots_; }
  /// Closes every link the real nodes dialled to this node, and accepts no
  /// more: this node answers nothing from now on.
  void drop_links() { listener_.close(); }
  /// The subjects of the deliveries other nodes sent this node, in order.
  const std::vector<std::string>& received() const { return received_; }
  std::size_t ups() const { return ups_; }
  const std::vector<std::string>& downs() const { return downs_; }

  /// One delivery to n1's subscription to "fence.>", as the owner of `key`
  /// under ring `epoch`.
  void deliver(std::int64_t epoch, const std::string& key, const std::string& payload) {
    const auto [conn, sid] = n1_subs_.at("fence.>");
    const cl::peer_target target{conn, sid};
    const cl::peer_message_view v{
        "fence.x", std::as_bytes(std::span(key)), std::as_bytes(std::span(payload)), "", {}};
    const cl::peer_deliver d{v, ++seq_, (cl::placement::member_of(id_) & 0xFFFFFFu) << 8, epoch,
                             std::span(&target, 1)};
    std::string bytes;
    cl::encode_delivers(bytes, std::span(&d, 1));
    link_->send_frames(bytes);
  }

 private:
  asio::io_context& io_;
  std::string cluster_;
  std::string id_;
  cl::peer_listener listener_;
  std::unique_ptr<cl::membership> member_;
  std::map<std::string, std::pair<std::uint64_t, std::uint32_t>> n1_subs_;
  std::shared_ptr<cl::peer_dialer> link_;
  std::size_t ups_ = 0;
  std::vector<std::string> downs_;
  std::vector<std::string> received_;
  std::size_t n1_snapshots_ = 0;
  std::uint64_t seq_ = 0;
};

/// Makes `f` active and waits (running `io`) until n1's ring moved past
/// epoch `after` and `also()` holds; then dials n1 from `f` at that epoch
/// and waits for the link. Returns n1's new epoch.
std::int64_t join_and_dial(asio::io_context& io, const keyway_cluster& c, fake_node& f,
                           std::int64_t after, const std::function<bool()>& also) {
  f.activate();
  std::int64_t epoch = 0;
  REQUIRE_MESSAGE(pump_until(
                      io,
                      [&] {
                        epoch = static_cast<std::int64_t>(metric(c, 0, "keyway_cluster_epoch"));
                        return epoch > after && also();
                      },
                      10s),
                  "n1 did not move to a ring with the played node, or did not announce its "
                  "subscriptions to it");
  f.dial(c.at(0).config.peer_port, epoch);
  REQUIRE(pump_until(
      io, [&] { return f.up(); }, 5s));
  return epoch;
}

/// Publishes `subject` with key `key` on `c` and waits for the ack: the
/// number of subscriptions it reached (another node's count as one each).
std::uint32_t publish_reached(kc::connection& c, const std::string& subject,
                              const std::string& key) {
  kc::publish_options o;
  o.key = key;
  auto a = c.publish_ack(subject, "x", o);
  REQUIRE_MESSAGE(a.has_value(), subject << ": " << a.error().to_string());
  return *a;
}

/// A key whose owner is `first` in ring `a` and `second` in ring `b`.
std::string key_owned(const std::vector<std::string>& a, const std::string& first,
                      const std::vector<std::string>& b, const std::string& second) {
  const auto pa = cl::placement::build(a, 1);
  const auto pb = cl::placement::build(b, 2);
  REQUIRE(pa.has_value());
  REQUIRE(pb.has_value());
  for (int i = 0; i < 10'000; ++i) {
    const std::string k = keyway::test::numbered("k", i);
    if (pa->owner(k) == first && pb->owner(k) == second) return k;
  }
  FAIL("no key owned by " << first << " then by " << second);
  return {};
}

std::vector<std::string> payloads(const collector& got) {
  std::vector<std::string> out;
  for (const auto& m : got.messages()) out.push_back(m.payload);
  return out;
}

/// Two real nodes, n1 and n2, with etcd; n1's epoch before a played node
/// joins; the io_context the played nodes run on.
struct two_nodes {
  keyway_cluster cluster{[] {
    keyway::test::cluster_options o;
    o.nodes = 2;
    return o;
  }()};
  std::int64_t e0 = static_cast<std::int64_t>(metric(cluster, 0, "keyway_cluster_epoch"));
  asio::io_context io;
};

}  // namespace

TEST_CASE_FIXTURE(
    two_nodes,
    "cluster fencing: a node takes a delivery only from the key's owner under its epoch: a newer "
    "epoch waits, a stale owner's is dropped and counted") {
  const std::string stale = "keyway_dropped_messages_total{reason=\"stale_owner\"}";
  const std::string link_down = "keyway_dropped_messages_total{reason=\"peer_link_down\"}";
  REQUIRE(e0 > 0);
  CHECK(metric(cluster, 0, stale) == 0);

  auto sub = must_connect(cluster.tcp_url(0), "fence-sub");
  collector got;
  must_subscribe(*sub, "fence.>", got);

  fake_node f1(io, cluster, "f1");
  fake_node f2(io, cluster, "f2");  // joining: not in the ring yet
  const std::int64_t e1 = join_and_dial(io, cluster, f1, e0, [&] { return f1.knows("fence.>"); });

  const std::vector<std::string> ring1{"f1", "n1", "n2"};
  const std::vector<std::string> ring2{"f1", "f2", "n1", "n2"};
  const std::string stays = key_owned(ring1, "f1", ring2, "f1");
  const std::string moves = key_owned(ring1, "f1", ring2, "f2");

  // The owner under n1's epoch: delivered.
  f1.deliver(e1, stays, "owner");
  REQUIRE_MESSAGE(pump_until(
                      io, [&] { return got.size() == 1; }, 5s),
                  "n1's log:\n"
                      << cluster.log(0));

  // Under the ring before f1 joined, f1 owned nothing: a stale owner's.
  f1.deliver(e0, stays, "stale-e0");
  REQUIRE(pump_until(
      io, [&] { return metric(cluster, 0, stale) == 1; }, 5s));

  // A newer epoch than n1's: held, with what follows it, until n1 gets there.
  f1.deliver(e1 + 1, stays, "newer");
  f1.deliver(e1, stays, "behind-newer");
  pump(io, 150ms);
  CHECK(payloads(got) == std::vector<std::string>{"owner"});
  f2.activate();  // the ring moves to e2 > e1
  REQUIRE_MESSAGE(pump_until(
                      io, [&] { return got.size() == 3; }, 5s),
                  "got " << got.size() << "; n1's log:\n"
                         << cluster.log(0));
  CHECK(payloads(got) == std::vector<std::string>{"owner", "newer", "behind-newer"});
  CHECK(f1.downs().empty());  // the wait did not cost the link
  const auto e2 = static_cast<std::int64_t>(metric(cluster, 0, "keyway_cluster_epoch"));
  REQUIRE(e2 > e1);

  // The hand-off from ring 1 to ring 2 waits for f1 and f2, which never fence:
  // while it is open, f1 may still deliver what it ordered by ring 1, also
  // for the key that moved to f2.
  f1.deliver(e1, moves, "moved-during-handoff");
  REQUIRE(pump_until(
      io, [&] { return got.size() == 4; }, 5s));
  // Once n1 gives up on it (cluster_node::handoff_timeout(): 5 s here), f2
  // owns that key: f1's late deliveries for it are a stale owner's; for the
  // key it kept, they still count.
  REQUIRE(pump_until(
      io, [&] { return metric(cluster, 0, "keyway_cluster_handoff_timeouts_total") >= 2; }, 20s));
  f1.deliver(e1, moves, "moved-after-handoff");
  f1.deliver(e1, stays, "kept-after-handoff");
  REQUIRE(pump_until(
      io, [&] { return got.size() == 5; }, 5s));
  CHECK(metric(cluster, 0, stale) == 2);
  CHECK(payloads(got) == std::vector<std::string>{"owner", "newer", "behind-newer",
                                                  "moved-during-handoff", "kept-after-handoff"});
  CHECK(cluster.log(0).find("no longer owns their keys") != std::string::npos);

  // An epoch n1 never reaches: it waits a heartbeat, then closes the link.
  const double down_before = metric(cluster, 0, link_down);
  f1.deliver(e2 + 1000, stays, "never");
  REQUIRE(pump_until(
      io, [&] { return !f1.downs().empty(); }, 5s));
  pump(io, 100ms);
  CHECK(metric(cluster, 0, link_down) == down_before + 1);
  CHECK(got.size() == 5);
  CHECK(cluster.log(0).find("etcd watch is still at epoch") != std::string::npos);
}

TEST_CASE_FIXTURE(
    two_nodes,
    "cluster links: a link that comes back keeps the peer's subscriptions until its snapshot ends, "
    "then drops those it left out") {
  fake_node f1(io, cluster, "f1");
  const std::int64_t e1 = join_and_dial(io, cluster, f1, e0, [] { return true; });
  const std::uint16_t n1_peer_port = cluster.at(0).config.peer_port;
  // Keys n1 orders itself: the acks below count what n1 matched.
  const std::vector<std::string> ring{"f1", "n1", "n2"};
  const std::string key = key_owned(ring, "n1", ring, "n1");
  auto pub = must_connect(cluster.tcp_url(0), "relink-pub");

  const cl::peer_interest_change kept{true, "kept.>", "", 1, 11, 1, 0};
  const cl::peer_interest_change gone{true, "gone.>", "", 2, 11, 2, 0};
  f1.announce({kept, gone}, true);
  REQUIRE(pump_until(
      io, [&] { return publish_reached(*pub, "kept.a", key) == 1; }, 5s));
  CHECK(publish_reached(*pub, "gone.a", key) == 1);

  // A new link from the same worker of the same incarnation. Until its
  // snapshot ends, what the earlier link announced still holds.
  f1.hang_up();
  f1.dial(n1_peer_port, e1);
  REQUIRE(pump_until(
      io, [&] { return f1.up(); }, 5s));
  pump(io, 100ms);
  CHECK(publish_reached(*pub, "kept.b", key) == 1);
  CHECK(publish_reached(*pub, "gone.b", key) == 1);
  // The snapshot names only "kept.>": "gone.>" was removed while the link was down.
  f1.announce({kept}, true);
  REQUIRE(pump_until(
      io, [&] { return publish_reached(*pub, "gone.c", key) == 0; }, 5s));
  // (Until n1 applied the snapshot, gone.c still reached f1: a new subject now.)
  CHECK(publish_reached(*pub, "gone.d", key) == 0);
  CHECK(publish_reached(*pub, "kept.d", key) == 1);
  REQUIRE(pump_until(
      io, [&] { return !f1.received().empty() && f1.received().back() == "kept.d"; }, 5s));
  const auto& got = f1.received();
  for (const std::string subject : {"kept.a", "gone.a", "kept.b", "gone.b", "kept.d"})
    CHECK_MESSAGE(std::find(got.begin(), got.end(), subject) != got.end(),
                  subject << " did not reach f1");
  CHECK(std::find(got.begin(), got.end(), "gone.d") == got.end());
}

TEST_CASE_FIXTURE(
    two_nodes,
    "cluster links: a subscribe waiting for a node that stops answering is acked once the link "
    "to it fails") {
  fake_node f1(io, cluster, "f1");
  // f1 never answers interest with interestApplied: a subscribe on n1 waits for it.
  (void)join_and_dial(io, cluster, f1, e0, [&] { return f1.n1_snapshots() > 0; });
  auto sub = must_connect(cluster.tcp_url(0), "silent-peer-sub");
  collector got;
  const auto started = std::chrono::steady_clock::now();
  auto subscribed = std::async(std::launch::async, [&] {
    return sub->subscribe("waits.>", got.handler(), kc::subscribe_options{});
  });
  pump(io, 300ms);
  REQUIRE(subscribed.wait_for(0s) == std::future_status::timeout);  // waiting for f1
  f1.drop_links();
  pump_until(
      io, [&] { return subscribed.wait_for(0s) == std::future_status::ready; }, 15s);
  const auto took = std::chrono::steady_clock::now() - started;
  const auto r = subscribed.get();
  CHECK_MESSAGE(r.has_value(), (r ? "" : r.error().to_string()));
  // Well before the client's own 10 s deadline (must_connect's op_timeout).
  CHECK(took < 5s);
}
