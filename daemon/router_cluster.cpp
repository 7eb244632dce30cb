// router's cluster half (docs/cluster.md, "Forwarding"): what a worker does
// when keywayd runs as a node of a cluster. Without [cluster] none of it runs
// (ctx_.cluster is null).
//
// Links: every worker dials every other member once (peers_, by node index)
// and sends on its own link, in order, everything it has for that node:
// publishes whose key the node owns (forward), copies of what this worker
// ordered for the node's subscribers (deliver), its connections'
// subscription changes (interest; a full snapshot whenever the link comes
// up), answers to the node's forwarded publishes (reply), hand-off steps
// (fence, "Ring changes" below) and ping barriers (barrier). Worker 0 runs
// the peer listener and takes in what every other node sends, handing each
// frame to the worker it is for through the mesh, as it does a socket.
//
// Batches: forwarded publishes and deliveries for a node are gathered over a
// worker's turn (peer_out::batch) and sent at its end, or once large, as one
// `forwards` and one `delivers` frame: per-frame costs (a Cap'n Proto message
// built and read, a dispatch on the receiving side) are paid per batch, not
// per message. Any other frame to the node (interest, reply, fence, barrier)
// sends the batch first, so it still follows the data it is about.
//
// Order: a key's messages are all ordered by one worker of one node, which
// sends each subscriber node's copies on its one FIFO link; the receiving
// worker 0 hands them to the subscribers' workers on FIFO rings. So every
// subscriber in the cluster sees one order per key.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <string>

#include "core/assert.hpp"
#include "core/overloaded.hpp"
#include "daemon/cluster_node.hpp"
#include "daemon/connection.hpp"
#include "daemon/router.hpp"
#include "proto/subject.hpp"

namespace keyway::daemon {

namespace {

using core::overloaded;

/// Frames queued on one link beyond which a forwarded publish waits (the
/// publisher is paused, as for a full ring) and a delivery is dropped.
constexpr std::size_t max_link_queue = 64u << 20;
/// Subscription changes per interest frame in a snapshot.
constexpr std::size_t snapshot_batch = 512;
/// A node's batch is sent once it holds this many messages or bytes, before
/// the turn ends (and stays well under a peer frame's 1 MiB limit unless one
/// message alone is larger).
constexpr std::size_t batch_max_messages = 1024;
constexpr std::size_t batch_max_bytes = 256u << 10;
/// Older rings worker 0 keeps for fencing: a frame stamped with an epoch
/// older than these is stale.
constexpr std::size_t max_past_rings = 8;

/// Adds `n` to `count`; true when the count passes a power of two, so that a
/// line logged then stays sparse under a flood.
bool passes_power_of_two(std::uint64_t& count, std::uint64_t n = 1) {
  const std::uint64_t before = count;
  count += n;
  return std::bit_width(before) != std::bit_width(count);
}

cluster::peer_message_view view_of(const shared_message& m) {
  cluster::peer_message_view v{m.subject(), m.key(), m.payload(), m.reply_to(), {}};
  m.for_each_header([&](const header_view& h) { v.headers.emplace_back(h.name, h.value); });
  return v;
}

cluster::peer_interest_change change_of(const sub_spec& s) {
  return {s.add, s.pattern, s.group, s.ref.uid, s.ref.conn, s.ref.sid, s.request_id};
}

}  // namespace

cluster::peer_dialer* router::link_to(std::uint32_t node) noexcept {
  if (node >= peers_.size() || !peers_[node].dialer || !peers_[node].dialer->up()) return nullptr;
  return peers_[node].dialer.get();
}

bool router::unreachable(std::uint32_t node,
                         std::chrono::steady_clock::time_point now) const noexcept {
  if (node >= peers_.size() || !peers_[node].dialer || peers_[node].dialer->up()) return false;
  const auto since = peers_[node].down_since;
  return since != std::chrono::steady_clock::time_point{} && now - since > unreachable_after();
}

std::chrono::milliseconds router::unreachable_after() const noexcept {
  // Longer than the lease, with the margin a dead node's lease needs to
  // expire in etcd and the new ring to arrive: a crashed node is handled by
  // the ring change (its keys move, nothing refused), and this only applies
  // to a node that etcd still holds.
  return 2 * ctx_.cluster->lease_ttl();
}

void router::refuse_unreachable(const publish_op& op, std::uint32_t node) {
  const bool log = passes_power_of_two(unreachable_refused_);
  if (op.ack_id == 0) probe_.dropped(drop_reason::peer_link_down, 1);
  // The reason is written only for an error frame or a log line, not for
  // every un-acked publish dropped.
  if (op.ack_id == 0 && !log) return;
  const auto down = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - peers_[node].down_since);
  const std::string why = "the key's owner node \"" + peers_[node].id +
                          "\" has been unreachable for " + std::to_string(down.count()) +
                          " ms, over twice its lease (cluster.lease_ttl " +
                          std::to_string(ctx_.cluster->lease_ttl().count()) +
                          " ms) while etcd still lists it; the publish was not delivered";
  if (op.ack_id != 0)
    if (connection* c = find_conn(op.conn))
      c->send_error(proto::errc::owner_lost, why, op.ack_id, false);
  if (log)
    spdlog::warn("cluster: worker {}: refused a publish: {} ({} so far)", w_.id(), why,
                 unreachable_refused_);
}

void router::peer_batch::clear() noexcept {
  held.clear();
  forwards.clear();
  delivers.clear();
  target_counts.clear();
  targets.clear();
  bytes = 0;
}

void router::send_peer(std::uint32_t node, cluster::peer_dialer& d, std::string_view frame) {
  if (!peers_[node].batch.empty()) send_batch(node);
  d.send_frames(frame);
  probe_.peer_sent(node, 1, frame.size(), 0);
}

