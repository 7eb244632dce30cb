// cluster_node: keywayd as one node of a cluster (docs/cluster.md). Built from
// the [cluster] section (server_options::cluster): this node's membership in
// etcd (cluster/membership.hpp), the map of the cluster that workers route by
// (cluster_map: the placement of keys on nodes and the peers to dial), and
// the node's readiness: it turns active in etcd, and /readyz says ready, once
// every worker's link to every other member is up and every other member's
// workers sent their full interest snapshot.
//
// Node indexes: every node id this process has seen gets a small index, kept
// for the life of the process (this node's is 0). A subscription of a remote
// subscriber sits in the subject index with the remote node's index
// (router.cpp), so a worker finds the link to deliver on without a lookup by
// name.
//
// Threads: join(), leave() and set_draining() on the main thread; map(),
// generation(), ready(), the link and snapshot reports and status_json() from
// any thread (a mutex guards the map and the readiness records; workers take
// it only when generation() moved, not per message). The observer runs on
// membership's control thread; the activation thread waits for readiness and
// moves this node to active in etcd.
#pragma once

#include <asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <keyway/result.hpp>

#include "cluster/membership.hpp"
#include "cluster/peer_link.hpp"
#include "cluster/placement.hpp"
#include "config/options.hpp"

namespace keyway::daemon {

/// The membership settings of a node with options `o` (o.cluster set). Fails
/// when cluster.node_id is empty and the host name is not a valid node id, or
/// when the client URL to advertise cannot be derived.
result<cluster::membership_config, std::string> membership_config_of(const server_options& o);

/// Another member of the cluster, as the current view shows it.
struct cluster_peer {
  std::string id;
  std::uint32_t index = 0;                          // node index (see above)
  std::int64_t lease = 0;                           // its incarnation
  std::string peer_url;                             // as it announces it
  std::optional<asio::ip::tcp::endpoint> endpoint;  // peer_url resolved; none: unusable
  std::uint32_t workers = 0;
  cluster::node_state state = cluster::node_state::joining;
  std::vector<std::string> client_urls;
};

/// What workers route by: immutable once published.
struct cluster_map {
  std::uint64_t generation = 0;
  std::int64_t epoch = 0;
  std::optional<cluster::placement> placement;  // none while no node is active
  std::vector<std::uint32_t> ring_index;  // ring_index[i]: node index of placement->nodes()[i]
  std::vector<cluster_peer> peers;        // the other members
  std::vector<std::string> client_urls;   // every member's, this node's first

  /// The node index that owns `key`: 0 (this node) also while the ring is empty.
  std::uint32_t owner(std::string_view key) const noexcept {
    if (!placement) return 0;
    return ring_index[placement->owner_position(key)];
  }
  const cluster_peer* peer(std::uint32_t index) const noexcept {
    for (const auto& p : peers)
      if (p.index == index) return &p;
    return nullptr;
  }
};

class cluster_node {
 public:
  /// `workers`: this node's (resolved). `changed` runs after each new map is
  /// published (on any thread), to wake the workers.
  cluster_node(cluster::membership_config cfg, std::uint32_t workers,
               std::function<void()> changed);
  ~cluster_node();
  cluster_node(const cluster_node&) = delete;
  cluster_node& operator=(const cluster_node&) = delete;

  /// Registers this node in etcd (joining) and starts the activation thread.
  /// Errors name the etcd endpoints and why, or the node holding this id.
  result<void, std::string> join();
  /// Lame duck: this node turns draining (it leaves the ring).
  void set_draining();
  /// Leaves the cluster (revokes the lease); after the workers stopped.
  void leave();

  const std::string& cluster_name() const noexcept { return cfg_.cluster; }
  const std::string& self_id() const noexcept { return cfg_.self.id; }
  std::uint32_t workers() const noexcept { return workers_; }
  /// This node's tag in Message.ownerCore: ownerCore = tag << 8 | worker, so
  /// that seq rises per ownerCore across the cluster. A 24-bit hash of the
  /// node id, never 0; join() refuses an id whose tag another member has.
  std::uint32_t tag() const noexcept { return tag_; }
  std::int64_t lease() const;
  std::int64_t epoch() const { return map()->epoch; }
  const cluster::peer_link_options& link_options() const noexcept { return link_options_; }
  std::chrono::milliseconds lease_ttl() const noexcept { return cfg_.lease_ttl; }

  std::shared_ptr<const cluster_map> map() const;
  std::uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }
  /// The maps published after generation `after`, oldest first (the last is
  /// map()): a worker that missed some still sees every ring change. Keeps
  /// the last max_history maps.
  std::vector<std::shared_ptr<const cluster_map>> maps_since(std::uint64_t after) const;
  static constexpr std::size_t max_history = 64;

  // ---- hand-off (reported by worker 0; router_cluster.cpp runs it) ------------
  /// How long a ring change's hand-off may hold the moved keys' publishes
  /// before the node gives up waiting for it (a node died meanwhile).
  std::chrono::milliseconds handoff_timeout() const noexcept;
  /// The hand-off to ring epoch `epoch` finished (or timed out) after `took`.
  void handoff_finished(std::int64_t epoch, std::chrono::nanoseconds took, bool timed_out);
  /// After set_draining(): waits until this node is out of the ring and the
  /// hand-off of its keys finished, or `timeout`. Returns false on timeout.
  bool wait_handed_off(std::chrono::milliseconds timeout) const;

