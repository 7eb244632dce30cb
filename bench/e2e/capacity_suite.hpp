// e2e::run_capacity_suite: what `bench/run capacity [--quick]` runs. Starts
// keywayd (2 workers), nats-server and redis-server on free loopback ports
// and measures, interleaved and in the same run: capacity mode (capacity.hpp:
// pre-built buffers, one pipelined connection each) publish only and 1 → 1
// at 16 B, with and without the generator's window, and Keyway with one key
// and with one publish frame per message instead of publishBatch frames;
// then the e2e suite's generator on the same scenarios with the official
// clients and the hand-written adapters. Prints a Markdown table with the
// CPU time per message of the client and of the server, the ratios, and
// writes it to `out_dir`/capacity.md.
//
// Threading: the caller's thread; the runs start their own threads.
// Cost: 5 runs of 2 s per scenario and system, about 4 minutes (quick: one
// run of 1 s each, under a minute).
#pragma once

#include "bench/e2e/suite.hpp"

namespace keyway::bench::e2e {

/// 0 when the servers started; 1 otherwise (what ran is still printed).
int run_capacity_suite(const suite_options& opt);

}  // namespace keyway::bench::e2e