void router::send_batch(std::uint32_t node) {
  peer_batch& b = peers_[node].batch;
  if (b.empty()) return;
  cluster::peer_dialer* d = link_to(node);
  if (d == nullptr) {
    // The link failed this turn: what it had queued went with it, and so does this.
    probe_.dropped(drop_reason::peer_link_down, b.held.size());
    b.clear();
    return;
  }
  frames_.clear();
  if (!b.forwards.empty()) cluster::encode_forwards(frames_, b.forwards);
  if (!b.delivers.empty()) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < b.delivers.size(); ++i) {
      b.delivers[i].targets = std::span(b.targets).subspan(at, b.target_counts[i]);
      at += b.target_counts[i];
    }
    cluster::encode_delivers(frames_, b.delivers);
  }
  d->send_frames(frames_);
  const auto frames = static_cast<std::uint32_t>(!b.forwards.empty()) + !b.delivers.empty();
  probe_.peer_sent(node, frames, frames_.size(), static_cast<std::uint32_t>(b.held.size()));
  b.clear();
}

void router::batch_added(std::uint32_t node) {
  const peer_batch& b = peers_[node].batch;
  if (b.held.size() >= batch_max_messages || b.bytes >= batch_max_bytes) send_batch(node);
}

void router::note_link_queues() {
  for (std::uint32_t node = 1; node < peers_.size(); ++node) {
    const cluster::peer_dialer* d = peers_[node].dialer.get();
    if (d == nullptr) continue;
    const auto since = d->oldest_queued().time_since_epoch();  // zero: nothing queued
    probe_.peer_queued(node, d->queued_bytes(),
                       static_cast<std::uint64_t>(
                           std::chrono::duration_cast<std::chrono::nanoseconds>(since).count()));
  }
}

void router::refresh_cluster() {
  cluster_node& cn = *ctx_.cluster;
  // Every map published since the last look, in order: a ring change in any
  // of them starts a hand-off.
  for (const auto& m : cn.maps_since(map_generation_)) {
    if (map_ && m->epoch != map_->epoch) {
      const bool took_part = begin_handoff(map_, m);
      if (w_.id() == 0) {
        // Worker 0 fences what other nodes send by the rings before this one.
        past_rings_.push_back(
            {map_, !took_part, std::chrono::steady_clock::now() + cn.handoff_timeout()});
        if (past_rings_.size() > max_past_rings) past_rings_.pop_front();
      }
    }
    map_ = m;
    map_generation_ = m->generation;
  }
  if (!transitions_.empty()) prune_handoffs();
  connect_urls_ = map_->client_urls;
  std::uint32_t top = 0;
  for (const auto& p : map_->peers) top = std::max(top, p.index);
  if (peers_.size() <= top) peers_.resize(top + 1);
  if (per_node_.size() <= top) per_node_.resize(top + 1);
  // Dial new members and new incarnations (theirs, or this node's after it
  // registered again: hellos carry it); stop dialling the gone.
  const std::int64_t own_lease = cn.lease();
  const bool redial_all = own_lease != dialed_as_;
  dialed_as_ = own_lease;
  std::vector<bool> present(peers_.size(), false);
  for (const auto& p : map_->peers) {
    present[p.index] = true;
    peer_out& out = peers_[p.index];
    if (out.dialer && out.lease == p.lease && !redial_all) continue;
    if (out.dialer) {
      send_batch(p.index);  // on the old incarnation's link, whatever it still takes
      out.dialer->stop();
      cn.link_changed(w_.id(), p.index, false);
      fail_forwarded(p.index, "its link is redialled for a new incarnation");
      release_interest_waits(p.index);
    }
    out = {p.id, p.lease, nullptr, {}, std::chrono::steady_clock::now()};
    if (!p.endpoint) continue;
    cluster::peer_hello hello;
    hello.cluster = cn.cluster_name();
    hello.node_id = cn.self_id();
    hello.incarnation = own_lease;
    hello.epoch = map_->epoch;
    hello.worker = w_.id();
    const std::uint32_t node = p.index;
    out.dialer = cluster::peer_dialer::start(
        w_.io(), *p.endpoint, std::move(hello),
        {[this, node](const cluster::peer_welcome&) { link_up(node); },
         [this, node](const std::string& why) { link_down(node, why); }},
        cn.link_options());
  }
  for (std::uint32_t i = 1; i < peers_.size(); ++i) {
    if (present[i] || !peers_[i].dialer) continue;
    send_batch(i);
    fail_forwarded(i, "it left the cluster");
    release_interest_waits(i);
    peers_[i].dialer->stop();
    peers_[i].dialer.reset();
    cn.link_changed(w_.id(), i, false);
  }
  if (w_.id() != 0) return;
  // Worker 0: close the links of incarnations no longer in the cluster. A node
  // whose lease expired while it still ran (cut off from etcd only) then sees
  // its links fail, and with etcd silent too it stops ordering.
  if (listener_) {
    const std::size_t closed = listener_->close_if([&](const cluster::peer_hello& h) {
      for (const auto& p : map_->peers)
        if (p.id == h.node_id) return p.lease != h.incarnation;
      return true;
    });
    if (closed != 0)
      spdlog::info("cluster: closed {} link(s) of node incarnations no longer in the cluster",
                   closed);
  }
  // Worker 0: forget the subscriptions of nodes gone, or back as a new incarnation.
  std::vector<std::uint32_t> gone;
  for (const auto& [node, lease] : remote_leases_) {
    const cluster_peer* p = map_->peer(node);
    if (p == nullptr || p->lease != lease) gone.push_back(node);
  }
  for (const std::uint32_t node : gone) {
    forget_node(node);
    remote_leases_.erase(node);
    std::erase_if(remote_barriers_, [&](const auto& b) { return std::get<0>(b.first) == node; });
  }
}

void router::stop_cluster() {
  for (auto& p : peers_) {
    p.batch.clear();
    if (p.dialer) {
      p.dialer->stop();
      p.dialer.reset();
    }
  }
  if (listener_) listener_->close();
}

void router::start_peer_listener() {
  listener_ = std::make_unique<cluster::peer_listener>(
      w_.io(), std::move(*ctx_.peer_acceptor),
      [this](const cluster::peer_hello& h) { return admit_peer(h); }, ctx_.cluster->link_options(),
      [this](const cluster::peer_hello& h, std::uint32_t node, cluster::peer_frame& f) {
        return on_peer_frame(h, node, f);
      });
}

