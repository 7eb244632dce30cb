#include "bench/e2e/results.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

namespace keyway::bench::e2e {
namespace {

// nats and redis are the official clients; nats-raw and redis-raw the
// hand-written adapters, in the tables only when the run had them. The plot
// shows the first three.
const char* const systems[] = {"keyway", "nats", "redis", "nats-raw", "redis-raw"};
const char* const plotted_systems[] = {"keyway", "nats", "redis"};

const result_row* find(const std::vector<result_row>& rows, const std::string& scenario,
                       const std::string& system) {
  for (const auto& r : rows)
    if (r.scenario == scenario && r.system == system) return &r;
  return nullptr;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string rate_cell(const result_row* r) {
  if (r == nullptr || !r->msgs_per_sec) return "null";
  return grouped(*r->msgs_per_sec);
}

std::string us_cell(const std::optional<double>& v) {
  if (!v) return "null";
  return *v < 10 ? fmt("%.2f", *v) : *v < 1000 ? fmt("%.1f", *v) : grouped(*v);
}

std::string ratio_cell(const result_row* k, const result_row* other) {
  if (k == nullptr || other == nullptr || !k->msgs_per_sec || !other->msgs_per_sec ||
      *other->msgs_per_sec <= 0)
    return "null";
  return fmt("%.2f×", *k->msgs_per_sec / *other->msgs_per_sec);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_number(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return "null";
  return fmt("%.3f", *v);
}

/// A count: an integer, or null.
std::string json_count(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return "null";
  return fmt("%.0f", *v);
}

std::string plot_value(const std::optional<double>& v) {
  if (!v || *v <= 0) return "?";
  return fmt("%.6g", *v);
}

std::string count_cell(const std::optional<double>& v) {
  return v ? grouped(*v) : "null";
}

}  // namespace

std::string grouped(double v) {
  const auto n = static_cast<long long>(std::llround(v));
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

std::string format_tables(const run_info& info, const std::vector<scenario_info>& scenarios,
                          const std::vector<result_row>& rows) {
  std::ostringstream os;
  os << "Command: `" << info.command << "` (" << info.mode << ": " << info.repetitions << " run"
     << (info.repetitions > 1 ? "s" : "") << " of " << fmt("%.0f", info.seconds_per_run)
     << " s per scenario and system"
     << (info.latency_repetitions != info.repetitions
             ? " (" + std::to_string(info.latency_repetitions) + " for the fixed-rate scenarios)"
             : std::string())
     << (info.repetitions > 1 ? ", median reported" : "") << "; " << fmt("%.0f", info.total_seconds)
     << " s in all)\n\n";
  os << "Machine: " << info.machine << "\n\n";
  os << "Versions: " << info.keyway_version << "; " << info.nats_version << "; "
     << info.redis_version << "\n\n";

  // A table is left out when no row has its figures (`--only` a few scenarios).
  // The redis columns only when the run had Redis (the cluster suite has none).
  bool rate_table = false, latency_table = false, raw = false, redis = false;
  for (const auto& r : rows) {
    redis = redis || r.system == "redis";
    rate_table = rate_table || r.msgs_per_sec;
    latency_table = latency_table || r.p50_us;
    raw = raw || ((r.system == "nats-raw" || r.system == "redis-raw") && r.msgs_per_sec);
  }
  if (rate_table) {
    os << (redis ? "### Throughput (msgs/s; Keyway/NATS and Keyway/Redis are ratios of msgs/s; "
                   "nats and redis through their official clients"
                 : "### Throughput (msgs/s; Keyway/NATS is the ratio of msgs/s; nats through its "
                   "official client")
       << (raw ? ", nats-raw and redis-raw through the hand-written adapters" : "") << ")\n\n";
    os << (redis ? "| scenario | counts | keyway | nats | redis | keyway/nats | keyway/redis |"
                 : "| scenario | counts | keyway | nats | keyway/nats |")
       << (raw ? " nats-raw | redis-raw | keyway/nats-raw | keyway/redis-raw |" : "") << "\n";
    os << (redis ? "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
                 : "| --- | --- | ---: | ---: | ---: |")
       << (raw ? " ---: | ---: | ---: | ---: |" : "") << "\n";
  }
  for (const auto& s : scenarios) {
    const result_row* k = find(rows, s.id, "keyway");
    const result_row* n = find(rows, s.id, "nats");
    const result_row* r = find(rows, s.id, "redis");
    const result_row* nr = find(rows, s.id, "nats-raw");
    const result_row* rr = find(rows, s.id, "redis-raw");
    bool any_rate = false;
    for (const auto* x : {k, n, r, nr, rr})
      if (x != nullptr && x->msgs_per_sec) any_rate = true;
    if (!any_rate) continue;
    os << "| " << s.id << " — " << s.title << " | " << s.rate_side << " | " << rate_cell(k) << " | "
       << rate_cell(n) << " | ";
    if (redis)
      os << rate_cell(r) << " | " << ratio_cell(k, n) << " | " << ratio_cell(k, r) << " |";
    else
      os << ratio_cell(k, n) << " |";
    if (raw)
      os << " " << rate_cell(nr) << " | " << rate_cell(rr) << " | " << ratio_cell(k, nr) << " | "
         << ratio_cell(k, rr) << " |";
    os << "\n";
  }

  if (latency_table) {
    os << "\n### Latency (µs, from the send time in the payload to the read that brought the "
          "delivery in)\n\n";
    os << "| scenario | system | pub msgs/s | sub msgs/s | p50 | p90 | p99 | p99.9 | max |\n";
    os << "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  }
  for (const auto& s : scenarios) {
    for (const char* sys : systems) {
      const result_row* x = find(rows, s.id, sys);
      if (x == nullptr || !x->p50_us) continue;
      os << "| " << s.id << " | " << sys << " | "
         << (x->pub_msgs_per_sec ? grouped(*x->pub_msgs_per_sec) : "null") << " | "
         << (x->sub_msgs_per_sec ? grouped(*x->sub_msgs_per_sec) : "null") << " | "
         << us_cell(x->p50_us) << " | " << us_cell(x->p90_us) << " | " << us_cell(x->p99_us)
         << " | " << us_cell(x->p999_us) << " | " << us_cell(x->max_us) << " |\n";
    }
  }

  for (const auto& s : scenarios) {
    bool header = false;
    for (const char* sys : systems) {
      const result_row* x = find(rows, s.id, sys);
      if (x == nullptr || !x->published) continue;
      if (!header) {
        os << "\n### Slow subscriber: " << s.id << " — " << s.title << "\n\n"
           << "lost = published − received, once a sentinel on every key came through after the "
              "data or the server closed the subscriber (null: neither happened, so not proven). "
              "Rates run from the start to the publisher's last confirmed publish and to the last "
              "delivery; pub/sub about 2 means the server did not slow the publisher, about 1 "
              "that it paced it to the subscriber. pub rate, 2nd half: the publisher's rate over "
              "the second half of the offered period.\n\n"
           << "| server | published | received | lost | disconnected | pub rate | sub rate | "
              "pub/sub | pub rate, 2nd half |\n"
           << "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n";
        header = true;
      }
      const bool both = x->pub_msgs_per_sec && x->sub_msgs_per_sec && *x->sub_msgs_per_sec > 0;
      os << "| " << sys << " | " << count_cell(x->published) << " | " << count_cell(x->received)
         << " | " << count_cell(x->lost) << " | "
         << (x->disconnected ? (*x->disconnected ? "yes" : "no") : "null") << " | "
         << count_cell(x->pub_msgs_per_sec) << " | " << count_cell(x->sub_msgs_per_sec) << " | "
         << (both ? fmt("%.2f", *x->pub_msgs_per_sec / *x->sub_msgs_per_sec) : "null") << " | "
         << count_cell(x->pub_msgs_per_sec_second_half) << " |\n";
    }
  }

  bool idle_header = false;
  for (const auto& r : rows) {
    if (!r.cpu_seconds) continue;
    if (!idle_header) {
      os << "\n### Idle cost (CPU seconds over 10 s, /proc/PID/stat utime+stime)\n\n";
      os << "| scenario | system | CPU s | note |\n| --- | --- | ---: | --- |\n";
      idle_header = true;
    }
    os << "| " << r.scenario << " | " << r.system << " | " << fmt("%.3f", *r.cpu_seconds) << " | "
       << r.note << " |\n";
  }

  os << "\n### Notes\n\n";
  for (const auto& n : info.notes) os << "- " << n << "\n";
  for (const auto& r : rows) {
    if (r.note.empty() || r.cpu_seconds) continue;
    os << "- " << r.scenario << " / " << r.system << ": " << r.note << "\n";
  }
  return os.str();
}

bool write_json(const std::string& path, const run_info& info,
                const std::vector<result_row>& rows) {
  std::ofstream f(path);
  if (!f) return false;
  const std::map<std::string, std::string> versions{{"keyway", info.keyway_version},
                                                    {"nats", info.nats_version},
                                                    {"redis", info.redis_version},
                                                    {"nats-raw", info.nats_version},
                                                    {"redis-raw", info.redis_version}};
  f << "[\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const auto v = versions.find(r.system);
    f << "  {\"scenario\": " << json_string(r.scenario) << ", \"system\": " << json_string(r.system)
      << ", \"msgs_per_sec\": " << json_number(r.msgs_per_sec)
      << ", \"p50_us\": " << json_number(r.p50_us) << ", \"p99_us\": " << json_number(r.p99_us)
      << ", \"p999_us\": " << json_number(r.p999_us) << ", \"p90_us\": " << json_number(r.p90_us)
      << ", \"max_us\": " << json_number(r.max_us)
      << ", \"pub_msgs_per_sec\": " << json_number(r.pub_msgs_per_sec)
      << ", \"sub_msgs_per_sec\": " << json_number(r.sub_msgs_per_sec)
      << ", \"cpu_seconds\": " << json_number(r.cpu_seconds)
      << ", \"published\": " << json_count(r.published)
      << ", \"received\": " << json_count(r.received) << ", \"lost\": " << json_count(r.lost)
      << ", \"disconnected\": " << (r.disconnected ? (*r.disconnected ? "true" : "false") : "null")
      << ", \"pub_msgs_per_sec_second_half\": " << json_number(r.pub_msgs_per_sec_second_half)
      << ", \"version\": " << json_string(v == versions.end() ? "" : v->second)
      << ", \"mode\": " << json_string(info.mode)
      << ", \"note\": " << (r.note.empty() ? "null" : json_string(r.note)) << "}"
      << (i + 1 < rows.size() ? "," : "") << "\n";
  }
  f << "]\n";
  return static_cast<bool>(f);
}

bool write_gnuplot(const std::string& dir, const run_info& info,
                   const std::vector<scenario_info>& scenarios,
                   const std::vector<result_row>& rows) {
  std::ofstream dat(dir + "/e2e.dat");
  if (!dat) return false;
  dat << "# scenario, then per system (keyway nats redis): msgs/s p50 p99 p99.9 (µs); ? = not "
         "measured\n";
  for (const auto& s : scenarios) {
    bool any = false;
    for (const char* sys : plotted_systems) {
      const result_row* x = find(rows, s.id, sys);
      if (x != nullptr && (x->msgs_per_sec || x->p50_us)) any = true;
    }
    if (!any) continue;
    dat << '"' << s.id << '"';
    for (const char* sys : plotted_systems) {
      const result_row* x = find(rows, s.id, sys);
      if (x == nullptr) {
        dat << " ? ? ? ?";
        continue;
      }
      dat << ' ' << plot_value(x->msgs_per_sec) << ' ' << plot_value(x->p50_us) << ' '
          << plot_value(x->p99_us) << ' ' << plot_value(x->p999_us);
    }
    dat << '\n';
  }
  if (!dat) return false;

  std::ofstream gp(dir + "/e2e.gp");
  if (!gp) return false;
  gp << "# Draws e2e.png from e2e.dat (written by keyway-bench suite). Run: gnuplot " << dir
     << "/e2e.gp\n"
     << "set terminal pngcairo size 1600,1800 font ',10' noenhanced\n"
     << "set output '" << dir << "/e2e.png'\n"
     << "set datafile missing '?'\n"
     << "set style data histograms\n"
     << "set style histogram clustered gap 1\n"
     << "set style fill solid 0.85 border -1\n"
     << "set boxwidth 0.9\n"
     << "set logscale y\n"
     << "set grid ytics\n"
     << "set xtics rotate by -30 left\n"
     << "set key top right\n"
     << "set bmargin 6\n"
     << "set multiplot layout 4,1 title 'Keyway vs nats-server vs redis-server on loopback ("
     << info.mode << ", " << info.machine << ")'\n"
     << "set title 'Throughput (msgs/s; higher is better)'\n"
     << "plot '" << dir
     << "/e2e.dat' using 2:xtic(1) title 'keyway' lc rgb '#1f77b4', '' using 6 title 'nats' "
     << "lc rgb '#2ca02c', '' using 10 title 'redis' lc rgb '#d62728'\n";
  const char* names[] = {"p50", "p99", "p99.9"};
  for (int p = 0; p < 3; ++p) {
    gp << "set title 'Latency " << names[p] << " (µs; lower is better)'\n"
       << "plot '" << dir << "/e2e.dat' using " << 3 + p
       << ":xtic(1) title 'keyway' lc rgb '#1f77b4', '' using " << 7 + p
       << " title 'nats' lc rgb '#2ca02c', '' using " << 11 + p
       << " title 'redis' lc rgb '#d62728'\n";
  }
  gp << "unset multiplot\n";
  return static_cast<bool>(gp);
}

}  // namespace keyway::bench::e2e
