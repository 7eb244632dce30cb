// e2e::run_slow_sub: the slow_sub scenario. One publisher offers
// `pub_factor` × `sub_rate` msgs/s (paced, open loop) for `duration` to one
// subject; its only subscriber reads at most `sub_rate` msgs/s, in reads of
// at most `read_chunk` bytes with sleeps between them, so that what it has
// not read stays in its socket and the server sees a slow consumer. On
// Keyway the publishes carry `keys` keys round robin; NATS and Redis have no
// keys.
//
// Paced rather than flat out: the offered load is then a known 2× the
// subscriber's pace, so the pub/sub ratio reads directly — about 2 while the
// server buffers (or after it cut the subscriber off), about 1 once it
// pushes back on the publisher — and both rates are ones the servers carry
// easily, so what is measured is the server's policy, not its ceiling.
//
// Barrier: after its last publish the publisher flushes and does a ping
// round trip (the server has accepted everything), then publishes a
// sentinel on every key, again every 250 ms, until the subscriber has seen
// one sentinel per key or is gone. Every server here keeps a key's (Keyway)
// or a connection's (NATS, Redis) order, so a data message missing once its
// key's sentinel arrived is lost, not late; and a subscriber the server
// closed gets nothing more. Only then is published − received reported as
// lost. The subscriber keeps its pace while it waits, for at most
// `duration` + 5 s after the publisher stops (what a server that buffers
// everything needs to hand over a backlog of `duration` × sub_rate).
//
// Threading: the caller's thread sets up and publishes; one thread
// subscribes. Cost: `duration` plus the drain; bounded by 2 × `duration` +
// 15 s in all.
#pragma once

#include "bench/e2e/generator.hpp"
#include "bench/e2e/results.hpp"

#include <optional>
#include <string>

namespace keyway::bench::e2e {

struct slow_sub_options {
  double sub_rate = 100'000;  // R: the subscriber reads at most this many msgs/s
  double pub_factor = 2;      // the publisher offers pub_factor × R msgs/s
  std::size_t payload = 128;  // bytes, at least 16 (send time + tag)
  int keys = 4;               // Keyway only; at most 64
  nanoseconds duration = std::chrono::seconds(10);
  std::size_t read_chunk = 16 << 10;  // bytes per recv of the subscriber
  std::string subject = "bench.slow_sub";
};

struct slow_sub_result {
  std::uint64_t published = 0;  // data publishes; the server accepted them all if `confirmed`
  bool confirmed = false;       // the publisher's flush and ping round trip completed
  std::uint64_t received = 0;   // data deliveries the subscriber read
  bool barrier = false;         // a sentinel on every key arrived after the data
  bool disconnected = false;    // the server closed the subscriber's connection
  double disconnected_at = -1;  // s after the start, when the subscriber read the close
  std::string disconnect_reason;
  /// published − received, when the barrier or the close proves the rest is not coming.
  std::optional<std::uint64_t> lost;
  double pub_seconds = 0;  // start to the publisher's final round trip
  double sub_seconds = 0;  // start to the last data delivery
  double pub_rate = 0;     // published / pub_seconds
  double sub_rate = 0;     // received / sub_seconds
  /// Publishes per second over the second half of the offered period: the
  /// rate the server lets the publisher keep up (about R with pushback).
  double pub_rate_second_half = 0;
  histogram delay;  // ns from the scheduled send time to the read
  std::uint64_t out_of_order = 0;
  std::uint64_t bad = 0;
  std::uint64_t server_errors = 0;
  std::string last_server_error;
  std::string started_at;  // the start, local wall-clock time, to line up with server logs
  std::string error;       // a fault of the run itself (setup, deadline), not the server's policy
  double stolen_ms = -1;   // set by the suite
  std::array<double, 2> cross_cpu_ns{-1, -1};  // set by the suite
};

slow_sub_result run_slow_sub(const endpoint& ep, const slow_sub_options& opt);

/// One line per run on stderr, as the suite prints its progress.
void print_slow_sub(const std::string& id, system_kind kind, const slow_sub_result& r);

/// The suite's row: the figures of the slow-subscriber table, the rest in the note.
result_row slow_sub_row(const std::string& id, system_kind kind, const slow_sub_result& r);

/// A sentence for the report: what the scenario does, with its figures.
std::string describe(const slow_sub_options& opt);

}  // namespace keyway::bench::e2e