result<cluster::peer_listener::admission, std::string> router::admit_peer(
    const cluster::peer_hello& h) {
  cluster_node& cn = *ctx_.cluster;
  if (cn.generation() != map_generation_) refresh_cluster();
  if (h.cluster != cn.cluster_name())
    return "cluster \"" + h.cluster + "\" is not this node's cluster \"" + cn.cluster_name() + "\"";
  if (h.protocol_version != cluster::peer_protocol_version())
    return "peer protocol version " + std::to_string(h.protocol_version) + " is not this node's (" +
           std::to_string(cluster::peer_protocol_version()) + ")";
  const cluster_peer* p = nullptr;
  for (const auto& q : map_->peers)
    if (q.id == h.node_id) p = &q;
  if (p == nullptr)
    return "node \"" + h.node_id + "\" is not a member of cluster \"" + cn.cluster_name() +
           "\" as node \"" + cn.self_id() + "\" sees it in etcd (yet)";
  if (p->lease != h.incarnation)
    return "node \"" + h.node_id + "\" dialled as incarnation " + std::to_string(h.incarnation) +
           ", but etcd shows incarnation " + std::to_string(p->lease);
  if (h.worker >= p->workers)
    return "node \"" + h.node_id + "\" dialled from worker " + std::to_string(h.worker) +
           ", but registered " + std::to_string(p->workers) + " workers";
  // A new incarnation: what its earlier one announced is gone. A new link
  // from the same incarnation's worker: the snapshot that follows says it all
  // again. Its subscriptions stay meanwhile (removing them until the snapshot
  // is in would miss their deliveries); those the snapshot leaves out go
  // when it ends (on_peer_interest).
  const auto held = remote_leases_.find(p->index);
  if (held != remote_leases_.end() && held->second != p->lease) {
    forget_node(p->index);
  } else {
    auto& unconfirmed = unconfirmed_[{p->index, h.worker}];
    unconfirmed.clear();
    for (const auto& [key, sub] : remote_subs_) {
      const auto their_uid = static_cast<std::uint32_t>(key);
      if ((key >> 32) == p->index && (their_uid >> 24) == h.worker) unconfirmed.insert(their_uid);
    }
  }
  remote_leases_[p->index] = p->lease;
  return cluster::peer_listener::admission{
      cluster::peer_welcome{cn.self_id(), cn.lease(), map_->epoch, workers_}, p->index};
}

void router::link_up(std::uint32_t node) {
  ctx_.cluster->link_changed(w_.id(), node, true);
  peers_[node].down_since = {};
  spdlog::info("cluster: worker {}: link to node \"{}\" is up", w_.id(), peers_[node].id);
  // The snapshot: every subscription of this worker's connections, in
  // batches, then the end marker.
  cluster::peer_dialer& d = *peers_[node].dialer;
  cluster::peer_interest batch;
  std::size_t sent = 0;
  for (const auto& [uid, spec] : own_subs_) {
    batch.changes.push_back(change_of(spec));
    batch.changes.back().request_id = 0;
    if (batch.changes.size() == snapshot_batch) {
      send_peer(node, d, cluster::encode_peer_frame(batch));
      sent += batch.changes.size();
      batch.changes.clear();
    }
  }
  sent += batch.changes.size();
  batch.snapshot_done = true;
  send_peer(node, d, cluster::encode_peer_frame(batch));
  spdlog::debug("cluster: worker {}: sent {} subscriptions to \"{}\"", w_.id(), sent,
                peers_[node].id);
}

void router::link_down(std::uint32_t node, const std::string& why) {
  ctx_.cluster->link_changed(w_.id(), node, false);
  if (peers_[node].down_since == std::chrono::steady_clock::time_point{})
    peers_[node].down_since = std::chrono::steady_clock::now();
  send_batch(node);  // the link is down: dropped, counted
  fail_forwarded(node, "the link to it failed: " + why);
  release_interest_waits(node);
  // Barriers that went out on the link get no answer now: what they fenced
  // went down with it. Their pings are answered rather than left hanging.
  if (const auto it = node_barriers_.find(node); it != node_barriers_.end()) {
    auto pending = std::move(it->second);
    node_barriers_.erase(it);
    for (const auto& [conn, round] : pending)
      if (connection* c = find_conn(conn)) c->barrier_done(round);
  }
  spdlog::info("cluster: worker {}: link to node \"{}\": {}", w_.id(), peers_[node].id, why);
}

bool router::forward(publish_op& op, std::uint32_t node) {
  cluster::peer_dialer* d = link_to(node);
  if (d == nullptr) return false;
  peer_batch& b = peers_[node].batch;
  if (d->queued_bytes() + b.bytes > max_link_queue) return false;
  if (op.ack_id != 0) forwarded_acks_.emplace(node, op.conn, op.ack_id);
  b.forwards.push_back({view_of(*op.msg), op.conn, op.ack_id, op.epoch});
  b.bytes += cluster::encoded_size(b.forwards.back().msg);
  b.held.push_back(std::move(op.msg));
  batch_added(node);
  return true;
}

void router::fail_forwarded(std::uint32_t node, const std::string& why) {
  const auto first = forwarded_acks_.lower_bound({node, 0, 0});
  const auto last = forwarded_acks_.lower_bound({node + 1, 0, 0});
  if (first == last) return;
  const std::string message = "the key's owner node \"" + peers_[node].id +
                              "\" was lost before it acknowledged (" + why +
                              "); the publish may or may not have been delivered";
  std::size_t failed = 0;
  for (auto it = first; it != last; ++it) {
    const auto& [n, conn, ack_id] = *it;
    if (connection* c = find_conn(conn)) {
      c->send_error(proto::errc::owner_lost, message, ack_id, false);
      ++failed;
    }
  }
  forwarded_acks_.erase(first, last);
  spdlog::warn(
      "cluster: worker {}: {} acked publish(es) forwarded to node \"{}\" answered "
      "owner_lost: {}",
      w_.id(), failed, peers_[node].id, why);
}

