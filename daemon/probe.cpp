#include "daemon/probe.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <string>

namespace keyway::daemon {
namespace {

struct bounds_table {
  std::array<std::uint64_t, latency_histogram::buckets> ns{};
  bounds_table() {
    for (std::size_t i = 0; i < ns.size(); ++i)
      ns[i] = static_cast<std::uint64_t>(
          std::llround(1000.0 * std::exp2(static_cast<double>(i) / 2.0)));
  }
};
const bounds_table table;

}  // namespace

double latency_histogram::bound_ns(std::size_t i) noexcept {
  return static_cast<double>(table.ns[i]);
}

std::size_t latency_histogram::bucket_of(std::uint64_t ns) noexcept {
  // The first bound >= ns (buckets are "le"); past the last: +Inf. For ns in
  // [2^k, 2^(k+1)) that bucket is at least 2k - 19 (bound i is 1000 · 2^(i/2)
  // and 1000 > 2^9.96), so start at 2k - 20 and step: at most three compares,
  // where a binary search over 49 bounds mispredicted its way to ~60 instructions.
  const int k = std::bit_width(ns) - 1;
  std::size_t i = k > 10 ? std::min<std::size_t>(2 * k - 20, buckets) : 0;
  while (i < buckets && table.ns[i] < ns) ++i;
  return i;
}

namespace {

constexpr std::array<std::string_view, 2> transports{"tcp", "unix"};
constexpr std::array<std::string_view, 6> drop_reasons{"slow_consumer", "connection_gone",
                                                       "encode_failed", "peer_link_down",
                                                       "stale_peer",    "stale_owner"};
static_assert(drop_reasons.size() == static_cast<std::size_t>(drop_reason::count_));

/// Every error code's wire name, by value (0, none, included: never sent).
const std::array<std::string_view, static_cast<std::size_t>(proto::errc::count_)> error_codes = [] {
  std::array<std::string_view, static_cast<std::size_t>(proto::errc::count_)> names{};
  for (std::size_t k = 0; k < names.size(); ++k)
    names[k] = proto::to_string(static_cast<proto::errc>(k));
  return names;
}();

}  // namespace

std::span<const probe_metric> probe::metrics() noexcept {
  constexpr bool counter = false, gauge = true;
  constexpr bool summed = false, per_worker = true;
  using p = const probe&;
  // Read functions ignore the label index unless the family has a label.
  static const std::array<probe_metric, 20> table{{
      {"keyway_messages_received_total",
       "Publishes accepted from clients, by ingress worker",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.published_.get(); }},
      {"keyway_messages_routed_total",
       "Publishes ordered at their owner core",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.routed_.get(); }},
      {"keyway_messages_unmatched_total",
       "Publishes without an ack request that matched no subscription, dropped at ingress",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.unmatched_.get(); }},
      {"keyway_messages_delivered_total",
       "Message frames queued to subscribers, by the subscriber's worker",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.delivered_.get(); }},
      {"keyway_frames_received_total",
       "Frames decoded from clients",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.frames_in_.get(); }},
      {"keyway_received_bytes_total",
       "Bytes read from client sockets",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.bytes_in_.get(); }},
      {"keyway_sent_bytes_total",
       "Bytes written to client sockets",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.bytes_out_.get(); }},
      {"keyway_acks_sent_total",
       "Acks sent (for publishes with an ack id, subscribes and unsubscribes)",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.acks_sent_.get(); }},
      {"keyway_dropped_messages_total", "Deliveries dropped, by reason", counter, summed, "reason",
       drop_reasons, [](p s, std::size_t k) { return s.drops_[k].get(); }},
      // Code 0 (none) is never sent: the family starts at 1.
      {"keyway_errors_total", "Error frames sent to clients, by code", counter, summed, "code",
       std::span(error_codes).subspan(1),
       [](p s, std::size_t k) { return s.errors_[k + 1].get(); }},
      {"keyway_connections", "Open client connections, by transport", gauge, summed, "transport",
       transports, [](p s, std::size_t k) { return s.connections_[k].get(); }},
      {"keyway_connections_accepted_total", "Client connections accepted, by transport", counter,
       summed, "transport", transports, [](p s, std::size_t k) { return s.accepted_[k].get(); }},
      {"keyway_subscriptions",
       "Live subscriptions",
       gauge,
       summed,
       {},
       {},
       [](p s, std::size_t) { return s.subscriptions_.get(); }},
      {"keyway_slow_consumers_total",
       "Connections that went over limits.max_pending_bytes",
       counter,
       summed,
       {},
       {},
       [](p s, std::size_t) { return s.slow_consumers_.get(); }},
      {"keyway_auth_failures_total",
       "Hellos refused for a missing or unknown token",
       counter,
       summed,
       {},
       {},
       [](p s, std::size_t) { return s.auth_failures_.get(); }},
      {"keyway_congested_connections",
       "Connections over half their limits.max_pending_bytes (their publishers are paused)",
       gauge,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.congested_.get(); }},
      {"keyway_throttled_publishers_total",
       "Times a publisher was paused for a congested subscriber",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.throttles_sent_.get(); }},
      {"keyway_accept_errors_total",
       "accept() failures, each followed by a pause (out of file descriptors or memory)",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.accept_errors_.get(); }},
      {"keyway_subscriptions_refused_total",
       "Subscriptions a worker's index refused after the subscriber's worker admitted them",
       counter,
       summed,
       {},
       {},
       [](p s, std::size_t) { return s.subscriptions_refused_.get(); }},
      {"keyway_paused_reads_total",
       "Times a connection stopped reading: no credit, its own unread output, or a congested "
       "subscriber",
       counter,
       per_worker,
       {},
       {},
       [](p s, std::size_t) { return s.paused_reads_.get(); }},
  }};
  return table;
}

}  // namespace keyway::daemon
