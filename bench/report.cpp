#include "bench/report.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace keyway::bench {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string json_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

}  // namespace

void report::print_table() const {
  std::printf("%-44s %12s  %-44s %12s %8s\n", "case", "ns/msg", "baseline", "ns/msg", "ratio");
  for (const row& r : rows_) {
    std::printf("%-44s %12.2f  %-44s ", r.case_name.c_str(), r.ns_per_msg,
                r.baseline_case ? r.baseline_case->c_str() : "-");
    if (r.baseline_ns_per_msg && *r.baseline_ns_per_msg > 0)
      std::printf("%12.2f %8.2f", *r.baseline_ns_per_msg, r.ns_per_msg / *r.baseline_ns_per_msg);
    else
      std::printf("%12s %8s", "-", "-");
    for (const auto& [k, v] : r.extra) std::printf("  %s=%.4g", k.c_str(), v);
    std::printf("\n");
  }
}

bool report::write_json(const std::string& path) const {
  std::ofstream f(path);
  if (!f) return false;
  f << "[\n";
  for (std::size_t i = 0; i < rows_.size(); ++i) {
    const row& r = rows_[i];
    f << "  {\"case\": " << json_string(r.case_name)
      << ", \"ns_per_msg\": " << json_number(r.ns_per_msg)
      << ", \"baseline_case\": " << (r.baseline_case ? json_string(*r.baseline_case) : "null")
      << ", \"baseline_ns_per_msg\": "
      << (r.baseline_ns_per_msg ? json_number(*r.baseline_ns_per_msg) : "null");
    for (const auto& [k, v] : r.extra) f << ", " << json_string(k) << ": " << json_number(v);
    f << "}" << (i + 1 < rows_.size() ? "," : "") << "\n";
  }
  f << "]\n";
  return static_cast<bool>(f);
}

bool selected(const std::string& name) {
  const char* only = std::getenv("KWQB_ONLY");
  return only == nullptr || name.find(only) != std::string::npos;
}

row compare_alternating(const std::string& name, const std::function<double()>& mine,
                        const std::string& baseline_name, const std::function<double()>& baseline,
                        int rounds) {
  std::vector<double> a, b;
  for (int r = 0; r < rounds; ++r) {
    if (r % 2 == 0) {
      a.push_back(mine());
      b.push_back(baseline());
    } else {
      b.push_back(baseline());
      a.push_back(mine());
    }
  }
  row out;
  out.case_name = name;
  out.ns_per_msg = median(a);
  out.baseline_case = baseline_name;
  out.baseline_ns_per_msg = median(b);
  out.extra["best"] = *std::min_element(a.begin(), a.end());
  out.extra["baseline_best"] = *std::min_element(b.begin(), b.end());
  return out;
}

}  // namespace keyway::bench
