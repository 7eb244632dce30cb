// router: the routing service of one worker — the worker_handler that keywayd
// runs on every core. It owns the worker's connections, its replica of the
// subscription index, its per-core sequence counter and its mesh endpoint.
//
// Life of a publish (docs/architecture.md tells it in full):
//   connection (ingress worker) decodes it → owner = partitioner(key) →
//   try_send(publish_op) to the owner (or handle inline if the owner is self)
//   → owner: seq++, match the subject in its index, pick one member per queue
//   group, send one deliver_op per subscriber worker (payload shared, not
//   copied) → subscriber's worker encodes a message frame per subscription into
//   the connection's outbound buffer → one socket write per connection per
//   loop turn.
//
// Connections reach it only through worker_services (worker_services.hpp).
//
// Threads: every method runs on the owning worker's thread (asserted at the
// entry points). The only cross-thread inputs are mesh messages and the
// read-only server_context.
#pragma once

#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "cluster/peer_link.hpp"
#include "config/options.hpp"
#include "core/mesh.hpp"
#include "core/partitioner.hpp"
#include "core/worker.hpp"
#include "daemon/accept_backoff.hpp"
#include "daemon/probe.hpp"
#include "daemon/route.hpp"
#include "daemon/subject_index.hpp"
#include "daemon/worker_services.hpp"
#include "proto/encoder.hpp"

namespace keyway::daemon {

class connection;
class cluster_node;
struct cluster_map;

/// What every router shares: immutable after start, except the atomics.
struct server_context {
  server_options options;
  std::string server_id;
  std::size_t workers = 0;
  /// Per worker, for the messages it builds; declared before the mesh so that
  /// they outlive the messages still in its rings.
  std::vector<std::unique_ptr<core::block_pool>> pools;
  std::unique_ptr<core::mesh<route_msg>> mesh;
  /// Per worker; written by that worker only.
  std::vector<std::unique_ptr<probe>> stats;
  /// Acceptors, all run by worker 0 (sockets are handed out round-robin).
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> tcp_acceptors;
  std::vector<std::unique_ptr<asio::local::stream_protocol::acceptor>> unix_acceptors;
  /// Auth tokens at start (reloads hand each router a new list).
  std::shared_ptr<const std::vector<std::string>> tokens =
      std::make_shared<const std::vector<std::string>>();
  /// Set by the main thread on SIGTERM/SIGINT, first: every worker sends a
  /// `draining` frame to each of its clients (lame duck), then counts itself
  /// in `announced`. Serving goes on until `draining`.
  std::atomic<bool> lame_duck{false};
  std::atomic<std::uint32_t> announced{0};
  /// Set by the main thread when the drain begins (after the lame-duck grace).
  std::atomic<bool> draining{false};
  /// In a cluster ([cluster]): the node's membership and map, and the peer
  /// listener's socket (bound by the server, accepted on by worker 0).
  cluster_node* cluster = nullptr;
  std::unique_ptr<asio::ip::tcp::acceptor> peer_acceptor;
};

class router final : public core::worker_handler, public worker_services {
 public:
  router(core::worker& w, server_context& ctx);
  ~router() override;

  // worker_handler
  void init() override;
  std::size_t poll() override;
  void flush() override;
  bool has_work() override;
  void shutdown() override;
  void on_error(std::string_view what) override;

  // worker_services (worker_services.hpp: what connections ask of this worker)
  bool has_interest(std::string_view subject) override;
  std::optional<std::uint32_t> route(publish_op& op, std::uint32_t owner) override;
  void barrier(std::uint32_t owner, std::uint64_t conn, std::uint64_t round) override;
  bool barrier_node(std::uint32_t node, std::uint64_t conn, std::uint64_t round) override;
  result<std::uint32_t, std::string> admit_subscription(std::string_view pattern,
                                                        std::string_view group,
                                                        std::uint64_t cost) override;
  void release_subscriptions(std::uint64_t cost) noexcept override;
  std::uint32_t broadcast(std::vector<sub_spec> changes) override;
  void throttle(std::uint64_t conn, bool on) override;
  void flush_later(connection& c) override;
  void resume_later(connection& c) override;
  void closed(connection& c) override;

