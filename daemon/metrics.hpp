// metrics_collector: keywayd's Prometheus metrics, built at scrape time.
//
// The hot path never touches prometheus-cpp: workers bump their own
// single-writer counters (core::worker_stats, probe); Collect() reads
// them with relaxed loads from the scraping thread and sums or labels them.
// Names and labels are listed in docs/metrics.md; labels are low-cardinality
// (worker, transport, reason, code), never a subject or a key.
//
// Threads: Collect() and render() from any one thread at a time (the admin
// thread); the server must have been started.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <string>
#include <vector>

namespace keyway::daemon {

class server;

class metrics_collector final : public prometheus::Collectable {
 public:
  explicit metrics_collector(const server& srv) : srv_(srv) {}
  std::vector<prometheus::MetricFamily> Collect() const override;
  /// Prometheus text format 0.0.4.
  std::string render() const;

 private:
  const server& srv_;
};

/// The standard process_* families (CPU, memory, fds, start time) from /proc.
std::vector<prometheus::MetricFamily> process_metrics();

}  // namespace keyway::daemon