void router::refuse_forwards(std::uint32_t node, const cluster::peer_forwards& batch,
                             const std::string& why) {
  // This node may not order now (it woke past its lease, or is cut off):
  // ordering these could contradict the keys' new owners. Dropped and
  // counted; an acked one is answered, so its publisher hears ownerLost
  // rather than nothing.
  probe_.dropped(drop_reason::stale_peer, batch.items.size());
  for (const cluster::peer_forward& fw : batch.items) refuse_forward(node, fw, why);
}

void router::refuse_forward(std::uint32_t node, const cluster::peer_forward& fw,
                            const std::string& why) {
  if (fw.ack_id == 0) return;
  cluster::peer_dialer* d = link_to(node);
  if (d == nullptr) return;  // the sender's link failed too: it answered its publishers
  send_peer(
      node, *d,
      cluster::encode_peer_frame(cluster::peer_reply{
          fw.conn, fw.ack_id, 0, std::string(fw.msg.subject), std::string(fw.msg.reply_to), why}));
}

void router::deliver_remote(const shared_message& msg, std::uint64_t seq, std::int64_t epoch) {
  for (std::uint32_t node = 1; node < per_node_.size(); ++node) {
    auto& targets = per_node_[node];
    if (targets.empty()) continue;
    cluster::peer_dialer* d = link_to(node);
    peer_batch& b = peers_[node].batch;
    if (d == nullptr || d->queued_bytes() + b.bytes > max_link_queue) {
      probe_.dropped(drop_reason::peer_link_down, targets.size());
    } else {
      b.delivers.push_back({view_of(msg), seq, core_stamp_, epoch, {}});
      b.target_counts.push_back(static_cast<std::uint32_t>(targets.size()));
      b.targets.insert(b.targets.end(), targets.begin(), targets.end());
      b.bytes += cluster::encoded_size(b.delivers.back().msg) + targets.size() * 16;
      b.held.push_back(message_ref::share(msg));
      batch_added(node);
    }
    targets.clear();
  }
}

void router::reply_remote(const publish_op& op, std::uint32_t delivered) {
  cluster::peer_dialer* d = link_to(op.origin);
  if (d == nullptr) return;  // the publisher's node is gone: nobody to answer
  const shared_message& m = *op.msg;
  send_peer(
      op.origin, *d,
      cluster::encode_peer_frame(cluster::peer_reply{
          op.conn, op.ack_id, delivered, std::string(m.subject()), std::string(m.reply_to())}));
}

std::uint32_t router::send_interest(const std::vector<sub_spec>& changes) {
  for (const sub_spec& s : changes) {
    if (s.add)
      own_subs_[s.ref.uid] = s;
    else
      own_subs_.erase(s.ref.uid);
  }
  cluster::peer_interest in;
  for (const sub_spec& s : changes) in.changes.push_back(change_of(s));
  const std::string bytes = cluster::encode_peer_frame(in);
  std::uint32_t nodes = 0;
  for (std::uint32_t node = 1; node < peers_.size(); ++node) {
    cluster::peer_dialer* d = link_to(node);
    if (d == nullptr) continue;  // its snapshot will carry these changes when the link comes up
    send_peer(node, *d, bytes);
    for (const sub_spec& s : changes)
      if (s.request_id != 0) interest_waits_[node].emplace_back(s.ref.conn, s.request_id);
    ++nodes;
  }
  return nodes;
}

bool router::interest_answered(const sub_applied_op& op) {
  const auto it = interest_waits_.find(op.answered_by);
  if (it == interest_waits_.end()) return false;
  auto& waits = it->second;
  const auto w = std::find(waits.begin(), waits.end(), std::make_pair(op.conn, op.request_id));
  if (w == waits.end()) return false;
  waits.erase(w);
  return true;
}

void router::release_interest_waits(std::uint32_t node) {
  // The node will not answer: its link failed, or it left. Its answer counts
  // as given, so the subscribe is acked rather than left to time out; the
  // node learns of the subscription from the snapshot when a link is up again.
  const auto it = interest_waits_.find(node);
  if (it == interest_waits_.end()) return;
  const auto waits = std::move(it->second);
  interest_waits_.erase(it);
  for (const auto& [conn, request_id] : waits)
    if (connection* c = find_conn(conn)) c->sub_applied(sub_applied_op{conn, 0, request_id});
}

bool router::barrier_node(std::uint32_t node, std::uint64_t conn, std::uint64_t round) {
  KEYWAY_ASSERT_OWNER(w_);
  cluster::peer_dialer* d = link_to(node);
  if (d == nullptr) return false;
  // On the link that carried the connection's forwarded publishes, behind them.
  send_peer(node, *d, cluster::encode_peer_frame(cluster::peer_barrier{conn, round, false}));
  node_barriers_[node].emplace_back(conn, round);
  return true;
}

// ---- worker 0: what other nodes send -------------------------------------------

void router::on_peer_barrier(std::uint32_t node, const cluster::peer_barrier& b) {
  if (b.answer) {
    const std::uint32_t wid = worker_of_conn(b.conn);
    if (wid < workers_) submit(wid, route_msg(barrier_op{b.conn, b.round, true, 0, node}));
    return;
  }
  // Everything that link carried before the barrier was handed to its owner
  // workers on FIFO rings: a barrier to each, behind it, and the answer once
  // all of them answered.
  remote_barriers_[{node, b.conn, b.round}] = workers_;
  for (std::uint32_t wid = 0; wid < workers_; ++wid)
    ep_.send(wid, route_msg(barrier_op{b.conn, b.round, false, node}));
}

void router::remote_barrier_answered(const barrier_op& op) {
  KEYWAY_ASSERT(w_.id() == 0);
  const auto it = remote_barriers_.find({op.node, op.conn, op.round});
  if (it == remote_barriers_.end() || --it->second != 0) return;
  remote_barriers_.erase(it);
  if (cluster::peer_dialer* d = link_to(op.node))
    send_peer(op.node, *d,
              cluster::encode_peer_frame(cluster::peer_barrier{op.conn, op.round, true}));
}

void router::bad_peer_frame(const cluster::peer_hello& h, const std::string& why) {
  // Another node's bug, or not a node at all: dropped, and logged sparingly.
  if (passes_power_of_two(bad_peer_frames_))
    spdlog::warn("cluster: dropped a frame from node \"{}\" (worker {}): {} ({} dropped so far)",
                 h.node_id, h.worker, why, bad_peer_frames_);
}

