// probe: the routing service's per-worker counters, as Redpanda's probe.h
// does it. Code that counts calls a verb (published(n), delivered(latency),
// error_sent(code)); the counters are private; the Prometheus families they
// feed are listed beside them, in probe.cpp's table (probe::metrics()), so a
// new counter and its metric name are written in one place.
//
// Threads: the verbs are called by the owning worker only (each counter is a
// single-writer core::counter: a plain store). The readers and the metric
// table's read functions may run on any thread (relaxed loads): the admin
// thread sums them at scrape time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/cache.hpp"
#include "core/stats.hpp"
#include "proto/errc.hpp"

namespace keyway::daemon {

enum class drop_reason : std::size_t {
  slow_consumer,
  connection_gone,
  encode_failed,
  peer_link_down,
  stale_peer,
  stale_owner,
  count_
};

/// Frame received → delivery queued for the socket write, in nanoseconds.
/// Log-linear buckets: upper bounds 1 µs · 2^(i/2), i = 0..buckets-1 (1 µs to
/// ~16 s, two buckets per doubling), plus +Inf. Single writer.
class latency_histogram {
 public:
  static constexpr std::size_t buckets = 49;
  /// Upper bound of bucket i in nanoseconds.
  static double bound_ns(std::size_t i) noexcept;
  static std::size_t bucket_of(std::uint64_t ns) noexcept;
  void record(std::uint64_t ns) noexcept {
    counts_[bucket_of(ns)].add();
    sum_ns_.add(ns);
  }
  /// Samples in bucket b (b == buckets: +Inf), not cumulative. Any thread.
  std::uint64_t count(std::size_t b) const noexcept { return counts_[b].get(); }
  std::uint64_t sum_ns() const noexcept { return sum_ns_.get(); }

