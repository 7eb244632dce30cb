// e2e::generator: runs one scenario against one server and measures it.
//
// Pub/sub (run_pubsub): M subscriber connections subscribe (and wait for the
// server's acknowledgement), then N publisher connections publish pipelined,
// flat out or at a fixed total rate, until `duration` or `count` runs out.
// Each connection has its own thread with a blocking-style poll() loop. Every
// payload starts with the send time (steady_clock ns) and the publisher's
// sequence number; subscribers record now - send time into a per-thread
// histogram. Flat out, a publisher writes when it has queued `write_bytes`
// (32 KiB, the write buffer nats.go flushes at by default; Keyway's client
// library writes all it has queued), or when it must wait; at a fixed rate it
// writes every batch at once. Flat out, publishers keep the subscriber furthest behind (a
// queue group counts as one) at most `window` messages behind the publishes
// (counted in this process; 8192 messages, or 4 MiB of payload when that is
// fewer), so a subscriber that falls behind slows the
// publishers instead of being cut off by a server's slow-consumer limit
// (redis-server's pub/sub client limit is 8 MiB for 60 s, 32 MiB hard;
// nats-server's and keywayd's 64 MiB). Latency under flat-out load is
// therefore mostly queueing inside that window, and is reported as such.
//
// Request/reply (run_reqrep): one responder connection subscribes to a
// service subject and answers each request to its reply subject; one
// requester connection subscribes to its inbox and sends requests either at
// a fixed rate (open loop: latency is measured from the scheduled send time,
// so a stall is not hidden) or one at a time (closed loop: the maximum rate
// of one client).
//
// Threading: the caller's thread sets up, starts and joins worker threads;
// results are merged after the join. Every wait is bounded (setup 10 s,
// drain `drain_quiet` without progress, hard cap `duration` + 15 s).
//
// A cluster (the cluster suite): the options place subscribers and the
// responder on other nodes than the publishers and the requester, and
// `probe` waits until interest has crossed the cluster before timing.
#pragma once

#include "bench/e2e/conn.hpp"
#include "bench/e2e/histogram.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace keyway::bench::e2e {

struct endpoint {
  system_kind kind = system_kind::keyway;
  std::string host = "127.0.0.1";
  int port = 0;
};

struct pubsub_options {
  int publishers = 1;
  int subscribers = 0;
  bool queue_group = false;            // subscribers form one queue group
  std::size_t payload = 128;           // bytes, at least 16 (timestamp + sequence)
  int keys = 64;                       // distinct keys, round robin (Keyway only)
  double rate = 0;                     // total msgs/s over all publishers; 0 = flat out
  std::uint64_t count = 0;             // per publisher; 0 = bounded by duration only
  std::size_t write_bytes = 32 << 10;  // flat out: queued bytes before a write (1: every batch)
  bool batch = true;  // Keyway: each group of publishes queued together goes as one publishBatch
  nanoseconds duration = std::chrono::seconds(3);
  std::uint64_t window =
      0;  // flat out: in-flight messages per subscriber; 0 = window_bytes / payload,
  std::uint64_t window_bytes = 4 << 20;  // clamped to [64, 8192] messages
  nanoseconds drain_quiet = std::chrono::milliseconds(500);
  std::string subject = "bench.data";
  // A cluster: subscriber i connects to sub_ports[i % size] (publishers to
  // the endpoint's port); empty: every connection to the endpoint's port.
  std::vector<int> sub_ports;
  // Before the clock starts, publisher 0 sends probes (tagged so that the
  // counts skip them) until every subscriber has one, for at most 10 s: a
  // subscription made on one node of a NATS cluster reaches the others
  // later than its acknowledgement, and nothing published before that is
  // delivered.
  bool probe = false;
};

enum class reqrep_mode { fixed_rate, closed_loop };

struct reqrep_options {
  reqrep_mode mode = reqrep_mode::fixed_rate;
  double rate = 10'000;  // requests/s, fixed_rate only
  std::size_t payload = 128;
  nanoseconds duration = std::chrono::seconds(3);
  std::string service = "bench.svc";
  std::string inbox = "_INBOX.bench.1";
  int responder_port = 0;  // a cluster: the responder's node; 0: the endpoint's port
  bool probe = false;      // as pubsub_options::probe: a request answered before the clock
};

struct run_result {
  bool ok = false;
  std::string error;               // why it failed or is incomplete; empty when clean
  std::uint64_t sent = 0;          // publishes (requests)
  std::uint64_t expected = 0;      // deliveries that should have arrived
  std::uint64_t received = 0;      // deliveries (replies) actually received
  std::uint64_t bad = 0;           // deliveries of the wrong size or with an unknown tag
  std::uint64_t out_of_order = 0;  // deliveries whose (publisher, key) sequence did not rise
  double pub_seconds = 0;          // start to the publishers' final round trip
  double sub_seconds = 0;          // start to the last delivery
  double pub_rate = 0;             // sent / pub_seconds
  double sub_rate = 0;             // received / sub_seconds
  histogram latency;               // ns
  std::uint64_t server_errors = 0;
  double stolen_ms = -1;  // CPU time the hypervisor took during the run (suite only; -1: not read)
  std::array<double, 2> cross_cpu_ns{
      -1, -1};  // cross-CPU cache-line round trip before and after (suite only)
};

run_result run_pubsub(const endpoint& ep, const pubsub_options& opt);
run_result run_reqrep(const endpoint& ep, const reqrep_options& opt);

}  // namespace keyway::bench::e2e