  /// On this worker's thread (the server posts it): takes the live part of a
  /// reloaded configuration. Connections already open keep the frame size
  /// their decoder was built with.
  void apply(const server_options& next, std::shared_ptr<const std::vector<std::string>> tokens);

 private:
  /// Runs `m` here when `to` is this worker, else sends it there.
  void submit(std::uint32_t to, route_msg&& m);
  static std::uint32_t worker_of_conn(std::uint64_t conn) noexcept {
    return static_cast<std::uint32_t>(conn >> 48);
  }
  /// A daemon-wide subscription uid from this worker's range, or nothing if all are live.
  std::optional<std::uint32_t> allocate_uid();
  void free_uid(std::uint32_t uid);
  void dispatch(route_msg& m);
  void on_publish(publish_op& op);
  /// The connection with this id on this worker, or nullptr.
  connection* find_conn(std::uint64_t id) noexcept;
  void on_deliver(deliver_op& op);
  void on_reply(reply_op& op);
  void on_sub_change(const sub_change_op& op);
  void on_sub_applied(const sub_applied_op& op);
  void on_adopt(const adopt_op& op);
  void on_conn_closed();
  void on_barrier(const barrier_op& op);
  void close_acceptors();
  /// Lame duck: a `draining` frame to every open connection, once.
  void announce_draining();
  void start_accepting();
  template <class Acceptor>
  void accept_next(Acceptor& a, bool unix_socket);
  template <class Acceptor>
  void accept_failed(Acceptor& a, bool unix_socket, std::error_code ec);
  void hand_out(int fd, bool unix_socket);
  void adopt(int fd, bool unix_socket);
  void resume_paused();
  void start_drain();
  /// Sends `changes` to every worker of this node.
  void broadcast_local(std::shared_ptr<const std::vector<sub_spec>> changes);

