#include "bench/e2e/suite.hpp"

#include "bench/e2e/generator.hpp"
#include "bench/e2e/results.hpp"
#include "bench/e2e/servers.hpp"
#include "bench/e2e/slow_sub.hpp"
#include "core/worker.hpp"

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

namespace keyway::bench::e2e {

using namespace std::chrono_literals;

std::string machine_description() {
  utsname u{};
  ::uname(&u);
  std::string cpu = "?";
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::string os = "?";
  std::ifstream rel("/etc/os-release");
  for (std::string line; std::getline(rel, line);) {
    if (line.rfind("PRETTY_NAME=", 0) == 0) {
      os = line.substr(12);
      if (os.size() >= 2 && os.front() == '"') os = os.substr(1, os.size() - 2);
    }
  }
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  const double mem_gib = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) *
                         static_cast<double>(::sysconf(_SC_PAGE_SIZE)) / (1024.0 * 1024 * 1024);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s, kernel %s, %ld × %s, %.0f GiB; client and servers share the CPUs", os.c_str(),
                u.release, cpus, cpu.c_str(), mem_gib);
  return buf;
}

double cross_cpu_round_trip_ns() {
  const std::vector<int> cpus = core::allowed_cpus();
  if (cpus.size() < 2) return -1;
  constexpr long rounds = 20000;
  alignas(64) std::atomic<long> turn{0};  // odd: the echo thread answers with turn + 1
  std::atomic<bool> stop{false}, pinned_ok{true};
  auto pin = [&](int cpu) {
    if (core::pin_current_thread(cpu) != 0) pinned_ok = false;
  };
  std::thread echo([&] {
    pin(cpus[1]);
    while (!stop.load(std::memory_order_relaxed)) {
      const long t = turn.load(std::memory_order_acquire);
      if ((t & 1) != 0) turn.store(t + 1, std::memory_order_release);
    }
  });
  double ns = -1;
  std::thread lead([&] {
    pin(cpus[0]);
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + 50ms;
    long done = 0;  // completed round trips
    for (bool late = false; done < rounds; ++done) {
      turn.store(2 * done + 1, std::memory_order_release);
      for (long spins = 1; turn.load(std::memory_order_acquire) != 2 * done + 2 && !late; ++spins)
        late = (spins & 1023) == 0 && std::chrono::steady_clock::now() > deadline;
      if (late) break;
    }
    if (done > 0)
      ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
               .count() /
           static_cast<double>(done);
  });
  lead.join();
  stop = true;
  echo.join();
  if (!pinned_ok) return -1;
  return ns;
}

double stolen_ms() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  unsigned long long v[8] = {};
  if (!(f >> cpu) || cpu != "cpu") return -1;
  for (auto& x : v)
    if (!(f >> x)) return -1;
  return static_cast<double>(v[7]) * 1000.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double load_average() {
  double l = -1;
  std::ifstream f("/proc/loadavg");
  f >> l;
  return l;
}

namespace {

result_row to_row(const scenario& s, system_kind kind, const run_result& r) {
  result_row row;
  row.scenario = s.info.id;
  row.system = std::string(to_string(kind));
  if (r.sent > 0) {
    row.pub_msgs_per_sec = r.pub_rate;
    if (r.expected > 0 || r.received > 0) row.sub_msgs_per_sec = r.sub_rate;
    row.msgs_per_sec = s.headline_is_pub ? r.pub_rate : r.sub_rate;
  }
  if (r.latency.count() > 0) {
    row.p50_us = static_cast<double>(r.latency.percentile(50)) / 1e3;
    row.p90_us = static_cast<double>(r.latency.percentile(90)) / 1e3;
    row.p99_us = static_cast<double>(r.latency.percentile(99)) / 1e3;
    row.p999_us = static_cast<double>(r.latency.percentile(99.9)) / 1e3;
    row.max_us = static_cast<double>(r.latency.max()) / 1e3;
  }
  row.note = r.error;
  return row;
}

}  // namespace

