#include "bench/report.hpp"

#include <cstdio>
#include <fstream>

namespace keyway::bench {
namespace {

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
    f << "  {\"case\": " << json_string(r.case_name) << ", \"ns_per_msg\": " << json_number(r.ns_per_msg)
      << ", \"baseline_case\": " << (r.baseline_case ? json_string(*r.baseline_case) : "null")
      << ", \"baseline_ns_per_msg\": "
      << (r.baseline_ns_per_msg ? json_number(*r.baseline_ns_per_msg) : "null");
    for (const auto& [k, v] : r.extra) f << ", " << json_string(k) << ": " << json_number(v);
    f << "}" << (i + 1 < rows_.size() ? "," : "") << "\n";
  }
  f << "]\n";
  return static_cast<bool>(f);
}

}  // namespace keyway::bench