  // ---- cluster (router_cluster.cpp; all no-ops without [cluster]) ---------------
  /// Takes a new cluster map when cluster_node published one: dials new
  /// peers, stops dialling gone ones, forgets their subscriptions (worker 0).
  void refresh_cluster();
  void start_peer_listener();
  /// Hands a publish whose key another node owns to that node; false (op
  /// intact) while the link is down or over its queue limit. An acked one is
  /// remembered until the node answers (forwarded_acks_).
  bool forward(publish_op& op, std::uint32_t node);
  /// The link to `node` failed, or the node left: every publish forwarded
  /// to it and not yet answered gets owner_lost (it may have been delivered).
  void fail_forwarded(std::uint32_t node, const std::string& why);
  /// Worker 0, while this node may not order: drops forwarded publishes from
  /// `node`, answering the acked ones `refused` (their publishers get ownerLost).
  void refuse_forwards(std::uint32_t node, const cluster::peer_forwards& batch,
                       const std::string& why);
  /// Worker 0: answers an acked publish forwarded from `node` that this node
  /// does not order `refused`, saying why.
  void refuse_forward(std::uint32_t node, const cluster::peer_forward& fw, const std::string& why);
  /// One copy per node with matching subscribers (per_node_), stamped with
  /// the epoch the publish was routed by.
  void deliver_remote(const shared_message& msg, std::uint64_t seq, std::int64_t epoch);
  void reply_remote(const publish_op& op, std::uint32_t delivered);
  /// Sends this worker's subscription changes to every peer with a link up;
  /// returns how many.
  std::uint32_t send_interest(const std::vector<sub_spec>& changes);
  /// Another node answered one of this worker's acked subscription changes:
  /// false if that answer was already counted (release_interest_waits()).
  bool interest_answered(const sub_applied_op& op);
  /// Answers, as if `node` had, the acked subscription changes sent to it
  /// and not answered yet (its link failed, or it left).
  void release_interest_waits(std::uint32_t node);
  void link_up(std::uint32_t node);
  void link_down(std::uint32_t node, const std::string& why);
  /// Admits a link from another node, tagged with that node's index.
  result<cluster::peer_listener::admission, std::string> admit_peer(const cluster::peer_hello& h);
  cluster::peer_listener::taken on_peer_frame(const cluster::peer_hello& h, std::uint32_t node,
                                              cluster::peer_frame& f);
  /// Fencing (router_cluster.cpp): whether node `node` (0: this one) owned
  /// `key` under ring `epoch`, older than this worker's, and may still order
  /// it: it owns it now too, or the hand-off that moved it is not over here.
  bool still_owner(std::uint32_t node, std::span<const std::byte> key, std::int64_t epoch) const;
  /// Fencing: a data frame from `node`'s worker `h.worker` stamped with a ring
  /// epoch newer than this worker's waits for the watch to catch up (the
  /// link reads nothing behind it); past the wait limit the link is closed.
  cluster::peer_listener::taken wait_for_epoch(const cluster::peer_hello& h, std::uint32_t node,
                                               std::int64_t epoch, std::size_t messages);
  void stale_owner(const cluster::peer_hello& h, std::int64_t epoch, std::size_t messages);
  /// A message from another node has subjects this node would accept from a client.
  bool valid_from_peer(const cluster::peer_hello& h, const cluster::peer_message_view& m);
  void bad_peer_frame(const cluster::peer_hello& h, const std::string& why);
  void on_peer_interest(std::uint32_t node, const cluster::peer_hello& h,
                        cluster::peer_interest& in);
  /// Worker 0: removes node `node`'s subscriptions for which `which(their
  /// uid)` holds.
  void forget_remote(std::uint32_t node, const std::function<bool(std::uint32_t)>& which);
  /// Worker 0: forgets all of node `node`'s subscriptions (it left, or came
  /// back as a new incarnation), and any snapshot of it in progress.
  void forget_node(std::uint32_t node);
  void remote_sub_applied(const sub_applied_op& op);
  /// Worker 0: a barrier frame from node `node`, and its workers' answers.
  void on_peer_barrier(std::uint32_t node, const cluster::peer_barrier& b);
  void remote_barrier_answered(const barrier_op& op);
  /// The link to `node` if it is up.
  cluster::peer_dialer* link_to(std::uint32_t node) noexcept;
  /// Whether this worker's link to `node` has been down for longer than
  /// unreachable_after() (docs/cluster.md, "Failures"): the node is treated
  /// as dead until the link is back or etcd drops it. Its keys' publishes
  /// fail rather than wait, and hand-offs stop waiting for it.
  bool unreachable(std::uint32_t node, std::chrono::steady_clock::time_point now) const noexcept;
  /// Twice the lease.
  std::chrono::milliseconds unreachable_after() const noexcept;
  /// A publish of a key owned by an unreachable node: an acked one is
  /// answered ownerLost (not delivered), any other dropped and counted.
  void refuse_unreachable(const publish_op& op, std::uint32_t node);
  /// Hand-off (router_cluster.cpp, "Ring changes"): starts this worker's part
  /// of the change from `before` to `after`.
  /// Returns whether this node takes part (it is in either ring).
  bool begin_handoff(const std::shared_ptr<const cluster_map>& before,
                     const std::shared_ptr<const cluster_map>& after);
  /// Whether a ring change in progress moved `key` (its publishes wait).
  bool held(std::span<const std::byte> key) const noexcept;
  void on_fence(const fence_op& op);
  void on_peer_fence(std::uint32_t node, const cluster::peer_fence& f);
  /// Drops from the hand-offs in progress the nodes the latest map shows gone.
  void prune_handoffs();
  /// Sends a fence frame on every link up.
  void fence_peers(cluster::fence_stage stage, std::int64_t epoch);
  void fence_workers(fence_op::step what, std::int64_t epoch);
  void check_ordered(std::int64_t epoch);
  void check_fenced(std::int64_t epoch);
  void check_node_handoff(std::int64_t epoch);
  /// Gives up on hand-offs older than cluster_node::handoff_timeout().
  void expire_handoffs();
  /// Queues one encoded frame on `d`, the link to `node`, behind the data
  /// batched for the node (send_batch()).
  void send_peer(std::uint32_t node, cluster::peer_dialer& d, std::string_view frame);
  /// Sends what was batched for `node` (forwarded publishes, then
  /// deliveries), counted as the messages it carries; drops it, counted,
  /// if the link went down meanwhile.
  void send_batch(std::uint32_t node);
  /// After adding to `node`'s batch: sends it once it is large.
  void batch_added(std::uint32_t node);
  /// Each link's queued bytes, for its gauge (end of a turn).
  void note_link_queues();
  void stop_cluster();

