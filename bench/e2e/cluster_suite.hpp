// e2e::run_cluster_suite: what `bench/run cluster [--quick] [--only IDS]` runs.
// A 3-node Keyway cluster beside a 3-node NATS cluster, in the same run:
//  - a real etcd (Debian etcd-server; tests/support/etcd_process.hpp: one
//    member on free loopback ports, a fresh data directory) and three
//    `keywayd --config nI.toml` with [cluster] sections naming it, one
//    worker each, pinned to the CPUs of the affinity mask in turn (0, 1, 0
//    here: a 1-worker keywayd pins to the first CPU otherwise, and all three
//    would share it); ready once every node's /readyz says 200;
//  - three `nats-server --cluster ... --routes ...` joined by routes on
//    loopback; ready once every server's /routez counts two routes.
// and, for comparison, one `keywayd --workers 1` and one nats-server that
// are no cluster's nodes.
// Every scenario runs three times over: `across` puts the publisher
// (requester) on node 1 and the subscribers (responder) on other nodes (1→1:
// node 2; fan-out: one subscriber on each node; request/reply: responder on
// node 2); `node1` puts every client on node 1; `single` every client on the
// single server. Keyway and NATS runs interleave. Before each run's clock
// starts, probes wait until interest has crossed the cluster
// (pubsub_options::probe). Each scenario's notes give the servers' CPU per
// delivery and each server's CPU share. Prints the tables and writes
// cluster.md and cluster.json into `out_dir`; the configs and logs go to
// `out_dir`/logs/.
//
// Threading: the caller's thread; the generator starts its own threads.
// Cost: about 3.5 minutes (35 s with `quick`).
#pragma once

#include "bench/e2e/suite.hpp"

namespace keyway::bench::e2e {

/// 0 when every measurement ran; 1 if a server could not start or exited
/// during the run, or a result file could not be written; 2 if `only` names
/// an unknown scenario.
int run_cluster_suite(const suite_options& opt);

}  // namespace keyway::bench::e2e