result_row median_row(const scenario& s, system_kind kind, const std::vector<run_result>& runs) {
  auto key = [&](const run_result& r) {
    if (s.fixed_rate) return static_cast<double>(r.latency.percentile(99));
    return s.headline_is_pub ? r.pub_rate : r.sub_rate;
  };
  std::vector<std::size_t> order(runs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return key(runs[a]) < key(runs[b]); });
  result_row row = to_row(s, kind, runs[order[order.size() / 2]]);
  auto rounded = [](double v) {
    return v >= 0 ? std::to_string(std::lround(v)) : std::string("?");
  };
  std::string figures, stolen, cross_cpu;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const char* sep = i ? ", " : "";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.0f", sep, s.fixed_rate ? key(runs[i]) / 1e3 : key(runs[i]));
    figures += buf;
    stolen += sep;
    stolen += rounded(runs[i].stolen_ms);
    cross_cpu += sep;
    cross_cpu += rounded(runs[i].cross_cpu_ns[0]) + "/" + rounded(runs[i].cross_cpu_ns[1]);
  }
  const std::string machine = "CPU ms stolen by the hypervisor: " + stolen +
                              "; cross-CPU cache-line round trip ns before/after: " + cross_cpu;
  const std::string all = runs.size() < 2 ? machine
                                          : "median of " + std::to_string(runs.size()) + " runs (" +
                                                (s.fixed_rate ? "p99 µs: " : "msgs/s: ") + figures +
                                                "; " + machine + ")";
  row.note = row.note.empty() ? all : all + "; " + row.note;
  return row;
}

void print_progress(const scenario& s, system_kind kind, const run_result& r) {
  std::fprintf(stderr,
               "  %-24s %-9s sent %10llu  recv %10llu  pub %11.0f/s  sub %11.0f/s  p50 %8.1f us  "
               "p99 %9.1f us  stolen %5.0f ms  cross-CPU %4.0f/%4.0f ns%s%s\n",
               s.info.id.c_str(), std::string(to_string(kind)).c_str(),
               static_cast<unsigned long long>(r.sent), static_cast<unsigned long long>(r.received),
               r.pub_rate, r.sub_rate, static_cast<double>(r.latency.percentile(50)) / 1e3,
               static_cast<double>(r.latency.percentile(99)) / 1e3, r.stolen_ms, r.cross_cpu_ns[0],
               r.cross_cpu_ns[1], r.error.empty() ? "" : "  ! ", r.error.c_str());
}

reqrep_options reqrep_scenario_options(const std::string& id, reqrep_mode mode, nanoseconds d) {
  reqrep_options o;
  o.mode = mode;
  o.rate = 10'000;
  o.payload = 128;
  o.duration = d;
  o.service = "bench." + id;
  return o;
}