  server_context& ctx_;
  core::mesh<route_msg>::endpoint& ep_;
  subject_index index_;
  std::uint64_t seq_ = 0;
  std::uint64_t next_conn_ = 0;
  static constexpr std::uint32_t max_uids_per_worker = 1u << 24;  // the low 24 bits of a uid
  std::uint32_t next_uid_ = 0;
  std::vector<std::uint32_t> free_uids_;
  std::uint64_t sub_bytes_ = 0;  // charged by this worker's connections' subscriptions
  std::unordered_map<std::uint64_t, std::shared_ptr<connection>> conns_;
  /// find_conn()'s memo of the last connection found; cleared when it leaves conns_.
  std::uint64_t last_conn_id_ = 0;
  connection* last_conn_ = nullptr;
  std::vector<connection*> dirty_;
  std::vector<connection*> paused_;
  std::vector<connection*> resuming_;  // resume_paused()'s working copy of paused_
  /// Connections closed this turn; kept alive until the turn's flush is done,
  /// since dirty_ may still point at them.
  std::vector<std::shared_ptr<connection>> graveyard_;
  std::vector<sub_ref> matches_;                          // scratch for on_publish
  std::vector<std::vector<delivery_target>> per_worker_;  // scratch for on_publish
  // Acceptor state (worker 0 only).
  std::size_t next_worker_ = 0;
  std::size_t open_connections_ = 0;
  accept_backoff accept_backoff_{"listen"};
  asio::steady_timer accept_timer_;                  // the backoff's wait
  std::vector<std::function<void()>> accept_retry_;  // listeners waiting on it
  bool drain_started_ = false;

