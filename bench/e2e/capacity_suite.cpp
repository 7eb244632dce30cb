#include "bench/e2e/capacity_suite.hpp"

#include "bench/e2e/capacity.hpp"
#include "bench/e2e/generator.hpp"
#include "bench/e2e/results.hpp"
#include "bench/e2e/servers.hpp"

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

double process_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

struct cap_scenario {
  std::string id;
  std::string title;
  bool generator = false;  // the e2e suite's generator (run_pubsub), else run_capacity
  capacity_options cap;
  pubsub_options gen;
  std::vector<system_kind> systems;
  bool publish_only = false;  // the headline is publishes/s, else deliveries/s
  std::string peers_of;       // Keyway-only variants: the scenario whose peers the ratios use
};

struct one_run {
  double rate = 0;  // the headline
  double pub_rate = 0;
  double sub_rate = 0;
  double messages = 0;    // what the headline counts
  double client_cpu = 0;  // the whole keyway-bench process, s
  double pub_cpu = -1;    // capacity mode: the publisher's thread, s
  double sub_cpu = -1;
  double server_cpu = 0;
  double wall = 0;
  double stolen = -1;
  double cross_cpu_ns = -1;  // measured just before the run
  std::string error;
};

one_run run_one(const cap_scenario& s, const endpoint& ep, pid_t server) {
  one_run r;
  r.cross_cpu_ns = cross_cpu_round_trip_ns();
  const double stolen0 = stolen_ms();
  const double client0 = process_cpu_seconds();
  const double server0 = sched_cpu_seconds(server);
  const auto t0 = clock::now();
  if (s.generator) {
    const run_result g = run_pubsub(ep, s.gen);
    r.pub_rate = g.pub_rate;
    r.sub_rate = g.sub_rate;
    r.messages = static_cast<double>(s.publish_only ? g.sent : g.received);
    r.error = g.error;
  } else {
    const capacity_result c = run_capacity(ep, s.cap);
    r.pub_rate = c.pub_rate;
    r.sub_rate = c.sub_rate;
    r.messages = static_cast<double>(s.publish_only ? c.sent : c.received);
    r.pub_cpu = c.pub_cpu;
    r.sub_cpu = c.sub_cpu;
    r.error = c.error;
  }
  r.wall = std::chrono::duration<double>(clock::now() - t0).count();
  r.client_cpu = process_cpu_seconds() - client0;
  r.server_cpu = sched_cpu_seconds(server) - server0;
  const double stolen1 = stolen_ms();
  if (stolen0 >= 0 && stolen1 >= 0) r.stolen = stolen1 - stolen0;
  r.rate = s.publish_only ? r.pub_rate : r.sub_rate;
  return r;
}

std::vector<cap_scenario> make_scenarios(nanoseconds d) {
  using k = system_kind;
  const std::vector<k> servers{k::keyway, k::nats_raw, k::redis_raw};  // capacity: wire formats
  const std::vector<k> clients{k::keyway, k::nats, k::nats_raw, k::redis, k::redis_raw};
  std::vector<cap_scenario> v;
  // The fields both kinds share; the caller sets the rest.
  auto add = [&](std::string id, std::string title, int subs, std::vector<k> systems,
                 bool generator) -> cap_scenario& {
    cap_scenario& s = v.emplace_back();
    s.id = std::move(id);
    s.title = std::move(title);
    s.generator = generator;
    s.systems = std::move(systems);
    s.publish_only = subs == 0;
    return s;
  };
  auto cap = [&](std::string id, std::string title, int subs, std::uint64_t window, int keys,
                 std::vector<k> systems) {
    cap_scenario& s = add(std::move(id), std::move(title), subs, std::move(systems), false);
    s.cap.subscribers = subs;
    s.cap.window = window;
    s.cap.keys = keys;
    s.cap.duration = d;
    s.cap.subject = "bench." + s.id;
  };
  auto gen = [&](std::string id, std::string title, int subs, std::uint64_t window,
                 std::vector<k> systems) {
    cap_scenario& s = add(std::move(id), std::move(title), subs, std::move(systems), true);
    s.gen.subscribers = subs;
    s.gen.payload = 16;
    s.gen.window = window;
    s.gen.duration = d;
    s.gen.subject = "bench." + s.id;
  };
  cap("cap-pub-only-16B", "capacity: publish only, 16 B", 0, 0, 64, servers);
  cap("cap-1to1-16B", "capacity: 1 → 1, 16 B, no window", 1, 0, 64, servers);
  cap("cap-1to1-16B-window8192", "capacity: 1 → 1, 16 B, the generator's window of 8,192", 1, 8192,
      64, servers);
  cap("cap-1to1-16B-1key", "capacity: 1 → 1, 16 B, no window, Keyway with one key", 1, 0, 1,
      {k::keyway});
  v.back().peers_of = "cap-1to1-16B";
  cap("cap-1to1-16B-publish-frames",
      "capacity: 1 → 1, 16 B, no window, Keyway with one publish frame per message", 1, 0, 64,
      {k::keyway});
  v.back().cap.per_frame = 1;
  v.back().peers_of = "cap-1to1-16B";
  gen("gen-pub-only-16B", "generator (the e2e suite's pub-only-16B)", 0, 0, clients);
  gen("gen-1to1-16B", "generator (the e2e suite's 1to1-16B: window 8,192)", 1, 0, clients);
  gen("gen-1to1-16B-window65536", "generator, 1 → 1, 16 B, window 65,536", 1, 65536,
      {k::keyway, k::nats, k::nats_raw});
  return v;
}