bool router::valid_from_peer(const cluster::peer_hello& h, const cluster::peer_message_view& m) {
  if (!proto::is_valid_publish_subject(m.subject, live_.limits)) {
    bad_peer_frame(h, proto::validate_publish_subject(m.subject, live_.limits).message());
    return false;
  }
  if (!m.reply_to.empty() && !proto::is_valid_publish_subject(m.reply_to, live_.limits)) {
    bad_peer_frame(h,
                   proto::validate_publish_subject(m.reply_to, live_.limits, "replyTo").message());
    return false;
  }
  return true;
}

// ---- fencing -----------------------------------------------------------------
//
// Every forwarded publish and every delivery carries the ring epoch its
// publish was routed by: the epoch under which its owner owns the key. Worker
// 0 checks what other nodes send against its own rings:
//  - the same epoch as its own: the sender computed the same ring, so it is
//    the key's owner (a forward's receiver is) by construction;
//  - a newer epoch: this node's watch lags; the frame waits (the link reads
//    nothing behind it) until the map catches up, for at most a heartbeat,
//    after which the link is closed (its sender answers and redials);
//  - an older epoch: taken only if the sender owned the key under that ring
//    and still owns it, or the hand-off that moved it is not over here (the
//    old owner still orders what was routed by the old ring). Otherwise it is
//    a stale owner's: dropped, counted (stale_owner) and logged sparingly; a
//    stale forwarded publish with an ack is answered refused (ownerLost).

bool router::still_owner(std::uint32_t node, std::span<const std::byte> key,
                         std::int64_t epoch) const {
  const std::string_view k(reinterpret_cast<const char*>(key.data()), key.size());
  const past_ring* then = nullptr;
  for (const past_ring& r : past_rings_)
    if (r.map->epoch == epoch) then = &r;
  if (then == nullptr || then->map->owner(k) != node) return false;
  if (map_->owner(k) == node) return true;
  if (then->passive) return std::chrono::steady_clock::now() < then->passive_until;
  for (const auto& [to, t] : transitions_)
    if (t.before->epoch == epoch) return true;  // the hand-off out of that ring goes on
  return false;
}

cluster::peer_listener::taken router::wait_for_epoch(const cluster::peer_hello& h,
                                                     std::uint32_t node, std::int64_t epoch,
                                                     std::size_t messages) {
  using taken = cluster::peer_listener::taken;
  if (ctx_.cluster->generation() != map_generation_) refresh_cluster();
  const std::pair<std::uint32_t, std::uint32_t> link{node, h.worker};
  if (epoch <= map_->epoch) {
    epoch_waits_.erase(link);
    return taken::yes;
  }
  const auto now = std::chrono::steady_clock::now();
  auto [it, first] = epoch_waits_.try_emplace(link, epoch_wait{now, now});
  // Offered again every link_options().retry while it waits: an older entry
  // is of a link that closed meanwhile.
  if (now - it->second.last > std::chrono::milliseconds(100)) it->second.since = now;
  it->second.last = now;
  const auto limit = ctx_.cluster->link_options().heartbeat;
  if (now - it->second.since < limit) return taken::later;
  epoch_waits_.erase(it);
  probe_.dropped(drop_reason::peer_link_down, messages);
  spdlog::warn(
      "cluster: node \"{}\" (worker {}) sent messages routed by ring epoch {}, and this node's "
      "etcd watch is still at epoch {} after {} ms: closing the link (its sender answers its "
      "publishers and dials again)",
      h.node_id, h.worker, epoch, map_->epoch, limit.count());
  return taken::close;
}

void router::stale_owner(const cluster::peer_hello& h, std::int64_t epoch, std::size_t messages) {
  probe_.dropped(drop_reason::stale_owner, messages);
  if (passes_power_of_two(stale_owner_messages_, messages))
    spdlog::warn(
        "cluster: dropped {} message(s) from node \"{}\" routed by ring epoch {}: it no longer "
        "owns their keys at epoch {} and the hand-off that moved them is over ({} such "
        "messages so far)",
        messages, h.node_id, epoch, map_->epoch, stale_owner_messages_);
}

