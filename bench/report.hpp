// Benchmark report shared by the `bench/run queues` cases: rows are collected,
// printed as a table and written as JSON. Single-threaded; not on any hot path.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace keyway::bench {

struct row {
  std::string case_name;                      // e.g. "spsc_ring 8B"
  double ns_per_msg = 0;                      // measured
  std::optional<std::string> baseline_case;   // e.g. "moodycamel::ReaderWriterQueue 8B"
  std::optional<double> baseline_ns_per_msg;  // measured in the same run
  std::map<std::string, double> extra;        // e.g. {"peak_to_mean", 1.01}, {"msgs_per_sec", ...}
};

struct options {
  bool quick = false;          // fewer iterations, for smoke runs
  std::uint64_t messages = 0;  // 0: each case picks its default
};

class report {
 public:
  void add(row r) { rows_.push_back(std::move(r)); }
  const std::vector<row>& rows() const { return rows_; }
  void print_table() const;
  bool write_json(const std::string& path) const;

 private:
  std::vector<row> rows_;
};

/// False when KWQB_ONLY is set and `name` does not contain it (run one case).
bool selected(const std::string& name);

/// Runs mine() and baseline() `rounds` times each, alternating so that drift
/// hits both, and returns the row: medians, plus the best of each as extras.
/// Each call returns ns per message.
row compare_alternating(const std::string& name, const std::function<double()>& mine,
                        const std::string& baseline_name, const std::function<double()>& baseline,
                        int rounds);

// Each group of cases lives in its own file and appends its rows.
void run_queue_benches(const options& opt, report& out);        // bench/queue_bench.cpp
void run_mesh_benches(const options& opt, report& out);         // bench/mesh_bench.cpp
void run_partitioner_benches(const options& opt, report& out);  // bench/partitioner_bench.cpp
void run_pool_benches(const options& opt, report& out);         // bench/pool_bench.cpp

}  // namespace keyway::bench
