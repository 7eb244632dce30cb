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

#include "bench/e2e/generator.hpp"
#include "bench/e2e/results.hpp"

#include <functional>
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

// ---- the suite's pieces, shared with the cluster suite (cluster_suite.hpp) ----

/// One scenario of a suite: what it runs against one system's endpoint.
struct scenario {
  scenario_info info;
  std::function<run_result(const endpoint&)> run;
  bool redis = true;             // false: Redis has no such feature
  std::string redis_missing;     // why, for the notes
  bool headline_is_pub = false;  // msgs_per_sec = publisher side (publish only)
  bool fixed_rate = false;       // the rate is set: the median is taken by p99
};

/// A request/reply scenario's settings: `mode`, 10,000 requests/s when the
/// rate is fixed, 128 B, runs of `d`, service subject "bench.`id`".
reqrep_options reqrep_scenario_options(const std::string& id, reqrep_mode mode, nanoseconds d);

/// The 1-minute load average (/proc/loadavg); -1 if unreadable.
double load_average();

/// One run, with the CPU time stolen while it ran (a latency tail of
/// milliseconds on this VM comes with stolen time) and the cross-CPU round
/// trip just before and just after it (the vCPUs' placement can change
/// within seconds).
template <class Run>
auto measured(Run&& run) {
  const double cross_cpu_before = cross_cpu_round_trip_ns();
  const double before = stolen_ms();
  auto r = run();
  const double after = stolen_ms();
  if (before >= 0 && after >= 0) r.stolen_ms = after - before;
  r.cross_cpu_ns = {cross_cpu_before, cross_cpu_round_trip_ns()};
  return r;
}

/// The median of `runs` (by msgs/s; by p99 for fixed-rate scenarios, whose
/// rate is set), with every run's figure and stolen CPU time in the note.
result_row median_row(const scenario& s, system_kind kind, const std::vector<run_result>& runs);
/// One run's figures on stderr, as the suite goes.
void print_progress(const scenario& s, system_kind kind, const run_result& r);
void ensure_dir(const std::string& path);
/// Lines of a log that look like warnings or errors (spdlog "[warning]"/"[error]");
/// the first in `first`.
std::size_t count_log_problems(const std::string& path, std::string& first);

/// A suite run's settings and the facts taken at its start.
struct suite_run {
  run_info info;
  clock::time_point start;
  nanoseconds run_length{};  // per run: 1 s with `quick`, else 2 s
  int reps = 1;              // runs per (scenario, system): 1 with `quick`, else 3
  int latency_reps = 1;      // for fixed-rate scenarios: 1 with `quick`, else 5
  double load_at_start = -1;
  double stolen_at_start = -1;
};
/// Creates `out_dir` and its logs/, fills the run facts (command, mode,
/// machine, keywayd's and nats-server's versions; `third_version` in the
/// third place) and prints them, prefixed with `name`.
suite_run begin_suite(const suite_options& opt, const std::string& name, std::string third_version);
/// Runs `s` against each endpoint in turn, `run.reps` times (latency_reps for
/// fixed-rate scenarios), interleaved so that a burst of background load lands
/// on every system rather than on one, and appends one median row per system
/// (or, where Redis lacks the feature, a row saying so).
void run_interleaved(const scenario& s, const std::vector<endpoint>& eps, const suite_run& run,
                     std::vector<result_row>& rows);
/// Notes the total time, the load average and stolen CPU time, prints the
/// tables and writes `out_dir`/`name`.md and .json; false if the JSON could
/// not be written.
bool end_suite(suite_run& run, const suite_options& opt, const std::string& name,
               const std::vector<scenario_info>& infos, const std::vector<result_row>& rows);

/// 0 when every measurement ran; 1 if a server could not start or a result
/// file could not be written (partial results are still printed); 2 if
/// `only` names an unknown scenario.
int run_suite(const suite_options& opt);

}  // namespace keyway::bench::e2e