namespace {

std::vector<scenario> make_scenarios(nanoseconds d) {
  std::vector<scenario> v;
  auto pubsub = [&](std::string id, std::string title, int pubs, int subs, bool group,
                    std::size_t size, double rate = 0) {
    pubsub_options o;
    o.rate = rate;
    o.publishers = pubs;
    o.subscribers = subs;
    o.queue_group = group;
    o.payload = size;
    o.duration = d;
    o.subject = "bench." + id;
    scenario s;
    s.info = {std::move(id), std::move(title),
              subs == 0 ? "publishes accepted/s" : "deliveries received/s"};
    s.run = [o](const endpoint& ep) { return run_pubsub(ep, o); };
    s.headline_is_pub = subs == 0;
    s.fixed_rate = rate > 0;
    if (group) {
      s.redis = false;
      s.redis_missing = "Redis pub/sub has no queue groups: not measured";
    }
    return s;
  };
  v.push_back(pubsub("pub-only-16B", "publish only, 16 B, 1 publisher, flat out", 1, 0, false, 16));
  v.push_back(pubsub("pub-only-128B", "publish only, 128 B", 1, 0, false, 128));
  v.push_back(pubsub("pub-only-1KiB", "publish only, 1 KiB", 1, 0, false, 1024));
  v.push_back(pubsub("1to1-16B", "1 publisher → 1 subscriber, 16 B", 1, 1, false, 16));
  v.push_back(pubsub("1to1-128B", "1 → 1, 128 B", 1, 1, false, 128));
  v.push_back(pubsub("1to1-128B-50k",
                     "1 → 1, 128 B, at a fixed 50,000 msgs/s (latency at moderate load)", 1, 1,
                     false, 128, 50'000));
  v.push_back(
      pubsub("1to4-128B", "1 → 4 fan-out, 128 B (4 deliveries per publish)", 1, 4, false, 128));
  v.push_back(
      pubsub("4to4-128B", "4 publishers → 4 subscribers, 128 B (each gets all)", 4, 4, false, 128));
  v.push_back(pubsub("qgroup4-128B", "1 → queue group of 4, 128 B (each message to one member)", 1,
                     4, true, 128));

  auto reqrep = [&](std::string id, std::string title, reqrep_mode mode) {
    const reqrep_options o = reqrep_scenario_options(id, mode, d);
    scenario s;
    s.info = {std::move(id), std::move(title), "replies received/s"};
    s.run = [o](const endpoint& ep) { return run_reqrep(ep, o); };
    s.redis = false;
    s.redis_missing = "Redis has no request/reply: not measured";
    s.fixed_rate = mode == reqrep_mode::fixed_rate;
    return s;
  };
  v.push_back(reqrep("reqrep-10k-128B", "request/reply at a fixed 10,000/s, 128 B, open loop",
                     reqrep_mode::fixed_rate));
  v.push_back(reqrep("reqrep-max-128B", "request/reply, one client, one request in flight",
                     reqrep_mode::closed_loop));
  return v;
}

constexpr const char* slow_sub_id = "slow_sub";
constexpr const char* scaling_ids[] = {"4to4-128B-workers1", "4to4-128B-workers2"};
constexpr const char* idle_id = "idle-cpu-10s";

/// Whether `id` runs: every scenario, or those `only` names.
bool selected(const suite_options& opt, const std::string& id) {
  return opt.only.empty() || std::find(opt.only.begin(), opt.only.end(), id) != opt.only.end();
}

/// Every scenario id the suite knows, for --only.
std::vector<std::string> known_ids() {
  std::vector<std::string> ids;
  for (const auto& s : make_scenarios(nanoseconds(1s))) ids.push_back(s.info.id);
  ids.push_back(slow_sub_id);
  for (const char* id : scaling_ids) ids.push_back(id);
  ids.push_back(idle_id);
  return ids;
}

}  // namespace

void ensure_dir(const std::string& path) {
  ::mkdir(path.c_str(), 0755);
}

std::size_t count_log_problems(const std::string& path, std::string& first) {
  std::ifstream f(path);
  std::size_t n = 0;
  for (std::string line; std::getline(f, line);) {
    if (line.find("[warning]") != std::string::npos || line.find("[error]") != std::string::npos ||
        line.find("[critical]") != std::string::npos) {
      if (n++ == 0) first = line;
    }
  }
  return n;
}

suite_run begin_suite(const suite_options& opt, const std::string& name,
                      std::string third_version) {
  suite_run run;
  run.start = clock::now();
  run.run_length = opt.quick ? nanoseconds(1s) : nanoseconds(2s);
  run.reps = opt.quick ? 1 : 3;
  // A fixed-rate run's median is taken by p99, which 1 % of a run's samples
  // set: one burst of stolen CPU time of 20 ms moves a 2 s run's p99, so these
  // scenarios get more runs than the throughput ones.
  run.latency_reps = opt.quick ? 1 : 5;
  ensure_dir(opt.out_dir);
  ensure_dir(opt.out_dir + "/logs");

  run_info& info = run.info;
  info.command = opt.command;
  info.mode = opt.quick ? "quick" : "full";
  info.seconds_per_run = std::chrono::duration<double>(run.run_length).count();
  info.repetitions = run.reps;
  info.latency_repetitions = run.latency_reps;
  info.machine = machine_description();
  info.keyway_version = first_output_line(opt.keywayd + " --version");
  if (!opt.keyway_revision.empty()) info.keyway_version += " (" + opt.keyway_revision + ")";
  info.nats_version = first_output_line("nats-server --version");
  info.redis_version = std::move(third_version);
  std::fprintf(stderr, "%s: %s; %s; %s\n%s: %s\n", name.c_str(), info.keyway_version.c_str(),
               info.nats_version.c_str(), info.redis_version.c_str(), name.c_str(),
               info.machine.c_str());
  if (!opt.keywayd_args.empty()) {
    std::string extra;
    for (const auto& a : opt.keywayd_args) extra += " " + a;
    info.notes.push_back("keywayd ran with the extra arguments" + extra);
  }
  run.load_at_start = load_average();
  run.stolen_at_start = stolen_ms();
  return run;
}

void run_interleaved(const scenario& s, const std::vector<endpoint>& eps, const suite_run& run,
                     std::vector<result_row>& rows) {
  std::vector<std::vector<run_result>> runs(eps.size());
  // Repetitions interleave the systems, so that a burst of background
  // load lands on all of them rather than on one.
  for (int rep = 0; rep < (s.fixed_rate ? run.latency_reps : run.reps); ++rep) {
    for (std::size_t k = 0; k < eps.size(); ++k) {
      if (is_redis(eps[k].kind) && !s.redis) continue;
      runs[k].push_back(measured([&] { return s.run(eps[k]); }));
      print_progress(s, eps[k].kind, runs[k].back());
    }
  }
  for (std::size_t k = 0; k < eps.size(); ++k) {
    if (runs[k].empty()) {
      result_row row;
      row.scenario = s.info.id;
      row.system = std::string(to_string(eps[k].kind));
      row.note = s.redis_missing;
      rows.push_back(row);
      continue;
    }
    rows.push_back(median_row(s, eps[k].kind, runs[k]));
  }
}

bool end_suite(suite_run& run, const suite_options& opt, const std::string& name,
               const std::vector<scenario_info>& infos, const std::vector<result_row>& rows) {
  run_info& info = run.info;
  info.total_seconds = std::chrono::duration<double>(clock::now() - run.start).count();
  const double stolen_at_end = stolen_ms();
  char stolen[48] = "not available";
  if (run.stolen_at_start >= 0 && stolen_at_end >= 0)
    std::snprintf(stolen, sizeof stolen, "%.1f s", (stolen_at_end - run.stolen_at_start) / 1e3);
  char load[400];
  std::snprintf(
      load, sizeof load,
      "load average (1 min) %.2f at the start, %.2f at the end; CPU time stolen by the "
      "hypervisor over the suite: %s (/proc/stat steal; each median's note lists it per run, "
      "and the time a cache line takes from one CPU to another and back, measured before "
      "and after each run)",
      run.load_at_start, load_average(), stolen);
  info.notes.insert(info.notes.begin(), load);
  const std::string tables = format_tables(info, infos, rows);
  std::fputs(tables.c_str(), stdout);
  std::ofstream(opt.out_dir + "/" + name + ".md") << tables;
  if (!write_json(opt.out_dir + "/" + name + ".json", info, rows)) {
    std::fprintf(stderr, "cannot write %s/%s.json\n", opt.out_dir.c_str(), name.c_str());
    return false;
  }
  return true;
}

int run_suite(const suite_options& opt) {
  const auto known = known_ids();
  for (const auto& id : opt.only) {
    if (std::find(known.begin(), known.end(), id) != known.end()) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    std::fprintf(stderr, "e2e: --only %s: no such scenario; the scenarios are %s\n", id.c_str(),
                 list.c_str());
    return 2;
  }
  suite_run run = begin_suite(opt, "e2e", first_output_line("redis-server --version"));
  run_info& info = run.info;
  const nanoseconds d = run.run_length;
  const int reps = run.reps;
  const std::string logs = opt.out_dir + "/logs";
  info.notes.push_back("nats and redis are the official clients, " + official_client_versions() +
                       (opt.raw ? "; nats-raw and redis-raw the hand-written adapters" : ""));
  std::vector<result_row> rows;
  std::vector<scenario_info> infos;
  int status = 0;
  try {
    auto keywayd = start_keywayd(opt.keywayd, 2, opt.keywayd_args, logs + "/keywayd-w2.log");
    auto nats = start_nats_server(logs + "/nats-server.log");
    auto redis = start_redis_server(logs + "/redis-server.log");
    const int kport = keywayd.port(), nport = nats.port(), rport = redis.port();
    const endpoint keyway_ep{system_kind::keyway, "127.0.0.1", kport};
    const endpoint nats_ep{system_kind::nats, "127.0.0.1", nport};
    const endpoint redis_ep{system_kind::redis, "127.0.0.1", rport};
    const endpoint nats_raw_ep{system_kind::nats_raw, "127.0.0.1", nport};
    const endpoint redis_raw_ep{system_kind::redis_raw, "127.0.0.1", rport};
    std::vector<endpoint> eps{keyway_ep, nats_ep, redis_ep};
    if (opt.raw) eps.insert(eps.end(), {nats_raw_ep, redis_raw_ep});
    std::fprintf(stderr,
                 "e2e: keywayd pid %d port %d, nats-server pid %d port %d, redis-server pid %d "
                 "port %d; load %.2f\n",
                 keywayd.pid(), kport, nats.pid(), nport, redis.pid(), rport, load_average());

    for (const auto& s : make_scenarios(d)) {
      if (!selected(opt, s.info.id)) continue;
      infos.push_back(s.info);
      run_interleaved(s, eps, run, rows);
    }

    // The slow subscriber: once per system (each run is 10 s and more, and
    // what it shows is a policy, not a figure to take a median of).
    if (selected(opt, slow_sub_id)) {
      slow_sub_options o;
      o.duration = opt.quick ? nanoseconds(3s) : nanoseconds(10s);
      const scenario_info si{slow_sub_id, describe(o), "see its table"};
      infos.push_back(si);
      info.notes.push_back(std::string(slow_sub_id) +
                           " ran once per system (its own length, not the runs above), "
                           "keywayd, then nats-server, then redis-server, through the "
                           "hand-written adapters (nats-raw, redis-raw): the official clients "
                           "read all the socket holds, so they cannot play the slow reader");
      for (const endpoint& ep : {keyway_ep, nats_raw_ep, redis_raw_ep}) {
        const auto r = measured([&] { return run_slow_sub(ep, o); });
        print_slow_sub(si.id, ep.kind, r);
        rows.push_back(slow_sub_row(si.id, ep.kind, r));
      }
    }

    // Scaling: the same scenario on a 1-worker keywayd and on the 2-worker one, interleaved.
    if (selected(opt, scaling_ids[0]) || selected(opt, scaling_ids[1])) {
      pubsub_options o;
      o.publishers = 4;
      o.subscribers = 4;
      o.payload = 128;
      o.duration = d;
      o.subject = "bench.scaling";
      auto keywayd1 = start_keywayd(opt.keywayd, 1, opt.keywayd_args, logs + "/keywayd-w1.log");
      const int port1 = keywayd1.port();
      scenario pair[2];
      std::vector<run_result> runs[2];
      for (int w = 0; w < 2; ++w) {
        const std::string workers = std::to_string(w + 1);
        pair[w].info = {
            "4to4-128B-workers" + workers,
            "4 → 4, 128 B, keywayd --workers " + workers + " (scaling pair, interleaved)",
            "deliveries received/s"};
        infos.push_back(pair[w].info);
      }
      for (int rep = 0; rep < reps; ++rep) {
        for (int w = 0; w < 2; ++w) {
          const endpoint ep{system_kind::keyway, "127.0.0.1", w == 0 ? port1 : kport};
          runs[w].push_back(measured([&] { return run_pubsub(ep, o); }));
          print_progress(pair[w], system_kind::keyway, runs[w].back());
        }
      }
      for (int w = 0; w < 2; ++w) rows.push_back(median_row(pair[w], system_kind::keyway, runs[w]));
      const auto& w1 = rows[rows.size() - 2];
      const auto& w2 = rows[rows.size() - 1];
      if (w1.msgs_per_sec && w2.msgs_per_sec && *w1.msgs_per_sec > 0) {
        char buf[128];
        std::snprintf(buf, sizeof buf, "2 workers / 1 worker = %.2f×",
                      *w2.msgs_per_sec / *w1.msgs_per_sec);
        info.notes.push_back(
            std::string("scaling (4to4-128B-workers2 / 4to4-128B-workers1, medians): ") + buf);
      }
      keywayd1.stop();
      std::string first;
      if (const auto n = count_log_problems(logs + "/keywayd-w1.log", first); n > 0)
        info.notes.push_back("keywayd --workers 1 logged " + std::to_string(n) +
                             " warning/error lines (" + logs + "/keywayd-w1.log), first: " + first);
    }

    // Idle cost: the three servers, all idle now (every bench connection closed), over 10 s.
    if (selected(opt, idle_id)) {
      scenario_info idle{idle_id, "CPU seconds over 10 s with no clients, after the runs above",
                         "-"};
      infos.push_back(idle);
      std::this_thread::sleep_for(1s);
      server_process* procs[] = {&keywayd, &nats, &redis};
      const char* names[] = {"keyway", "nats", "redis"};
      double stat0[3], sched0[3];
      for (int i = 0; i < 3; ++i) {
        stat0[i] = cpu_seconds(procs[i]->pid());
        sched0[i] = sched_cpu_seconds(procs[i]->pid());
      }
      std::this_thread::sleep_for(10s);
      for (int i = 0; i < 3; ++i) {
        result_row row;
        row.scenario = idle.id;
        row.system = names[i];
        row.cpu_seconds = cpu_seconds(procs[i]->pid()) - stat0[i];
        char buf[160];
        std::snprintf(buf, sizeof buf, "schedstat (ns resolution): %.4f CPU s%s",
                      sched_cpu_seconds(procs[i]->pid()) - sched0[i],
                      i == 0 ? "; keywayd --workers 2" : "");
        row.note = buf;
        std::fprintf(stderr, "  %-24s %-7s %.3f CPU s (%s)\n", idle.id.c_str(), names[i],
                     *row.cpu_seconds, buf);
        rows.push_back(row);
      }
    }

    keywayd.stop();
    nats.stop();
    redis.stop();
    std::string first;
    if (const auto n = count_log_problems(logs + "/keywayd-w2.log", first); n > 0)
      info.notes.push_back("keywayd --workers 2 logged " + std::to_string(n) +
                           " warning/error lines (" + logs + "/keywayd-w2.log), first: " + first);
  } catch (const bench_error& e) {
    std::fprintf(stderr, "e2e: %s\n", e.what());
    status = 1;
  }

  if (!end_suite(run, opt, "e2e", infos, rows)) status = 1;
  if (!write_gnuplot(opt.out_dir, info, infos, rows)) {
    std::fprintf(stderr, "cannot write %s/e2e.gp\n", opt.out_dir.c_str());
    status = 1;
  }
  return status;
}

}  // namespace keyway::bench::e2e