std::string name_of(const cap_scenario& s, system_kind kind) {
  if (s.generator) return std::string(to_string(kind));
  return kind == system_kind::keyway ? "keyway" : is_redis(kind) ? "redis" : "nats";
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

int run_capacity_suite(const suite_options& opt) {
  const auto start = clock::now();
  const nanoseconds d = opt.quick ? nanoseconds(1s) : nanoseconds(2s);
  const int reps = opt.quick ? 1 : 5;
  ::mkdir(opt.out_dir.c_str(), 0755);
  const std::string logs = opt.out_dir + "/logs";
  ::mkdir(logs.c_str(), 0755);
  std::string keyway_version = first_output_line(opt.keywayd + " --version");
  if (!opt.keyway_revision.empty()) keyway_version += " (" + opt.keyway_revision + ")";

  std::ostringstream md;
  md << "Command: `" << opt.command << "` (" << reps << " run" << (reps > 1 ? "s" : "") << " of "
     << fmt("%.0f", std::chrono::duration<double>(d).count())
     << " s per scenario and system, interleaved; median by the headline rate)\n\n"
     << "Machine: " << machine_description() << "\n\n"
     << "Versions: " << keyway_version << "; " << first_output_line("nats-server --version") << "; "
     << first_output_line("redis-server --version") << "; clients " << official_client_versions()
     << "\n\n";
  std::fprintf(stderr, "capacity: %s\n", keyway_version.c_str());

  struct row {
    std::string scenario, title, system, peers_of;
    bool publish_only;
    one_run median;
    std::string figures;
  };
  std::vector<row> rows;
  int status = 0;
  try {
    auto keywayd = start_keywayd(opt.keywayd, 2, opt.keywayd_args, logs + "/capacity-keywayd.log");
    auto nats = start_nats_server(logs + "/capacity-nats-server.log");
    auto redis = start_redis_server(logs + "/capacity-redis-server.log");
    for (const auto& s : make_scenarios(d)) {
      std::vector<std::vector<one_run>> runs(s.systems.size());
      for (int rep = 0; rep < reps; ++rep) {
        for (std::size_t i = 0; i < s.systems.size(); ++i) {
          const system_kind kind = s.systems[i];
          const server_process& srv = kind == system_kind::keyway ? keywayd
                                      : is_redis(kind)            ? redis
                                                                  : nats;
          const endpoint ep{kind, "127.0.0.1", srv.port()};
          runs[i].push_back(run_one(s, ep, srv.pid()));
          const one_run& r = runs[i].back();
          std::fprintf(stderr,
                       "  %-26s %-9s pub %11.0f/s  sub %11.0f/s  CPU s: client %.2f (pub %.2f, "
                       "sub %.2f) server %.2f over %.2f s; stolen %.0f ms; cross-CPU %.0f ns%s%s\n",
                       s.id.c_str(), name_of(s, kind).c_str(), r.pub_rate, r.sub_rate, r.client_cpu,
                       r.pub_cpu, r.sub_cpu, r.server_cpu, r.wall, r.stolen, r.cross_cpu_ns,
                       r.error.empty() ? "" : "  ! ", r.error.c_str());
        }
      }
      for (std::size_t i = 0; i < s.systems.size(); ++i) {
        auto& rs = runs[i];
        std::sort(rs.begin(), rs.end(),
                  [](const one_run& a, const one_run& b) { return a.rate < b.rate; });
        std::string figures;
        for (const auto& r : rs)
          figures += (figures.empty() ? "" : ", ") + grouped(r.rate) + " (" +
                     fmt("%.0f", r.cross_cpu_ns) + " ns)";
        rows.push_back({s.id, s.title, name_of(s, s.systems[i]),
                        s.peers_of.empty() ? s.id : s.peers_of, s.publish_only, rs[rs.size() / 2],
                        figures});
      }
    }
  } catch (const bench_error& e) {
    std::fprintf(stderr, "capacity: %s\n", e.what());
    status = 1;
  }

  md << "### Rates and where the CPU time went (median run)\n\n"
     << "msgs/s: publishes/s for publish only, deliveries/s otherwise. CPU ns/msg: CPU time over "
        "the run (setup and drain included) per message of the headline; client = the whole "
        "keyway-bench process (capacity mode: publisher + subscriber thread); CPU use = (client + "
        "server CPU s) / wall s, at most 2 on this machine. runs: each run's msgs/s with the "
        "cross-CPU cache-line round trip measured just before it (it moves between about 100 "
        "and 480 ns as the hypervisor places the vCPUs).\n\n"
     << "| scenario | system | msgs/s | pub/s | sub/s | client CPU ns/msg | (pub / sub) | "
        "server CPU ns/msg | CPU use | runs (msgs/s) | note |\n"
     << "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n";
  auto per_msg = [](double cpu, double msgs) {
    return msgs > 0 && cpu >= 0 ? fmt("%.0f", cpu * 1e9 / msgs) : std::string("-");
  };
  for (const auto& r : rows) {
    const one_run& m = r.median;
    md << "| " << r.scenario << " | " << r.system << " | " << grouped(m.rate) << " | "
       << grouped(m.pub_rate) << " | " << (r.publish_only ? "-" : grouped(m.sub_rate)) << " | "
       << per_msg(m.client_cpu, m.messages) << " | "
       << (m.pub_cpu >= 0 ? per_msg(m.pub_cpu, m.messages) + " / " +
                                (r.publish_only ? "-" : per_msg(m.sub_cpu, m.messages))
                          : std::string("-"))
       << " | " << per_msg(m.server_cpu, m.messages) << " | "
       << fmt("%.2f", m.wall > 0 ? (m.client_cpu + m.server_cpu) / m.wall : 0) << " | " << r.figures
       << " | " << (m.error.empty() ? "" : m.error) << " |\n";
  }
  md << "\n### Ratios (Keyway's median msgs/s over the other's, same run)\n\n"
     << "| scenario | keyway/nats | keyway/redis | keyway/nats-raw | keyway/redis-raw |\n"
     << "| --- | ---: | ---: | ---: | ---: |\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].system != "keyway") continue;
    auto ratio = [&](const char* sys) {
      for (const auto& o : rows)
        if (o.scenario == rows[i].peers_of && o.system == sys && o.median.rate > 0)
          return fmt("%.2f×", rows[i].median.rate / o.median.rate);
      return std::string("-");
    };
    md << "| " << rows[i].scenario << " — " << rows[i].title << " | " << ratio("nats") << " | "
       << ratio("redis") << " | " << ratio("nats-raw") << " | " << ratio("redis-raw") << " |\n";
  }
  md << "\nTotal " << fmt("%.0f", std::chrono::duration<double>(clock::now() - start).count())
     << " s.\n";
  const std::string text = md.str();
  std::fputs(text.c_str(), stdout);
  std::ofstream(opt.out_dir + "/capacity.md") << text;
  return status;
}

}  // namespace keyway::bench::e2e