cluster::peer_listener::taken router::on_peer_frame(const cluster::peer_hello& h,
                                                    std::uint32_t node, cluster::peer_frame& f) {
  using taken = cluster::peer_listener::taken;
  KEYWAY_ASSERT(w_.id() == 0);
  // `node` is the index admit_peer() tagged the link with: only check the
  // node is still this incarnation of a member (a few integer compares).
  // A data frame's messages, and the newest ring they were routed by (a
  // batch's items may have been routed by different rings: publishes in
  // flight between workers across a change). Other frames: one, none.
  std::size_t messages = 1;
  std::int64_t newest = 0;
  if (const auto* fw = std::get_if<cluster::peer_forwards>(&f)) {
    messages = fw->items.size();
    newest = fw->newest_epoch;
  } else if (const auto* d = std::get_if<cluster::peer_delivers>(&f)) {
    messages = d->items.size();
    newest = d->newest_epoch;
  }
  const cluster_peer* p = map_->peer(node);
  if (p == nullptr || p->lease != h.incarnation) {
    // A link of an incarnation no longer in the cluster (its lease expired:
    // it crashed, stalled or was cut off, and the others took its keys).
    // What it ordered meanwhile is stale: dropped, counted, logged sparingly.
    probe_.dropped(drop_reason::stale_peer, messages);
    if (passes_power_of_two(stale_peer_frames_))
      spdlog::warn(
          "cluster: dropped a frame of {} message(s) from node \"{}\" incarnation {:x}, which is "
          "no longer in the cluster ({} such frames so far)",
          messages, h.node_id, h.incarnation, stale_peer_frames_);
    return taken::yes;
  }
  // The newest ring decides whether the frame waits.
  if (newest > map_->epoch) {
    const taken t = wait_for_epoch(h, node, newest, messages);
    if (t != taken::yes) return t;
  } else if (!epoch_waits_.empty()) {
    epoch_waits_.erase({node, h.worker});
  }
  const std::int64_t epoch = map_->epoch;
  // The frame's bytes are the link's read buffer: copied into the pool here.
  auto make = [&](const cluster::peer_message_view& m) {
    std::vector<header_view> headers;
    headers.reserve(m.headers.size());
    for (const auto& [name, value] : m.headers) headers.push_back({name, value});
    shared_message* msg =
        shared_message::make(pool_, m.subject, m.key, m.payload, m.reply_to, headers);
    msg->set_received_ns(turn_ns(1));  // one clock read per loop turn
    return message_ref(msg);
  };
  std::visit(
      overloaded{
          [&](cluster::peer_forwards& batch) {
            if (!ctx_.cluster->may_order(turn_ns(1)))
              return refuse_forwards(
                  node, batch,
                  "node \"" + ctx_.cluster->self_id() +
                      "\" may not order now (it lost touch with etcd and a peer, or was not "
                      "running past its lease)");
            for (const cluster::peer_forward& fw : batch.items) {
              if (!valid_from_peer(h, fw.msg)) continue;
              if (fw.epoch < epoch && !still_owner(0, fw.msg.key, fw.epoch)) {
                stale_owner(h, fw.epoch, 1);
                refuse_forward(node, fw,
                               "node \"" + ctx_.cluster->self_id() +
                                   "\" no longer owns the key: the publish was routed by ring "
                                   "epoch " +
                                   std::to_string(fw.epoch) + ", and the ring is at epoch " +
                                   std::to_string(epoch));
                continue;
              }
              publish_op op;
              op.msg = make(fw.msg);
              op.conn = fw.conn;
              op.ack_id = fw.ack_id;
              op.from = 0;
              op.origin = node;
              op.epoch = fw.epoch;
              probe_.published(1);
              const std::uint32_t owner = owner_of(*op.msg);
              if (owner == 0)
                on_publish(op);
              else
                ep_.send(owner, route_msg(std::move(op)));
            }
          },
          [&](cluster::peer_delivers& batch) {
            for (const cluster::peer_deliver& d : batch.items) {
              if (!valid_from_peer(h, d.msg)) continue;
              if (d.epoch < epoch && !still_owner(node, d.msg.key, d.epoch)) {
                stale_owner(h, d.epoch, 1);
                continue;
              }
              message_ref msg = make(d.msg);
              // One deliver_op per subscriber worker, as the owner would send.
              for (const auto& t : d.targets) {
                const std::uint32_t wid = worker_of_conn(t.conn);
                if (wid >= workers_) continue;
                per_worker_[wid].push_back({t.conn, t.sid});
              }
              for (std::uint32_t wid = 0; wid < workers_; ++wid) {
                auto& targets = per_worker_[wid];
                if (targets.empty()) continue;
                deliver_op op{msg, d.seq, d.owner_core, targets.front(), {}, remote_publisher};
                if (targets.size() > 1) op.more = target_list(pool_, std::span(targets).subspan(1));
                targets.clear();
                submit(wid, route_msg(std::move(op)));
              }
            }
          },
          [&](cluster::peer_interest& in) { on_peer_interest(node, h, in); },
          [&](cluster::peer_fence& fe) { on_peer_fence(node, fe); },
          [&](cluster::peer_barrier& b) { on_peer_barrier(node, b); },
          [&](cluster::peer_interest_applied& a) {
            const std::uint32_t wid = worker_of_conn(a.conn);
            if (wid >= workers_) return;
            submit(wid,
                   route_msg(sub_applied_op{
                       a.conn, 0, a.request_id, a.sid, a.uid,
                       a.refused.empty() ? nullptr : std::make_shared<const std::string>(a.refused),
                       node}));
          },
          [&](cluster::peer_reply& r) {
            const std::uint32_t wid = worker_of_conn(r.conn);
            if (wid >= workers_) return;
            message_ref msg(shared_message::make(pool_, r.subject, {}, {}, r.reply_to, {}));
            submit(wid, route_msg(reply_op{std::move(msg), r.conn, r.ack_id, r.delivered, node,
                                           r.refused.empty()
                                               ? nullptr
                                               : std::make_shared<const std::string>(r.refused)}));
          },
          [](auto&) {},  // handshake and heartbeat frames: peer_link's
      },
      f);
  return taken::yes;
}

void router::on_peer_interest(std::uint32_t node, const cluster::peer_hello& h,
                              cluster::peer_interest& in) {
  std::vector<sub_spec> changes;
  changes.reserve(in.changes.size());
  const auto resync = unconfirmed_.find({node, h.worker});
  for (auto& c : in.changes) {
    const std::uint64_t key = (std::uint64_t{node} << 32) | c.uid;
    if (resync != unconfirmed_.end()) resync->second.erase(c.uid);
    sub_spec s;
    s.add = c.add;
    s.request_id = c.request_id;
    if (c.add) {
      if (remote_subs_.count(key) != 0) continue;  // announced twice: keep the first
      if (auto st = proto::validate_pattern(c.pattern, live_.limits); !st) {
        bad_peer_frame(h, st.message());
        continue;
      }
      if (auto st = proto::validate_queue_group(c.group, live_.limits); !st) {
        bad_peer_frame(h, st.message());
        continue;
      }
      const auto uid = allocate_uid();  // worker 0's, freed by it (on_sub_change)
      if (!uid) {
        spdlog::error("cluster: no subscription id left for node \"{}\"'s subscription {}",
                      h.node_id, c.pattern);
        continue;
      }
      remote_subs_[key] = {*uid, c.conn, c.sid};
      s.pattern = std::move(c.pattern);
      s.group = std::move(c.group);
      s.ref = sub_ref{*uid, remote_worker_base + node, c.conn, c.sid};
    } else {
      const auto it = remote_subs_.find(key);
      if (it == remote_subs_.end()) continue;
      s.ref = sub_ref{it->second.local_uid, remote_worker_base + node, c.conn, c.sid};
      remote_subs_.erase(it);
    }
    if (s.request_id != 0)
      remote_acks_[{node, c.conn, c.request_id}] = {workers_, c.sid, c.uid, {}};
    changes.push_back(std::move(s));
  }
  if (!changes.empty())
    broadcast_local(std::make_shared<const std::vector<sub_spec>>(std::move(changes)));
  if (in.snapshot_done) {
    if (resync != unconfirmed_.end()) {
      // Announced on an earlier link and not again: gone meanwhile.
      const std::set<std::uint32_t> gone = std::move(resync->second);
      unconfirmed_.erase(resync);
      forget_remote(node, [&](std::uint32_t their_uid) { return gone.count(their_uid) != 0; });
    }
    ctx_.cluster->snapshot_received(node, h.incarnation, h.worker);
  }
}

