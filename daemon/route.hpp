// route_msg: everything one worker tells another, as one mesh message type.
//
// Data plane:   publish (ingress → key owner), deliver (owner → subscriber's
//               worker), reply (owner → ingress: publisher ack or no_responders),
//               throttle (subscriber's worker → a publisher's worker: pause or
//               resume reading that publisher while the subscriber is congested),
//               barrier (ingress → an owner and back: a ping's pong waits until
//               every earlier publish of its connection was routed), fence (a
//               cluster ring change's hand-off steps).
// Control plane: sub_change (subscriber's worker → every worker), sub_applied
//               (every worker → subscriber's worker, for the subscribe ack),
//               adopt (acceptor → worker: a new socket), conn_closed (worker →
//               acceptor: one connection fewer).
//
// Threads: built by the sender, moved through the mesh, consumed by the
// receiver; nothing in it is mutable shared state (shared_message and
// sub_change specs are immutable).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "daemon/shared_message.hpp"
#include "daemon/subject_index.hpp"

namespace keyway::daemon {

struct publish_op {
  message_ref msg;
  std::uint64_t conn = 0;    // ingress connection (for the ack)
  std::uint64_t ack_id = 0;  // 0: no ack wanted
  std::uint32_t from = 0;    // ingress worker
  std::uint32_t origin = 0;  // ingress node (cluster_node's index; 0: this one)
  std::int64_t epoch = 0;    // in a cluster: the ring epoch it was routed by (stamped on its
                             // forward and on its deliveries to other nodes)
};

/// The publisher of a delivery that came from another node: not throttled
/// (the congested subscriber's node cannot pause a connection elsewhere).
inline constexpr std::uint64_t remote_publisher = ~std::uint64_t{0};

/// sub_ref::worker of a subscription held by another node: this base plus
/// the node's index (cluster_node.hpp); conn and sid are the remote ones.
inline constexpr std::uint32_t remote_worker_base = 1u << 16;

/// Workers a daemon may run: a subscription id keeps its worker in 8 bits.
inline constexpr std::size_t max_workers = 256;

/// flush() made exact (a ping's pong means "routed"): the ingress worker sends
/// one to each owner its connection published to since its last barrier, on
/// the same FIFO ring as those publishes, so the owner sees it after routing
/// them. The owner sends it back (`answer` set) on its ring to the ingress
/// worker, behind the deliveries and acks that routing produced for that
/// worker. Neither leg may be refused for credit (mesh send(), not try_send()).
struct barrier_op {
  std::uint64_t conn = 0;   // the pinging connection (its worker in the top 16 bits)
  std::uint64_t round = 0;  // the connection's barrier round, for its pending pings
  bool answer = false;      // false: ingress → owner; true: owner → ingress
  /// Non-zero: the pinging connection is node `node`'s (a peer barrier frame
  /// worker 0 passed on); the answer goes to worker 0, which answers that
  /// node once every worker did.
  std::uint32_t node = 0;
  /// Set on an answer that came back from node `answered_by` (cluster).
  std::uint32_t answered_by = 0;
};

struct delivery_target {
  std::uint64_t conn = 0;
  std::uint32_t sid = 0;
};

/// Delivery targets beyond the first, in one block of the sending worker's
/// pool: released on the receiving worker, the block goes back through the
/// pool's remote list rather than through malloc's arena lock.
class target_list {
 public:
  target_list() = default;
  target_list(core::block_pool& pool, std::span<const delivery_target> targets)
      : size_(targets.size()) {
    if (targets.empty()) return;
    data_ = static_cast<delivery_target*>(pool.allocate(targets.size_bytes()));
    std::memcpy(static_cast<void*>(data_), targets.data(), targets.size_bytes());
  }
  target_list(target_list&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  target_list& operator=(target_list&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~target_list() { core::block_pool::deallocate(data_); }

  const delivery_target* begin() const noexcept { return data_; }
  const delivery_target* end() const noexcept { return data_ + size_; }

 private:
  static_assert(std::is_trivially_copyable_v<delivery_target>);
  delivery_target* data_ = nullptr;
  std::size_t size_ = 0;
};

struct deliver_op {
  message_ref msg;
  std::uint64_t seq = 0;
  std::uint32_t core = 0;  // owner core that stamped seq
  // The targets, all on the receiving worker: `first`, then `more`. One
  // subscriber per worker (the usual case) needs no allocation.
  delivery_target first;
  target_list more;
  std::uint64_t publisher = 0;  // the ingress connection (its worker in the top 16 bits)
};

struct reply_op {
  message_ref msg;  // the publish answered (for no_responders details)
  std::uint64_t conn = 0;
  std::uint64_t ack_id = 0;
  std::uint32_t delivered = 0;
  std::uint32_t node = 0;  // the node that answered (a forwarded publish); 0: this one
  /// Set: that node did not order the publish, and says why (ownerLost).
  std::shared_ptr<const std::string> refused;
};

struct sub_spec {
  bool add = true;
  std::string pattern;  // add only
  std::string group;    // add only
  sub_ref ref;
  std::uint64_t request_id = 0;  // the client's subscribe/unsubscribe request id
};

struct sub_change_op {
  std::shared_ptr<const std::vector<sub_spec>> changes;  // applied in order
};

struct sub_applied_op {
  std::uint64_t conn = 0;
  /// Non-zero: the subscription is node `node`'s (a remote one), and the
  /// answer goes to worker 0, which tells that node once every worker applied it.
  std::uint32_t node = 0;
  std::uint64_t request_id = 0;
  std::uint32_t sid = 0;
  std::uint32_t uid = 0;
  /// Set when this worker's index refused the subscription (a limit reached
  /// by a change still in flight when the subscriber's worker checked it):
  /// why, for the error frame. Sent even without a request id.
  std::shared_ptr<const std::string> refused;
  /// Set on another node's answer to this node's change: that node (cluster).
  std::uint32_t answered_by = 0;
};

/// One congestion episode of one subscriber: `on` pauses reading from
/// connection `conn`, and exactly one later message with `on` false resumes it.
struct throttle_op {
  std::uint64_t conn = 0;
  bool on = false;
};

/// A step of a ring change's hand-off inside one node (router_cluster.cpp):
/// ingress (every worker → every worker: I route by the new ring), ingress_remote
/// (worker 0 → every worker: so does every other node's every worker),
/// ordered (every worker → every worker: I ordered everything routed by the
/// old ring), ordered_remote (worker 0 → every worker: so did every other
/// node's), fenced (every worker → worker 0: I took in every delivery of the
/// old ring), done (worker 0 → every worker: so did every node; route the
/// moved keys again).
struct fence_op {
  enum class step : std::uint8_t { ingress, ingress_remote, ordered, ordered_remote, fenced, done };
  step what = step::ingress;
  std::int64_t epoch = 0;
  std::uint32_t from = 0;
};

struct adopt_op {
  int fd = -1;
  bool unix_socket = false;
};

struct conn_closed_op {};

using route_msg = std::variant<publish_op, deliver_op, reply_op, sub_change_op, sub_applied_op,
                               adopt_op, conn_closed_op, throttle_op, barrier_op, fence_op>;

}  // namespace keyway::daemon