 private:
  std::array<core::counter, buckets + 1> counts_;  // the last one is +Inf
  core::counter sum_ns_;
};

class probe;

/// One Prometheus family fed by probe counters. `label` empty: one series;
/// otherwise one series per entry of `label_values`, `read`'s index. The
/// metrics collector sums `read` over workers, or (per_worker) labels each
/// worker's value with `worker`.
struct probe_metric {
  std::string_view name;
  std::string_view help;
  bool gauge;
  bool per_worker;
  std::string_view label;
  std::span<const std::string_view> label_values;
  std::uint64_t (*read)(const probe&, std::size_t label_index);
};

class alignas(core::cache_line) probe {
 public:
  // ---- verbs (owning worker only) ---------------------------------------------
  void frame_received() noexcept { frames_in_.add(); }
  void bytes_read(std::size_t n) noexcept { bytes_in_.add(n); }
  void bytes_written(std::size_t n) noexcept { bytes_out_.add(n); }
  /// `n` publishes accepted at ingress.
  void published(std::uint32_t n) noexcept { published_.add(n); }
  /// `n` publishes without an ack that matched no subscription, dropped at ingress.
  void unmatched(std::uint32_t n) noexcept { unmatched_.add(n); }
  /// A publish ordered at its owner core.
  void routed() noexcept { routed_.add(); }
  /// A message frame queued to a subscriber, `latency_ns` after its publish was read.
  void delivered(std::uint64_t latency_ns) noexcept {
    delivered_.add();
    latency_.record(latency_ns);
  }
  void dropped(drop_reason why, std::uint64_t n = 1) noexcept {
    drops_[static_cast<std::size_t>(why)].add(n);
  }
  /// Links to other cluster nodes, by node index (cluster_node.hpp); nodes
  /// beyond peer_slots share the last slot.
  static constexpr std::size_t peer_slots = 64;
  struct peer_traffic {
    core::counter frames;           // queued on the link
    core::counter bytes;            // of those frames
    core::counter messages;         // forwarded publishes and delivered copies among them
    core::counter queued;           // gauge: bytes queued and not yet written, at the end of a turn
    core::counter queued_since_ns;  // gauge: steady-clock ns of the oldest of them; 0: none
  };
  /// `frames` frames of `bytes` in all, carrying `messages` messages, queued
  /// on the link to node `node`.
  void peer_sent(std::uint32_t node, std::uint32_t frames, std::size_t bytes,
                 std::uint32_t messages) noexcept {
    peer_traffic& t = peers_[std::min<std::size_t>(node, peer_slots - 1)];
    t.frames.add(frames);
    t.bytes.add(bytes);
    if (messages != 0) t.messages.add(messages);
  }
  void peer_queued(std::uint32_t node, std::size_t bytes, std::uint64_t since_ns) noexcept {
    peer_traffic& t = peers_[std::min<std::size_t>(node, peer_slots - 1)];
    t.queued.set(bytes);
    t.queued_since_ns.set(since_ns);
  }
  const peer_traffic& peer(std::uint32_t node) const noexcept {
    return peers_[std::min<std::size_t>(node, peer_slots - 1)];
  }
  void ack_sent() noexcept { acks_sent_.add(); }
  void error_sent(proto::errc code) noexcept { errors_[static_cast<std::size_t>(code)].add(); }
  void auth_failed() noexcept { auth_failures_.add(); }
  /// A connection stopped reading (no credit, its own output, throttled, pings).
  void read_paused() noexcept { paused_reads_.add(); }
  void slow_consumer() noexcept { slow_consumers_.add(); }
  /// A connection went over half its max_pending_bytes / came back under a quarter.
  void congestion_began() noexcept { congested_.add(); }
  void congestion_ended() noexcept { congested_.set(congested_.get() - 1); }
  /// A publisher paused for a congested subscriber of this worker.
  void throttle_sent() noexcept { throttles_sent_.add(); }
  void subscriptions_added(std::size_t n) noexcept { subscriptions_.add(n); }
  void subscriptions_removed(std::size_t n) noexcept {
    subscriptions_.set(subscriptions_.get() - n);
  }
  /// This worker's replica refused a subscription its subscriber's worker admitted.
  void subscription_refused() noexcept { subscriptions_refused_.add(); }
  void connection_opened(bool unix_socket) noexcept {
    accepted_[unix_socket].add();
    connections_[unix_socket].add();
  }
  void connection_closed(bool unix_socket) noexcept {
    connections_[unix_socket].set(connections_[unix_socket].get() - 1);
  }
  void accept_failed() noexcept { accept_errors_.add(); }
  /// Bytes queued to this worker's sockets (updated each turn while draining).
  void pending_out(std::uint64_t bytes) noexcept { pending_out_bytes_.set(bytes); }

  // ---- readers (any thread) -------------------------------------------------
  std::uint64_t open_connections() const noexcept {
    return connections_[0].get() + connections_[1].get();
  }
  std::uint64_t live_subscriptions() const noexcept { return subscriptions_.get(); }
  std::uint64_t pending_out_bytes() const noexcept { return pending_out_bytes_.get(); }
  std::uint64_t paused_reads() const noexcept { return paused_reads_.get(); }
  const latency_histogram& latency() const noexcept { return latency_; }

  /// The Prometheus families these counters feed (names in docs/metrics.md).
  static std::span<const probe_metric> metrics() noexcept;

 private:
  core::counter frames_in_;
  core::counter bytes_in_;
  core::counter bytes_out_;
  core::counter published_;
  core::counter routed_;
  std::array<peer_traffic, peer_slots> peers_;
  core::counter unmatched_;
  core::counter delivered_;
  core::counter acks_sent_;
  core::counter slow_consumers_;
  core::counter subscriptions_;  // gauge
  core::counter paused_reads_;
  core::counter pending_out_bytes_;  // gauge
  core::counter auth_failures_;
  core::counter accept_errors_;
  core::counter congested_;  // gauge
  core::counter throttles_sent_;
  core::counter subscriptions_refused_;
  std::array<core::counter, 2> connections_;  // gauges, [unix_socket]
  std::array<core::counter, 2> accepted_;     // [unix_socket]
  std::array<core::counter, static_cast<std::size_t>(drop_reason::count_)> drops_;
  std::array<core::counter, static_cast<std::size_t>(proto::errc::count_)> errors_;
  latency_histogram latency_;
};

}  // namespace keyway::daemon
