// membership: this node's place in a cluster whose membership lives in etcd
// (docs/cluster.md). A node holds an etcd lease and one key bound to it,
// /keyway/<cluster>/nodes/<node_id>, whose value describes the node (client
// URLs, peer URL, workers, state); it is created only if absent, so a
// duplicate node id is refused. Every node watches the prefix. The ring is
// the set of active nodes; its epoch is the etcd revision of the last change
// to that set, so every node watching sees the same sequence of (epoch, ring).
//
// A node that joins reads the members once (a range at revision R) and then
// watches from R + 1. Its first epoch is the newest revision among the active
// nodes' keys: the same as everyone's unless the last change was a node
// leaving, which a read cannot see. From the revision at which it turns
// active, a change every node sees through its watch, all nodes agree on
// every epoch.
//
// Threads: join(), set_state() and leave() from one thread at a time (the
// server's); view(), lease_held(), incarnation(), lease() and
// etcd_reachable() from any thread. One control thread,
// started by join(), renews the lease every lease_ttl / 3 and applies the
// watch's events; the observer runs on it. Each thread has its own
// etcd_client, so a slow keepalive never waits for a state change or the
// other way round.
//
// Cost: one etcd round trip per keepalive (every lease_ttl / 3) and per state
// change; the watch is one long-lived HTTP stream; a view is rebuilt per
// event (members are few).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <keyway/result.hpp>

namespace keyway::cluster {

class etcd_client;
class etcd_watch;
struct watch_event;
struct kv;

enum class node_state { joining, active, draining };
std::string_view to_string(node_state s) noexcept;

/// A node as its etcd key describes it (JSON in the value).
struct node_info {
  std::string id;
  std::vector<std::string> client_urls;
  std::string peer_url;
  std::uint32_t workers = 0;
  node_state state = node_state::joining;
};

/// The value of a node's key, and back. decode() names what is wrong.
std::string encode(const node_info& n);
result<node_info, std::string> decode_node(std::string_view json);

struct member {
  node_info info;
  std::int64_t lease = 0;  // the lease its key is bound to: the node's incarnation
  std::int64_t mod_revision = 0;
};

/// The cluster as one node sees it at one etcd revision.
struct cluster_view {
  std::int64_t revision = 0;      // the etcd revision this view reflects
  std::int64_t epoch = 0;         // the revision of the last change to `ring`
  std::vector<member> members;    // every registered node, by id
  std::vector<std::string> ring;  // the active nodes' ids, sorted

  const member* find(std::string_view id) const noexcept;
};

struct membership_config {
  std::string cluster = "keyway";
  node_info self;  // its state is where join() starts (joining)
  std::vector<std::string> etcd_endpoints{"http://127.0.0.1:2379"};
  std::chrono::milliseconds lease_ttl{3000};
  /// Per etcd call and per endpoint.
  std::chrono::milliseconds etcd_timeout{2000};
};

/// What join() would refuse, checked without registering anything: etcd
/// answers at one of the endpoints, and no node holds cfg.self.id. Errors
/// read as join()'s do.
result<void, std::string> check_join(const membership_config& cfg);

class membership {
 public:
  /// Runs on the control thread after every change of the view, with the new view.
  using observer = std::function<void(const cluster_view&)>;

  explicit membership(membership_config cfg, observer on_change = {});
  /// Stops the control thread. Without leave() first the key stays until
  /// the lease expires (within lease_ttl), as after a crash.
  ~membership();
  membership(const membership&) = delete;
  membership& operator=(const membership&) = delete;

  /// Registers this node: grants a lease, creates its key (state joining) if
  /// no node holds that id, reads the members, and starts the control thread.
  /// Errors name the etcd endpoints tried and why, or the node already
  /// registered under this id.
  result<void, std::string> join();
  /// Moves this node to `s` in etcd; returns once etcd took it (the view
  /// changes when the watch brings the change back).
  result<void, std::string> set_state(node_state s);
  /// Leaves the cluster: revokes the lease, which deletes the key at once,
  /// and stops the control thread.
  result<void, std::string> leave();

  /// The latest view; never null after join().
  std::shared_ptr<const cluster_view> view() const;
  /// False once the lease is known to be gone: etcd said so (a keepalive
  /// answered with no TTL left). The node is then out of the ring for every
  /// other node. The control thread registers it again as a new incarnation
  /// (a new lease, state joining) as soon as etcd lets it; set_state() then
  /// makes it active again. While etcd does not answer at all, the lease is
  /// not known to be gone (an etcd outage keeps every lease: etcd renews
  /// them when it is back), so it stays held; last_renewed() tells for how
  /// long nothing was confirmed, and the caller decides what that means.
  bool lease_held() const noexcept { return lease_held_.load(std::memory_order_acquire); }
  /// When a keepalive last succeeded (or the lease was granted).
  std::chrono::steady_clock::time_point last_renewed() const noexcept {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(last_renewed_.load(std::memory_order_acquire)));
  }
  std::chrono::milliseconds lease_ttl() const noexcept { return cfg_.lease_ttl; }
  /// 1 after join(), one more per new registration after a lost lease.
  std::uint64_t incarnation() const noexcept {
    return incarnation_.load(std::memory_order_acquire);
  }
  /// The lease this incarnation's key is bound to.
  std::int64_t lease() const;
  /// Whether the last call to etcd (keepalive or read) got an answer.
  bool etcd_reachable() const noexcept { return etcd_reachable_.load(std::memory_order_acquire); }
  /// This node's key: /keyway/<cluster>/nodes/<id>.
  const std::string& key() const noexcept { return key_; }
  std::string prefix() const;

 private:
  /// Grants a lease and creates this node's key (joining) if absent.
  result<void, std::string> register_self(etcd_client& etcd);
  void run();
  void keepalive();
  /// Applies one event to the working view; the epoch moves if the ring did.
  void apply(const watch_event& e);
  /// Reads every member again and watches from there (after a broken watch).
  result<void, std::string> resync();
  void publish();

  const membership_config cfg_;  // any thread
  observer on_change_;
  std::string key_;
  std::unique_ptr<etcd_client> calls_;      // join/set_state/leave's thread
  std::unique_ptr<etcd_client> keepalive_;  // the control thread's
  std::unique_ptr<etcd_watch> watch_;       // the control thread's
  mutable std::mutex self_mutex_;           // lease_ and self_: the control thread re-registers
  std::int64_t lease_ = 0;
  node_info self_;        // as last written
  cluster_view working_;  // the control thread's copy
  mutable std::mutex view_mutex_;
  std::shared_ptr<const cluster_view> view_;
  std::atomic<bool> lease_held_{false};
  std::atomic<bool> etcd_reachable_{false};
  std::atomic<std::uint64_t> incarnation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<std::chrono::steady_clock::rep> last_renewed_{0};  // last_renewed()
  bool outage_logged_ = false;  // the control thread's: one error line per etcd outage
  std::thread thread_;
};

}  // namespace keyway::cluster
