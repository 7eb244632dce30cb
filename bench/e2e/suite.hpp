// e2e::run_suite: what `bench/run e2e [--quick]` runs. Starts keywayd (2
// workers), nats-server and redis-server on free loopback ports, runs every
// scenario against each system that supports it (interleaved, so background
// load hits all three alike), runs the 1-worker vs 2-worker comparison and
// the idle-cost measurement, stops the servers, prints the tables and writes
// e2e.json, e2e.md, e2e.dat and e2e.gp into `out_dir`.
//
// Threading: the caller's thread; the generator starts its own threads.
// Cost: about 1 minute with `quick`, 3 minutes without.
#pragma once

#include <string>

namespace keyway::bench::e2e {

struct suite_options {
  bool quick = false;
  std::string keywayd = "build/release/daemon/keywayd";
  std::string out_dir = "bench/out";
  std::string command = "bench/run e2e";  // recorded in the results
  std::string keyway_revision;            // e.g. git commit, recorded in the results
};

/// 0 when every measurement ran; 1 if a server could not start or a result
/// file could not be written (partial results are still printed).
int run_suite(const suite_options& opt);

}  // namespace keyway::bench::e2e