void router::forget_node(std::uint32_t node) {
  forget_remote(node, [](std::uint32_t) { return true; });
  std::erase_if(unconfirmed_, [&](const auto& u) { return u.first.first == node; });
}

void router::forget_remote(std::uint32_t node,
                           const std::function<bool(std::uint32_t their_uid)>& which) {
  std::vector<sub_spec> changes;
  for (auto it = remote_subs_.begin(); it != remote_subs_.end();) {
    const auto their_uid = static_cast<std::uint32_t>(it->first);
    if ((it->first >> 32) != node || !which(their_uid)) {
      ++it;
      continue;
    }
    sub_spec s;
    s.add = false;
    s.ref =
        sub_ref{it->second.local_uid, remote_worker_base + node, it->second.conn, it->second.sid};
    changes.push_back(std::move(s));
    it = remote_subs_.erase(it);
  }
  if (!changes.empty())
    broadcast_local(std::make_shared<const std::vector<sub_spec>>(std::move(changes)));
}

void router::remote_sub_applied(const sub_applied_op& op) {
  KEYWAY_ASSERT(w_.id() == 0);
  cluster::peer_interest_applied out{op.conn, op.request_id, op.sid, 0, {}};
  if (op.request_id != 0) {
    auto it = remote_acks_.find({op.node, op.conn, op.request_id});
    if (it == remote_acks_.end()) return;
    remote_ack& a = it->second;
    if (op.refused && a.refused.empty()) a.refused = *op.refused;
    if (--a.left != 0) return;
    out.uid = a.uid;
    out.refused = std::move(a.refused);
    remote_acks_.erase(it);
  } else {
    if (!op.refused) return;
    // A refusal without a request id: find the node's own uid for it.
    for (const auto& [key, sub] : remote_subs_)
      if ((key >> 32) == op.node && sub.local_uid == op.uid)
        out.uid = static_cast<std::uint32_t>(key);
    out.refused = *op.refused;
  }
  if (cluster::peer_dialer* d = link_to(op.node))
    send_peer(op.node, *d, cluster::encode_peer_frame(out));
}

// ---- ring changes: the hand-off ------------------------------------------------
//
// When the ring changes from epoch E0 to E1, the keys whose owner node differs
// between the two rings move. No publish of a moved key is routed by E1 until
// every delivery ordered by E0 was taken in by every subscriber's worker in
// the cluster; publishes of other keys go on. In steps, each on FIFO paths
// behind the traffic it fences:
//  1. ingress: each worker, once it routes by E1, holds the moved keys and
//     tells every worker (mesh) and every other node (each link) so. Worker 0
//     tells its workers when every other node's every worker did.
//  2. ordered: a worker that heard ingress from all (so it received every
//     publish routed by E0) has ordered them all; it tells every worker and
//     every other node, behind the deliveries it sent. Worker 0 again relays
//     the other nodes' as one.
//  3. fenced: a worker that heard ordered from all has taken in every E0
//     delivery; it tells worker 0.
//  4. drained: worker 0, once all its workers are fenced, tells every other
//     node. When every node (this one too) is drained, worker 0 tells its
//     workers `done`: they route the moved keys again, to their E1 owners.
// The nodes taking part are those in either ring that are still registered,
// as the same incarnation, in the new map: every node computes the same set.
// A node in neither (joining, or draining since an earlier change) routes by
// the new ring at once and sends no fence; its clients (it is not ready) get
// no order across the change. A node whose lease expired (it crashed, or was
// cut off) is not waited for: what it had not delivered is lost with it. One
// that goes the same way during a hand-off is dropped from it when the map
// shows it gone (prune_handoffs). A hand-off still stuck (a node registered
// but not answering) is given up after cluster_node::handoff_timeout()
// (logged and counted).

bool router::begin_handoff(const std::shared_ptr<const cluster_map>& before,
                           const std::shared_ptr<const cluster_map>& after) {
  const std::int64_t epoch = after->epoch;
  std::map<std::uint32_t, std::uint32_t> others;
  bool self_in = false;
  for (const cluster_map* m : {before.get(), after.get()})
    for (const std::uint32_t node : m->ring_index) {
      if (node == 0) {
        self_in = true;
        continue;
      }
      // The incarnation in m's ring, if the new map still has it.
      const cluster_peer* then = m->peer(node);
      const cluster_peer* now = after->peer(node);
      if (then != nullptr && now != nullptr && now->lease == then->lease)
        others[node] = now->workers;
    }
  if (!self_in) return false;
  transition& t = transitions_[epoch];
  t.others = std::move(others);
  t.seen = true;
  t.before = before;
  t.after = after;
  t.since = std::chrono::steady_clock::now();
  fence_peers(cluster::fence_stage::ingress, epoch);
  fence_workers(fence_op::step::ingress, epoch);
  if (w_.id() == 0) check_node_handoff(epoch);
  return true;
}

void router::prune_handoffs() {
  const auto now = std::chrono::steady_clock::now();
  for (auto& [epoch, t] : transitions_) {
    if (!t.seen) continue;
    std::vector<std::uint32_t> gone;
    std::size_t unreached = 0;
    for (const auto& [node, workers] : t.others) {
      const cluster_peer* was = t.after->peer(node);
      const cluster_peer* is = map_->peer(node);
      if (was == nullptr || is == nullptr || is->lease != was->lease) {
        gone.push_back(node);
      } else if (unreachable(node, now)) {
        gone.push_back(node);
        ++unreached;
      }
    }
    if (gone.empty()) continue;
    for (const std::uint32_t node : gone) t.others.erase(node);
    if (w_.id() == 0) {
      spdlog::warn(
          "cluster: hand-off to ring epoch {}: {} node(s) left etcd meanwhile and {} have been "
          "unreachable for over twice the lease; not waiting for them",
          epoch, gone.size() - unreached, unreached);
      check_node_handoff(epoch);
    }
  }
}

