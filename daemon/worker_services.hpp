// worker_services: what a connection may ask of the worker it lives on — the
// one seam between connection and router, as nats-server's client talks to
// its server through a handful of calls and Envoy's connections reach their
// worker through its dispatcher. The router implements it; a connection sees
// nothing else of the router, and the router reaches a connection only
// through connection's public methods.
//
// Two halves:
//  - the worker's state, read inline (on the hot path): options in force,
//    tokens, encoder, allocator, probe, the turn clock, placement (which
//    worker owns a key), the server's lifecycle;
//  - the worker's services, virtual (the router's): hand a publish to its
//    owner, send a barrier, admit / release / broadcast subscriptions,
//    throttle a publisher, and schedule a connection (flush it at the end of
//    this turn, retry it when credit returns, forget it once closed).
//
// Who owns what: a connection owns its socket, buffers, subscriptions (sid →
// uid, cost) and pending acks; the router owns the connection table, the
// subscription index, the sequence counter, the mesh endpoint and the uid and
// index-memory accounting.
//
// Threads: the owning worker's only; every virtual is asserted there by the
// router.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/result.hpp>

#include "config/options.hpp"
#include "core/partitioner.hpp"
#include "core/worker.hpp"
#include "daemon/probe.hpp"
#include "daemon/route.hpp"
#include "proto/encoder.hpp"

namespace keyway::daemon {

class connection;

class worker_services {
 public:
  /// Member slots of a queue group in the subscription index.
  static constexpr std::size_t group_slots = 4096;

  worker_services(const worker_services&) = delete;
  worker_services& operator=(const worker_services&) = delete;

  // ---- the worker's state ------------------------------------------------------
  core::worker& worker() const noexcept { return w_; }
  /// The options in force on this worker: the server's, then what reloads
  /// changed (log level, limits, tokens).
  const server_options& options() const noexcept { return live_; }
  /// Auth tokens; empty: no authentication.
  const std::vector<std::string>& tokens() const noexcept { return *tokens_; }
  std::string_view server_id() const noexcept { return server_id_; }
  /// The client URLs a welcome lists: server.advertise, or in a cluster every
  /// member's.
  const std::vector<std::string>& connect_urls() const noexcept { return connect_urls_; }
  std::uint32_t workers() const noexcept { return workers_; }
  /// One encoder per worker, shared by its connections (it holds a scratch
  /// segment of limits.max_frame bytes).
  proto::encoder& encoder() noexcept { return *encoder_; }
  /// This worker's allocator for the messages it builds.
  core::block_pool& pool() noexcept { return pool_; }
  probe& stats() noexcept { return probe_; }
  /// The steady clock in ns, read once per loop turn (deliveries of one turn
  /// share it), and again when a message received later than that reading
  /// comes through: the "written" end of the latency histogram.
  std::uint64_t turn_ns(std::uint64_t not_before) noexcept {
    if (turn_ns_ < not_before)
      turn_ns_ = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch() /
                                            std::chrono::nanoseconds(1));
    return turn_ns_;
  }
  /// The worker that owns a routing key.
  std::uint32_t owner_of(const shared_message& m) noexcept {
    return workers_ == 1 ? 0 : owners_->pick(m.routing_key());
  }
  /// Index memory a subscription costs on all workers together.
  std::uint64_t subscription_cost(std::string_view pattern, std::string_view group) const;
  /// The drain began: connections stop reading.
  bool draining() const noexcept { return draining_.load(std::memory_order_relaxed); }
  /// This worker told its clients the server is shutting down (lame duck): a
  /// connection that completes its handshake later is told after its welcome.
  bool draining_announced() const noexcept { return announced_; }

  // ---- the worker's services -------------------------------------------------
  /// Whether any subscription matches `subject`, by this worker's replica of
  /// the index (which holds every acknowledged subscription).
  virtual bool has_interest(std::string_view subject) = 0;
  /// Hands an accepted publish to `owner` (owner_of(*op.msg)), or in a
  /// cluster to the node that owns its key. Returns the node it went to (0:
  /// this one), or nothing if the owner has no credit (or the link to its
  /// node is down or full): the op is left intact, and the connection must
  /// wait (resume_later()) until credit returns.
  virtual std::optional<std::uint32_t> route(publish_op& op, std::uint32_t owner) = 0;
  /// Sends a barrier (route.hpp) of connection `conn`'s round `round` to
  /// worker `owner` (not this one). Never refused.
  virtual void barrier(std::uint32_t owner, std::uint64_t conn, std::uint64_t round) = 0;
  /// The same for the publishes forwarded to node `node` (cluster): false if
  /// the link is down (what it carried is lost with it; nothing to wait for).
  virtual bool barrier_node(std::uint32_t node, std::uint64_t conn, std::uint64_t round) = 0;

  /// Checks a new subscription against this worker's replica of the index
  /// (queue-group members, pattern shapes) and its share of
  /// limits.max_total_subscription_bytes; charges `cost`
  /// (subscription_cost()) and returns a daemon-wide uid, or why not (for a
  /// tooManySubscriptions error).
  virtual result<std::uint32_t, std::string> admit_subscription(std::string_view pattern,
                                                                std::string_view group,
                                                                std::uint64_t cost) = 0;
  /// Gives back what admit_subscription() charged, when subscriptions go.
  virtual void release_subscriptions(std::uint64_t cost) noexcept = 0;
  /// Applies subscription changes on every worker (this one included) and,
  /// in a cluster, on every node with a link up; each with a request id is
  /// answered by connection::sub_applied() once per worker and once per other
  /// node. Returns how many answers each will get.
  virtual std::uint32_t broadcast(std::vector<sub_spec> changes) = 0;
  /// Pauses (on) or resumes (off) reading from connection `conn`, which may
  /// live on any worker.
  virtual void throttle(std::uint64_t conn, bool on) = 0;

  /// Calls c.flush() at the end of this loop turn (once per call).
  virtual void flush_later(connection& c) = 0;
  /// Calls c.resume() when credit may have returned, until it returns true.
  virtual void resume_later(connection& c) = 0;
  /// c finished closing: the worker forgets it (after this turn's flush).
  virtual void closed(connection& c) = 0;

 protected:
  worker_services(core::worker& w, std::string_view server_id, std::uint32_t workers,
                  const std::atomic<bool>& draining, core::block_pool& pool, probe& stats,
                  const server_options& live,
                  std::shared_ptr<const std::vector<std::string>> tokens,
                  std::unique_ptr<core::partitioner> owners);
  ~worker_services();

  core::worker& w_;
  const std::string_view server_id_;
  const std::uint32_t workers_;
  const std::atomic<bool>& draining_;
  core::block_pool& pool_;
  probe& probe_;
  std::uint64_t turn_ns_ = 0;
  server_options live_;
  std::shared_ptr<const std::vector<std::string>> tokens_;
  std::unique_ptr<proto::encoder> encoder_;
  std::unique_ptr<core::partitioner> owners_;
  std::vector<std::string> connect_urls_;
  bool announced_ = false;
};

}  // namespace keyway::daemon
