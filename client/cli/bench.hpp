// `keyway bench`: a load generator and meter against any keywayd, in the
// manner of `nats bench`. Each publisher, subscriber, requester and responder
// is a connection of its own (and each publisher or requester a thread);
// they all start at one instant.
//
// Modes:
//   pub      --pub publishers send --msgs messages in all (fire-and-forget,
//            or acknowledged with --ack: then ack latencies are measured).
//   sub      the same, plus --sub subscribers that each receive every message.
//   queue    the same, the subscribers in one queue group: each message
//            reaches one of them (the one its key maps to).
//   request  --pub requesters send --msgs requests in all, one at a time
//            each, to --sub responders in one queue group that echo the
//            payload; round-trip latencies are measured.
//
// Bounded: exactly --msgs messages are sent; then the subscribers get
// --timeout to receive theirs, and any shortfall is reported (exit 1)
// instead of waited for. A request that fails ends its requester. A lost
// connection is an error: bench never reconnects. docs/cli.md has the output.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "client/cli/commands.hpp"

namespace keyway::cli {

struct bench_options {
  std::string mode;               // pub, sub, queue or request
  std::uint64_t msgs = 100000;    // messages (requests) in all, over the publishers
  std::uint64_t size = 128;       // payload bytes
  std::uint64_t publishers = 1;   // --pub: publishers, or requesters
  std::uint64_t subscribers = 1;  // --sub: subscribers, or responders
  bool subscribers_given = false;
  std::uint64_t key_space = 64;  // message i has key "k<i mod key_space>"; 0 = no key
  std::string subject;           // empty: "bench.<pid>"
  bool ack = false;              // acknowledged publishes (pub, sub, queue)
  /// How long subscribers may take to receive everything once the
  /// publishers are done; the timeout of each request.
  std::chrono::milliseconds timeout{10000};
  bool json = false;
};

/// The largest --pub and --sub.
inline constexpr std::uint64_t bench_max_clients = 256;

int run_bench(const global_options& g, const bench_options& o);

}  // namespace keyway::cli