  // Cluster state (router_cluster.cpp).
  std::uint32_t core_stamp_ = 0;  // Message.ownerCore of what this worker orders
  std::shared_ptr<const cluster_map> map_;
  std::uint64_t map_generation_ = 0;
  /// Publishes and deliveries for one node, gathered over a turn and sent as
  /// one frame of each (router_cluster.cpp, "Batches").
  struct peer_batch {
    std::vector<message_ref> held;  // keeps the views below valid
    std::vector<cluster::peer_forward> forwards;
    std::vector<cluster::peer_deliver> delivers;  // targets: set from `targets` when sent
    std::vector<std::uint32_t> target_counts;     // per delivery
    std::vector<cluster::peer_target> targets;
    std::size_t bytes = 0;  // encoded size, near enough
    bool empty() const noexcept { return held.empty(); }
    void clear() noexcept;
  };
  struct peer_out {
    std::string id;
    std::int64_t lease = 0;
    std::shared_ptr<cluster::peer_dialer> dialer;
    peer_batch batch;
    /// Since when the link has not been up (the epoch while it is).
    std::chrono::steady_clock::time_point down_since{};
  };
  std::vector<peer_out> peers_;  // by node index
  std::int64_t dialed_as_ = 0;   // this node's lease, as the hellos of peers_ carry it
  std::unordered_map<std::uint32_t, sub_spec> own_subs_;     // this worker's connections', by uid
  std::vector<std::vector<cluster::peer_target>> per_node_;  // scratch for on_publish
  /// Acked subscription changes sent to a node and not answered yet, by
  /// node: (conn, request id).
  std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> interest_waits_;
  /// Acked publishes forwarded and not answered yet: (node, conn, ack id).
  std::set<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>> forwarded_acks_;
  std::string frames_;  // scratch: encoded peer frames
  // Worker 0: the listener, and the other nodes' subscriptions.
  std::unique_ptr<cluster::peer_listener> listener_;
  std::uint64_t bad_peer_frames_ = 0;
  std::uint64_t stale_peer_frames_ = 0;
  std::uint64_t stale_owner_messages_ = 0;
  std::uint64_t unreachable_refused_ = 0;
  /// Rings this worker routed by before map_, newest last (a few): what
  /// fencing checks an older epoch's owner against.
  struct past_ring {
    std::shared_ptr<const cluster_map> map;
    /// This node took no part in the change away from it (in neither ring):
    /// it takes that ring's owners until then, as a hand-off would last.
    bool passive = false;
    std::chrono::steady_clock::time_point passive_until{};
  };
  std::deque<past_ring> past_rings_;
  /// Links holding a frame stamped with a newer epoch, by (node, worker):
  /// since when, and when it was last offered.
  struct epoch_wait {
    std::chrono::steady_clock::time_point since, last;
  };
  std::map<std::pair<std::uint32_t, std::uint32_t>, epoch_wait> epoch_waits_;
  struct remote_sub {
    std::uint32_t local_uid = 0;
    std::uint64_t conn = 0;
    std::uint32_t sid = 0;
  };
  std::unordered_map<std::uint64_t, remote_sub> remote_subs_;      // (node << 32 | their uid) →
  std::unordered_map<std::uint32_t, std::int64_t> remote_leases_;  // node → incarnation held
  /// A link from (node, worker) came up again: the uids its earlier links
  /// announced that its new snapshot has not announced yet.
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::set<std::uint32_t>> unconfirmed_;
  struct remote_ack {
    std::uint32_t left = 0;
    std::uint32_t sid = 0;
    std::uint32_t uid = 0;  // theirs
    std::string refused;
  };
  std::map<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>, remote_ack> remote_acks_;
  // Ring changes in progress, by their new epoch: this worker's part.
  struct transition {
    bool seen = false;  // this worker routes by `after`
    std::shared_ptr<const cluster_map> before, after;
    /// The other nodes taking part: those in either ring (node index → workers).
    std::map<std::uint32_t, std::uint32_t> others;
    std::chrono::steady_clock::time_point since = std::chrono::steady_clock::now();
    std::uint32_t ingress = 0;  // local workers routing by the new ring
    bool ingress_remote = false;
    bool ordered = false;  // this worker's `ordered` sent
    std::uint32_t cores_ordered = 0;
    bool ordered_remote = false;
    bool fenced = false;
  };
  std::map<std::int64_t, transition> transitions_;
  // Worker 0: the node's part, by new epoch.
  struct node_handoff {
    std::chrono::steady_clock::time_point since = std::chrono::steady_clock::now();
    // Fences from other nodes, per stage, by node index (counted before this
    // worker saw the change; only the nodes taking part count).
    std::map<std::uint32_t, std::uint32_t> ingress, ordered, drained;
    std::uint32_t fenced = 0;  // local workers
    bool ingress_sent = false, ordered_sent = false, drained_sent = false;
  };
  std::map<std::int64_t, node_handoff> handoffs_;
  // Barriers sent to other nodes and not answered yet, by node: answered
  // here if the link goes down.
  std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> node_barriers_;
  // Worker 0: other nodes' barriers, (node, conn, round) → workers yet to answer.
  std::map<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>, std::uint32_t> remote_barriers_;
};

}  // namespace keyway::daemon
