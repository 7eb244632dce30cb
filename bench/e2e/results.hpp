// e2e results: one row per (scenario, system), printed as Markdown tables
// (throughput with the Keyway/NATS and Keyway/Redis ratios, latency, the
// slow subscriber, idle cost), written as bench/out/e2e.json and as gnuplot
// data + script for e2e.png.
// Single-threaded, after the measurements; nothing here is timed.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace keyway::bench::e2e {

struct result_row {
  std::string scenario;                // e.g. "1to1-128B"
  std::string system;                  // "keyway", "nats", "redis"
  std::optional<double> msgs_per_sec;  // the scenario's headline rate (see `rate_side`)
  std::optional<double> pub_msgs_per_sec;
  std::optional<double> sub_msgs_per_sec;
  std::optional<double> p50_us, p90_us, p99_us, p999_us, max_us;
  std::optional<double> cpu_seconds;  // idle scenario only
  // slow_sub only: data publishes, deliveries, published − received once
  // proven (null: not proven), whether the server closed the subscriber, and
  // the publisher's rate over the second half of the offered period.
  std::optional<double> published, received, lost;
  std::optional<bool> disconnected;
  std::optional<double> pub_msgs_per_sec_second_half;
  std::string note;  // not supported / error / extra facts
};

struct scenario_info {
  std::string id;
  std::string title;      // human description for the table
  std::string rate_side;  // what msgs_per_sec counts
};

struct run_info {
  std::string command;
  std::string machine;
  std::string keyway_version;
  std::string nats_version;
  std::string redis_version;
  std::string mode;  // "quick" or "full"
  double seconds_per_run = 0;
  int repetitions = 1;          // runs per (scenario, system); the median is reported
  int latency_repetitions = 1;  // the same for the fixed-rate scenarios (median by p99)
  double total_seconds = 0;
  std::vector<std::string> notes;  // facts about the run as a whole (server logs, ...)
};

/// 1234567 -> "1,234,567"
std::string grouped(double v);

/// Markdown: the run facts, the throughput table with ratios, the latency
/// table, the notes. Returned so it can be printed and saved.
std::string format_tables(const run_info& info, const std::vector<scenario_info>& scenarios,
                          const std::vector<result_row>& rows);
bool write_json(const std::string& path, const run_info& info, const std::vector<result_row>& rows);
/// Writes `dir`/e2e.dat and `dir`/e2e.gp; `gnuplot dir/e2e.gp` draws dir/e2e.png.
bool write_gnuplot(const std::string& dir, const run_info& info,
                   const std::vector<scenario_info>& scenarios,
                   const std::vector<result_row>& rows);

}  // namespace keyway::bench::e2e