bool router::held(std::span<const std::byte> key) const noexcept {
  const std::string_view k(reinterpret_cast<const char*>(key.data()), key.size());
  for (const auto& [epoch, t] : transitions_)
    if (t.seen && t.before->owner(k) != t.after->owner(k)) return true;
  return false;
}

void router::fence_peers(cluster::fence_stage stage, std::int64_t epoch) {
  const std::string frame = cluster::encode_peer_frame(cluster::peer_fence{stage, epoch, w_.id()});
  for (const auto& [node, workers] : transitions_[epoch].others)
    if (cluster::peer_dialer* d = link_to(node)) send_peer(node, *d, frame);
}

void router::fence_workers(fence_op::step what, std::int64_t epoch) {
  // Through the mesh also to this worker, never inline: a step handled inline
  // could finish the hand-off (and erase its records) under the caller.
  for (std::uint32_t wid = 0; wid < workers_; ++wid)
    ep_.send(wid, route_msg(fence_op{what, epoch, w_.id()}));
}

void router::on_fence(const fence_op& op) {
  using step = fence_op::step;
  if (op.what == step::fenced) {
    ++handoffs_[op.epoch].fenced;
    return check_node_handoff(op.epoch);
  }
  if (op.what == step::done) {
    transitions_.erase(op.epoch);
    return;  // paused publishers retry on the next turn (resume_paused)
  }
  transition& t = transitions_[op.epoch];
  switch (op.what) {
    case step::ingress:
      ++t.ingress;
      break;
    case step::ingress_remote:
      t.ingress_remote = true;
      break;
    case step::ordered:
      ++t.cores_ordered;
      break;
    case step::ordered_remote:
      t.ordered_remote = true;
      break;
    default:
      break;
  }
  check_ordered(op.epoch);
  check_fenced(op.epoch);
}

void router::check_ordered(std::int64_t epoch) {
  const auto it = transitions_.find(epoch);
  if (it == transitions_.end()) return;
  transition& t = it->second;
  if (t.ordered || t.ingress < workers_ || !t.ingress_remote) return;
  // Every publish routed by the old ring reached this worker, and was ordered.
  t.ordered = true;
  fence_peers(cluster::fence_stage::ordered, epoch);
  fence_workers(fence_op::step::ordered, epoch);
}

void router::check_fenced(std::int64_t epoch) {
  const auto it = transitions_.find(epoch);
  if (it == transitions_.end()) return;
  transition& t = it->second;
  if (t.fenced || t.cores_ordered < workers_ || !t.ordered_remote) return;
  t.fenced = true;
  ep_.send(0, route_msg(fence_op{fence_op::step::fenced, epoch, w_.id()}));
}

void router::on_peer_fence(std::uint32_t node, const cluster::peer_fence& f) {
  node_handoff& h = handoffs_[f.epoch];
  switch (f.stage) {
    case cluster::fence_stage::ingress:
      ++h.ingress[node];
      break;
    case cluster::fence_stage::ordered:
      ++h.ordered[node];
      break;
    case cluster::fence_stage::drained:
      ++h.drained[node];
      break;
  }
  check_node_handoff(f.epoch);
}

void router::check_node_handoff(std::int64_t epoch) {
  KEYWAY_ASSERT(w_.id() == 0);
  const auto t = transitions_.find(epoch);
  if (t == transitions_.end() || !t->second.seen) return;  // counted until this worker sees it
  const auto& others = t->second.others;
  node_handoff& h = handoffs_[epoch];
  // From every worker (stages ingress, ordered) or from the node (drained) of
  // every other node taking part.
  auto all_in = [&](const std::map<std::uint32_t, std::uint32_t>& got, bool per_worker) {
    for (const auto& [node, workers] : others) {
      const auto it = got.find(node);
      if (it == got.end() || it->second < (per_worker ? workers : 1u)) return false;
    }
    return true;
  };
  if (!h.ingress_sent && all_in(h.ingress, true)) {
    h.ingress_sent = true;
    fence_workers(fence_op::step::ingress_remote, epoch);
  }
  if (!h.ordered_sent && all_in(h.ordered, true)) {
    h.ordered_sent = true;
    fence_workers(fence_op::step::ordered_remote, epoch);
  }
  if (!h.drained_sent && h.fenced >= workers_) {
    h.drained_sent = true;
    fence_peers(cluster::fence_stage::drained, epoch);
  }
  if (!h.drained_sent || !all_in(h.drained, false)) return;
  const auto took = std::chrono::steady_clock::now() - h.since;
  handoffs_.erase(epoch);
  spdlog::info("cluster: hand-off to ring epoch {} done in {:.1f} ms", epoch,
               std::chrono::duration<double, std::milli>(took).count());
  ctx_.cluster->handoff_finished(epoch, took, false);
  fence_workers(fence_op::step::done, epoch);
}

void router::expire_handoffs() {
  prune_handoffs();  // nodes unreachable for longer than the lease meanwhile
  const auto now = std::chrono::steady_clock::now();
  const auto limit = ctx_.cluster->handoff_timeout();
  for (auto it = transitions_.begin(); it != transitions_.end();) {
    if (now - it->second.since < limit) {
      ++it;
      continue;
    }
    if (w_.id() == 0) {
      spdlog::warn(
          "cluster: hand-off to ring epoch {} did not finish within {} ms (a node stopped "
          "answering); routing the moved keys by the new ring anyway: their order across the "
          "change is not guaranteed",
          it->first, limit.count());
      ctx_.cluster->handoff_finished(it->first, now - it->second.since, true);
    }
    it = transitions_.erase(it);
  }
  for (auto it = handoffs_.begin(); it != handoffs_.end();)
    it = now - it->second.since >= limit ? handoffs_.erase(it) : std::next(it);
}

}  // namespace keyway::daemon
