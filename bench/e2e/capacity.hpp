// e2e capacity mode: how fast a server routes when its clients cost almost
// nothing, and the same for every system. Before the clock starts, the
// publisher encodes `batch` publishes in the system's own wire format into
// one buffer (Keyway: publishBatch frames of `per_frame` entries, `keys` keys
// in turn, through the proto codec; NATS: `PUB subject len`; Redis: RESP
// PUBLISH). The timed loop only write()s that buffer again and again on one
// pipelined connection, and reads and drops what the server answers (Redis's
// PUBLISH replies). A subscriber on its own connection counts deliveries with
// the least parsing its protocol allows (NATS: MSG lines and their lengths;
// Redis: the array headers and bulk lengths; Keyway: a messageBatch's
// announced count). Connections are set up, greeted and subscribed through
// the hand-written adapters (conn.hpp), then driven by hand.
//
// `window`, when not 0, keeps the publisher at most that many messages ahead
// of the subscriber (the generator's flow control, generator.hpp; it checks
// before each buffer). 0 lets the publisher run free: a server then either
// slows it through TCP or lets its subscriber fall behind until its
// slow-consumer limit, which the result reports as a loss or a disconnect.
//
// Threading: run_capacity() starts one publisher and 0 or 1 subscriber
// thread and joins them. Every loop is bounded: `duration`, then the drain
// ends after `drain_quiet` without progress or 15 s.
#pragma once

#include "bench/e2e/generator.hpp"

#include <sys/types.h>

#include <string>

namespace keyway::bench::e2e {

struct capacity_options {
  int subscribers = 0;         // 0 (publish only) or 1
  std::size_t payload = 16;    // bytes
  int keys = 64;               // Keyway: distinct keys in turn (NATS and Redis have none)
  std::size_t per_frame = 32;  // Keyway: publishes per publishBatch frame (1: publish frames)
  std::size_t batch = 1024;    // publishes in the pre-built buffer, written whole each time
  std::uint64_t window = 0;    // most messages in flight to the subscriber; 0: no limit
  nanoseconds duration = std::chrono::seconds(2);
  nanoseconds drain_quiet = std::chrono::milliseconds(500);
  std::string subject = "bench.capacity";
  pid_t server_pid = -1;  // when set, the server's CPU time over the run is reported
};

struct capacity_result {
  std::string error;  // empty when clean
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
  double pub_seconds = 0;  // start to the publisher's final round trip
  double sub_seconds = 0;  // start to the last delivery read
  double pub_rate = 0;
  double sub_rate = 0;
  std::size_t bytes_per_publish = 0;  // in the pre-built buffer
  // CPU seconds over the run: the publisher's and subscriber's threads
  // (CLOCK_THREAD_CPUTIME_ID) and the server (all its threads, schedstat).
  double pub_cpu = 0;
  double sub_cpu = 0;
  double server_cpu = -1;
  double wall = 0;  // start to the end of the drain
};

/// `ep.kind` must be keyway, nats_raw or redis_raw (the wire formats; nats
/// and redis are taken as their raw twins: the official clients are not
/// involved here).
capacity_result run_capacity(const endpoint& ep, const capacity_options& opt);

/// One line for the console.
std::string describe(const capacity_result& r);

}  // namespace keyway::bench::e2e
