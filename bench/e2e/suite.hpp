// e2e::run_suite: what `bench/run e2e [--quick] [--only IDS]` runs. Starts
// keywayd (2 workers), nats-server and redis-server on free loopback ports,
// runs every scenario against each system that supports it (interleaved, so
// background load hits all three alike), the slow subscriber (slow_sub, one
// run per system), the 1-worker vs 2-worker comparison and the idle-cost
// measurement, stops the servers, prints the tables and writes e2e.json,
// e2e.md, e2e.dat and e2e.gp into `out_dir`. `only` restricts it to the
// scenarios named.
//
// Threading: the caller's thread; the generator starts its own threads.
// Cost: about 1.5 minutes with `quick`, 4.5 minutes without (7 with `raw`); slow_sub alone
// 15 s to 1.5 minutes, depending on how the servers handle it.
#pragma once

#include <string>
#include <vector>

namespace keyway::bench::e2e {

struct suite_options {
  bool quick = false;
  bool raw = false;  // also the hand-written NATS and Redis adapters (nats-raw, redis-raw)
  std::string keywayd = "build/release/daemon/keywayd";
  std::string out_dir = "bench/out";
  std::string command = "bench/run e2e";  // recorded in the results
  std::string keyway_revision;            // e.g. git commit, recorded in the results
  std::vector<std::string> only;          // scenario ids to run; empty: all
  std::vector<std::string> keywayd_args;  // extra arguments for every keywayd started
};

/// "Debian GNU/Linux 12, kernel ..., 2 × CPU, 24 GiB; ...": for the results.
std::string machine_description();
/// CPU time stolen from this VM by its hypervisor since boot, all CPUs
/// together, in ms (/proc/stat's `steal` column); -1 where not available.
double stolen_ms();

/// The time one cache line takes to go from one CPU to another and back, in
/// ns: two threads pinned to the first two CPUs of the affinity mask (where
/// keywayd's two workers pin) take turns writing one atomic word, up to
/// 20,000 times or 50 ms. -1 with fewer than two CPUs. On this VM it
/// changes between about 100 and 480 ns as the hypervisor places the vCPUs,
/// and every message keywayd hands from one worker to the other pays it.
double cross_cpu_round_trip_ns();

/// 0 when every measurement ran; 1 if a server could not start or a result
/// file could not be written (partial results are still printed); 2 if
/// `only` names an unknown scenario.
int run_suite(const suite_options& opt);

}  // namespace keyway::bench::e2e