  // ---- readiness (reported by the workers) --------------------------------------
  /// Worker `worker`'s link to node `index` came up or went down.
  void link_changed(std::uint32_t worker, std::uint32_t index, bool up);
  /// Worker `peer_worker` of node `index`, incarnation `lease`, finished sending its snapshot.
  void snapshot_received(std::uint32_t index, std::int64_t lease, std::uint32_t peer_worker);
  /// Ready: active in etcd with the lease held, and for every other member
  /// every local worker's link to it is up and all its workers' snapshots
  /// arrived (what activation waits for).
  bool ready() const;
  /// One line per condition, [+] or [-], for /readyz?verbose.
  std::string readiness_report() const;
  /// Whether this node may order publishes at `now_ns` (steady clock, as
  /// worker_services::turn_ns; docs/cluster.md, "Failures"): its lease is
  /// held, and etcd confirmed it within lease_ttl or, etcd being
  /// unreachable, every local worker's link to every other active node is up
  /// (the cluster is whole: an etcd outage). Cut off from etcd and from a
  /// peer it is false: the others may have taken this node's keys. The
  /// activator thread turns those facts into a deadline every 200 ms; a
  /// process that was stopped past it (SIGSTOP, a stalled VM) finds it
  /// passed on its first turn after waking, before anything refreshes it.
  bool may_order(std::uint64_t now_ns) const noexcept {
    return now_ns < order_until_ns_.load(std::memory_order_relaxed);
  }
  /// The "cluster" object of /status.
  std::string status_json() const;
  /// What /metrics reports of the cluster.
  struct stats {
    std::int64_t epoch = 0;
    std::uint32_t members[3] = {};  // by node_state (joining, active, draining), this node included
    struct peer {
      std::string id;
      std::uint32_t index = 0;   // node index (probe::peer())
      std::size_t links_up = 0;  // of workers() links from this node's workers
    };
    std::vector<peer> peers;
    std::uint64_t handoffs = 0;
    std::uint64_t handoff_timeouts = 0;
    double last_handoff_seconds = 0;
  };
  stats read_stats() const;

 private:
  void on_view(const cluster::cluster_view& v);
  std::uint32_t index_of(const std::string& id);  // under mutex_
  bool ready_locked() const;
  /// may_order() as of now, under mutex_; `why` (if given) says what is
  /// missing, or that etcd is unreachable while the links keep it going.
  bool may_order_locked(std::string* why = nullptr) const;
  /// Until when this node may order, as of `now`; none: not now.
  std::optional<std::chrono::steady_clock::time_point> order_deadline_locked(
      std::chrono::steady_clock::time_point now, std::string* why) const;
  /// Under mutex_: sets order_until_ns_ from the lease and the links.
  void refresh_order_deadline();
  /// The links and snapshots of ready(), without the state: what activation waits for.
  bool peers_ready_locked() const;
  /// Under mutex_: local workers with their link to node `index` up, and
  /// the workers of `p` (this incarnation) whose snapshot arrived.
  std::size_t links_up_to(std::uint32_t index) const;
  std::size_t snapshots_from(const cluster_peer& p) const;
  void activate_when_ready();
  void stop_activator();

  const cluster::membership_config cfg_;
  const std::uint32_t workers_;
  const std::uint32_t tag_;
  std::function<void()> changed_;
  cluster::peer_link_options link_options_;
  std::unique_ptr<cluster::membership> membership_;

  mutable std::mutex mutex_;
  std::shared_ptr<const cluster_map> map_;
  std::vector<std::shared_ptr<const cluster_map>> history_;  // the last max_history maps
  std::atomic<std::uint64_t> generation_{0};
  std::int64_t handed_off_ = 0;  // the newest epoch whose hand-off finished
  std::uint64_t handoffs_ = 0;
  std::uint64_t handoff_timeouts_ = 0;
  double last_handoff_seconds_ = 0;
  mutable std::condition_variable handed_off_cv_;
  std::map<std::string, std::uint32_t> indexes_;
  std::vector<std::set<std::uint32_t>> links_up_;  // per local worker: node indexes
  struct snapshot_record {
    std::int64_t lease = 0;
    std::set<std::uint32_t> workers;
  };
  std::map<std::uint32_t, snapshot_record> snapshots_;
  cluster::node_state state_ = cluster::node_state::joining;  // this node's, as etcd shows it

  /// may_order()'s deadline: the lease's confirmation plus lease_ttl, or a
  /// short while past the activator's last look during an etcd outage with
  /// every link up; 0 without the lease.
  std::atomic<std::uint64_t> order_until_ns_{~std::uint64_t{0}};
  bool ordering_ = true;                 // the activator's last verdict, for its log lines
  std::int64_t self_lease_in_view_ = 0;  // this node's lease as the latest view shows it
  std::chrono::steady_clock::time_point last_look_{};  // refresh_order_deadline's last run
  std::chrono::steady_clock::time_point woke_at_{};    // when it last found a gap (a stall)
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread activator_;
};

}  // namespace keyway::daemon
