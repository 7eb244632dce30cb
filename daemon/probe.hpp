// daemon_stats: the routing service's per-worker counters (Redpanda's probe.h
// habit). Written only by the owning worker with plain stores; summed by the
// admin endpoint at scrape time from any thread. Header only.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/cache.hpp"
#include "core/stats.hpp"
#include "proto/errc.hpp"

namespace keyway::daemon {

enum class drop_reason : std::size_t { slow_consumer, connection_gone, encode_failed, count_ };
enum class transport : std::size_t { tcp, unix_socket, count_ };

/// Frame received → delivery queued for the socket write, in nanoseconds.
/// Log-linear buckets: upper bounds 1 µs · 2^(i/2), i = 0..latency_buckets-1
/// (1 µs to ~16 s, two buckets per doubling), plus +Inf. Single writer.
struct latency_histogram {
  static constexpr std::size_t buckets = 49;
  /// Upper bound of bucket i in nanoseconds.
  static double bound_ns(std::size_t i) noexcept;
  static std::size_t bucket_of(std::uint64_t ns) noexcept;
  void record(std::uint64_t ns) noexcept {
    counts[bucket_of(ns)].add();
    sum_ns.add(ns);
  }
  std::array<core::counter, buckets + 1> counts;  // the last one is +Inf
  core::counter sum_ns;
};

struct alignas(core::cache_line) daemon_stats {
  core::counter frames_in;  // frames decoded from clients
  core::counter bytes_in;   // bytes read from client sockets
  core::counter bytes_out;  // bytes written to client sockets
  core::counter published;  // publishes accepted at ingress
  core::counter routed;     // publishes ordered at their owner core
  core::counter
      unmatched;  // publishes without ack that matched no subscription, dropped at ingress
  core::counter delivered;  // message frames queued to subscribers
  core::counter acks_sent;
  core::counter slow_consumers;  // connections that crossed max_pending_bytes
  core::counter subscriptions;   // gauge: live subscriptions owned by this worker
  core::counter paused_reads;    // times a connection stopped reading for lack of credit
  core::counter
      pending_out_bytes;         // gauge: bytes queued to sockets, updated each turn while draining
  core::counter auth_failures;   // hellos refused for a missing or unknown token
  core::counter accept_errors;   // accept() failures (each followed by a backoff)
  core::counter congested;       // gauge: connections over half their max_pending_bytes
  core::counter throttles_sent;  // publishers paused for a congested subscriber
  core::counter subscriptions_refused;  // subscriptions a replica refused after the owner's check
  std::array<core::counter, static_cast<std::size_t>(transport::count_)> connections;  // gauges
  std::array<core::counter, static_cast<std::size_t>(transport::count_)> accepted;
  std::array<core::counter, static_cast<std::size_t>(drop_reason::count_)> drops;
  /// Error frames sent, by proto::errc (index = the enum's value).
  std::array<core::counter, static_cast<std::size_t>(proto::errc::count_)> errors;
  latency_histogram latency;

  core::counter& connections_on(bool unix_socket) noexcept {
    return connections[static_cast<std::size_t>(unix_socket ? transport::unix_socket
                                                            : transport::tcp)];
  }
  core::counter& accepted_on(bool unix_socket) noexcept {
    return accepted[static_cast<std::size_t>(unix_socket ? transport::unix_socket
                                                         : transport::tcp)];
  }
};

}  // namespace keyway::daemon
