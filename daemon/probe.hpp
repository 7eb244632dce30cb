// daemon_stats: the routing service's per-worker counters (Redpanda's probe.h
// habit). Written only by the owning worker with plain stores; summed by the
// admin endpoint at scrape time from any thread. Header only.
#pragma once

#include <array>
#include <cstddef>

#include "core/cache.hpp"
#include "core/stats.hpp"

namespace keyway::daemon {

enum class drop_reason : std::size_t { slow_consumer, connection_gone, count_ };

struct alignas(core::cache_line) daemon_stats {
  core::counter frames_in;          // frames decoded from clients
  core::counter bytes_in;           // bytes read from client sockets
  core::counter bytes_out;          // bytes written to client sockets
  core::counter published;          // publishes accepted at ingress
  core::counter routed;             // publishes ordered at their owner core
  core::counter delivered;          // message frames queued to subscribers
  core::counter acks_sent;
  core::counter errors_sent;        // error frames of any code
  core::counter slow_consumers;     // connections that crossed max_pending_bytes
  core::counter connections;        // gauge: live connections on this worker
  core::counter accepted;           // connections adopted by this worker
  core::counter subscriptions;      // gauge: live subscriptions owned by this worker
  core::counter paused_reads;       // times a connection stopped reading for lack of credit
  core::counter pending_out_bytes;  // gauge: bytes queued to sockets, updated each turn while draining
  std::array<core::counter, static_cast<std::size_t>(drop_reason::count_)> drops;
};

}  // namespace keyway::daemon
