#include "bench/e2e/cluster_suite.hpp"

#include "bench/e2e/servers.hpp"
#include "core/worker.hpp"
#include "tests/support/etcd_process.hpp"
#include "tests/support/http_get.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

constexpr int nodes = 3;
constexpr auto cluster_ready_timeout = 30s;

/// One cluster's client ports, node 1 first.
using node_ports = std::array<int, nodes>;

/// This process's CPU time (user + system, every thread, ended ones too), s.
double client_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

/// CPU time over a scenario's runs of one system, summed over the runs.
struct cpu_tally {
  std::vector<double> server;  // per server process (node), s (sched)
  double client = 0;           // keyway-bench, s
  double wall = 0;             // the runs' length, setup and probes included, s
  double received = 0;         // deliveries (replies)
  bool unreadable = false;     // a server's CPU time could not be read (it exited)
};

/// "n1" for node 0. (Not "n" + to_string(): g++ 12 -Wrestrict false positive.)
std::string node_name(int i) {
  std::string id("n");
  id += std::to_string(i + 1);
  return id;
}

/// "servers' CPU per delivery 1.10 µs; CPU as a share of one CPU (...): n1
/// 0.66, n2 0.28, n3 0.26; client (keyway-bench) 0.18".
std::string describe(const cpu_tally& t) {
  if (t.unreadable) return "servers' CPU not known: a server exited";
  double servers = 0;
  for (double c : t.server) servers += c;
  char buf[120];
  std::snprintf(buf, sizeof buf,
                "servers' CPU per delivery %.2f µs; CPU as a share of one CPU (sched, setup "
                "included):",
                t.received > 0 ? servers / t.received * 1e6 : -1.0);
  std::string text = buf;
  for (std::size_t i = 0; i < t.server.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s %s %.2f", i > 0 ? "," : "",
                  t.server.size() > 1 ? node_name(static_cast<int>(i)).c_str() : "server",
                  t.server[i] / t.wall);
    text += buf;
  }
  std::snprintf(buf, sizeof buf, "; client (keyway-bench) %.2f", t.client / t.wall);
  return text + buf;
}

/// Where a scenario's clients connect: `across` the cluster's nodes, all on
/// its node 1, or to a `single` server that is no cluster's node.
enum class placement { across, node1, single };

/// One system's servers as a scenario sees them: client ports, node 1 first
/// (a single server: its port three times), and the processes.
struct deployment {
  node_ports ports{};
  std::vector<server_process*> procs;
};
using deployment_of = std::function<const deployment&(system_kind, placement)>;

/// Polls `port`'s `target` on 127.0.0.1 every 50 ms until `good(body)` holds
/// for a 200 answer; false after the cluster's start-up time.
template <class Good>
bool await_http(int port, const std::string& target, Good&& good, clock::time_point deadline) {
  while (clock::now() < deadline) {
    try {
      const auto r = keyway::test::http_get(static_cast<std::uint16_t>(port), target, 2000ms);
      if (r.status == 200 && good(r.body)) return true;
    } catch (const std::runtime_error&) {  // not listening yet
    }
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

struct keyway_cluster {
  std::vector<server_process> procs;
  node_ports ports{};
  std::array<int, nodes> admin{};
};

keyway_cluster start_keyway_cluster(const suite_options& opt, const std::string& etcd,
                                    const std::string& logs) {
  const std::vector<int> cpus = core::allowed_cpus();
  keyway_cluster c;
  std::array<std::string, nodes> configs;
  std::array<int, nodes> peer{};
  for (int i = 0; i < nodes; ++i) {
    c.ports[i] = free_port();
    c.admin[i] = free_port();
    peer[i] = free_port();
    const std::string id = node_name(i);
    configs[i] = logs + "/cluster-" + id + ".toml";
    std::ofstream f(configs[i]);
    f << "[server]\nworkers = 1\n";
    if (!cpus.empty()) f << "cpus = [" << cpus[static_cast<std::size_t>(i) % cpus.size()] << "]\n";
    f << "[listen]\ntcp = [\"127.0.0.1:" << c.ports[i] << "\"]\n"
      << "[admin]\nlisten = \"127.0.0.1:" << c.admin[i] << "\"\n"
      << "[cluster]\nname = \"bench\"\nnode_id = \"" << id << "\"\n"
      << "peer_listen = \"tcp://127.0.0.1:" << peer[i] << "\"\n"
      << "advertise = \"tcp://127.0.0.1:" << c.ports[i] << "\"\n"
      << "etcd_endpoints = [\"" << etcd << "\"]\nlease_ttl = \"2s\"\n";
    if (!f) throw bench_error("cannot write " + configs[i]);
  }
  for (int i = 0; i < nodes; ++i) {
    std::vector<std::string> argv{opt.keywayd, "--config", configs[i]};
    argv.insert(argv.end(), opt.keywayd_args.begin(), opt.keywayd_args.end());
    const std::string id = node_name(i);
    c.procs.push_back(server_process::start("keywayd-" + id, std::move(argv), c.ports[i],
                                            logs + "/cluster-keywayd-" + id + ".log"));
  }
  const auto deadline = clock::now() + cluster_ready_timeout;
  for (int i = 0; i < nodes; ++i)
    if (!await_http(
            c.admin[i], "/readyz", [](const std::string&) { return true; }, deadline))
      throw bench_error("keywayd node n" + std::to_string(i + 1) + " not ready (/readyz on " +
                        std::to_string(c.admin[i]) + ") within 30 s; see " + c.procs[i].log_path());
  return c;
}

struct nats_cluster {
  std::vector<server_process> procs;
  node_ports ports{};
};

nats_cluster start_nats_cluster(const std::string& logs) {
  nats_cluster c;
  std::array<int, nodes> route{}, monitor{};
  for (int i = 0; i < nodes; ++i) {
    c.ports[i] = free_port();
    route[i] = free_port();
    monitor[i] = free_port();
  }
  for (int i = 0; i < nodes; ++i) {
    std::string routes;
    for (int j = 0; j < nodes; ++j) {
      if (j == i) continue;
      routes += routes.empty() ? "nats://127.0.0.1:" : ",nats://127.0.0.1:";
      routes += std::to_string(route[j]);
    }
    const std::string id = node_name(i);
    c.procs.push_back(server_process::start(
        "nats-server-" + id,
        {"nats-server", "-a", "127.0.0.1", "-p", std::to_string(c.ports[i]), "-m",
         std::to_string(monitor[i]), "-n", id, "--cluster_name", "bench", "--cluster",
         "nats://127.0.0.1:" + std::to_string(route[i]), "--routes", routes},
        c.ports[i], logs + "/cluster-nats-server-" + id + ".log"));
  }
  const auto deadline = clock::now() + cluster_ready_timeout;
  const std::string want = "\"num_routes\": " + std::to_string(nodes - 1);
  for (int i = 0; i < nodes; ++i)
    if (!await_http(
            monitor[i], "/routez",
            [&](const std::string& body) { return body.find(want) != std::string::npos; },
            deadline))
      throw bench_error("nats-server n" + std::to_string(i + 1) + " has not " + want +
                        " routes (/routez) within 30 s; see " + c.procs[i].log_path());
  return c;
}

/// The cluster suite's scenarios; `servers` gives the servers an endpoint's
/// system has for a placement.
struct cluster_scenario {
  scenario s;
  placement where;
};

std::vector<cluster_scenario> make_cluster_scenarios(nanoseconds d, deployment_of servers) {
  std::vector<cluster_scenario> v;
  for (const placement where : {placement::across, placement::node1, placement::single}) {
    const bool across = where == placement::across;
    const std::string prefix = across                      ? "across-"
                               : where == placement::node1 ? "node1-"
                                                           : "single-";
    const std::string on = across                      ? " (publisher on node 1, "
                           : where == placement::node1 ? " (every client on node 1"
                                                       : " (a single server, no cluster";
    auto pubsub = [&](std::string id, std::string title, int subs, std::size_t size) {
      pubsub_options o;
      o.subscribers = subs;
      o.payload = size;
      o.duration = d;
      o.subject = "bench." + prefix + id;
      o.probe = true;
      scenario s;
      s.info = {prefix + id,
                title + on +
                    (!across     ? ")"
                     : subs == 1 ? "subscriber on node 2)"
                                 : "a subscriber on each node)"),
                "deliveries received/s"};
      s.run = [o, across, where, servers](const endpoint& ep) {
        pubsub_options mine = o;
        const node_ports& p = servers(ep.kind, where).ports;
        if (!across)
          mine.sub_ports = {p[0]};
        else if (o.subscribers == 1)
          mine.sub_ports = {p[1]};
        else
          mine.sub_ports.assign(p.begin(), p.end());
        return run_pubsub({ep.kind, ep.host, p[0]}, mine);
      };
      return s;
    };
    v.push_back({pubsub("1to1-16B", "1 → 1, 16 B", 1, 16), where});
    v.push_back({pubsub("1to1-128B", "1 → 1, 128 B", 1, 128), where});
    v.push_back({pubsub("1to3-128B", "1 → 3 fan-out, 128 B", nodes, 128), where});

    auto reqrep = [&](std::string id, std::string title, reqrep_mode mode) {
      reqrep_options o = reqrep_scenario_options(prefix + id, mode, d);
      o.probe = true;
      scenario s;
      s.info = {prefix + id,
                title + (across ? " (requester on node 1, responder on node 2)" : on + ")"),
                "replies received/s"};
      s.run = [o, across, where, servers](const endpoint& ep) {
        reqrep_options mine = o;
        const node_ports& p = servers(ep.kind, where).ports;
        mine.responder_port = across ? p[1] : p[0];
        return run_reqrep({ep.kind, ep.host, p[0]}, mine);
      };
      s.fixed_rate = mode == reqrep_mode::fixed_rate;
      return s;
    };
    v.push_back({reqrep("reqrep-10k-128B", "request/reply at a fixed 10,000/s, 128 B",
                        reqrep_mode::fixed_rate),
                 where});
    v.push_back(
        {reqrep("reqrep-max-128B", "request/reply, one in flight", reqrep_mode::closed_loop),
         where});
  }
  return v;
}

/// A node's /status, saved beside the logs (what the cluster reported).
void save_status(int admin_port, const std::string& path) {
  try {
    std::ofstream(path)
        << keyway::test::http_get(static_cast<std::uint16_t>(admin_port), "/status").body;
  } catch (const std::runtime_error& e) {
    std::ofstream(path) << "unreadable: " << e.what() << "\n";
  }
}

}  // namespace

int run_cluster_suite(const suite_options& opt) {
  deployment keyway_cluster, nats_cluster, keyway_single, nats_single;
  const deployment_of servers = [&](system_kind k, placement w) -> const deployment& {
    const bool kw = k == system_kind::keyway;
    if (w == placement::single) return kw ? keyway_single : nats_single;
    return kw ? keyway_cluster : nats_cluster;
  };
  const auto all = make_cluster_scenarios(nanoseconds(1s), servers);
  for (const auto& id : opt.only) {
    if (std::any_of(all.begin(), all.end(),
                    [&](const cluster_scenario& c) { return c.s.info.id == id; }))
      continue;
    std::string list;
    for (const auto& c : all) list += (list.empty() ? "" : ", ") + c.s.info.id;
    std::fprintf(stderr, "cluster: --only %s: no such scenario; the scenarios are %s\n", id.c_str(),
                 list.c_str());
    return 2;
  }
  suite_run run = begin_suite(opt, "cluster", "etcd " + first_output_line("etcd --version"));
  const std::string logs = opt.out_dir + "/logs";
  run.info.notes.push_back(
      "3 keywayd nodes (--config " + logs +
      "/cluster-nI.toml: [cluster] with a real etcd, one worker each, pinned to the CPUs in "
      "turn) and 3 nats-servers joined by routes, all on 127.0.0.1; the single- rows: one "
      "keywayd --workers 1 and one nats-server, no cluster. nats through the official client (" +
      official_client_versions() +
      "); Keyway through the codec. Every run waits for a probe to cross the cluster before "
      "its clock starts");
  std::vector<result_row> rows;
  std::vector<scenario_info> infos;
  int status = 0;
  try {
    keyway::test::etcd_process etcd;
    auto kc = start_keyway_cluster(opt, etcd.endpoint(), logs);
    auto nc = start_nats_cluster(logs);
    auto ks = start_keywayd(opt.keywayd, 1, opt.keywayd_args, logs + "/cluster-single-keywayd.log");
    auto ns = start_nats_server(logs + "/cluster-single-nats-server.log");
    keyway_cluster.ports = kc.ports;
    nats_cluster.ports = nc.ports;
    for (int i = 0; i < nodes; ++i) {
      keyway_cluster.procs.push_back(&kc.procs[i]);
      nats_cluster.procs.push_back(&nc.procs[i]);
    }
    keyway_single = {{ks.port(), ks.port(), ks.port()}, {&ks}};
    nats_single = {{ns.port(), ns.port(), ns.port()}, {&ns}};
    for (int i = 0; i < nodes; ++i)
      save_status(kc.admin[i], logs + "/cluster-" + node_name(i) + "-status.json");
    std::fprintf(stderr,
                 "cluster: etcd pid %d port %d; keywayd ports %d %d %d; nats-server ports %d %d "
                 "%d; single keywayd %d, nats-server %d; load %.2f\n",
                 etcd.pid(), etcd.port(), kc.ports[0], kc.ports[1], kc.ports[2], nc.ports[0],
                 nc.ports[1], nc.ports[2], ks.port(), ns.port(), load_average());
    const std::vector<endpoint> eps{{system_kind::keyway, "127.0.0.1", kc.ports[0]},
                                    {system_kind::nats, "127.0.0.1", nc.ports[0]}};

    for (const auto& [s, where] : make_cluster_scenarios(run.run_length, servers)) {
      if (!opt.only.empty() &&
          std::find(opt.only.begin(), opt.only.end(), s.info.id) == opt.only.end())
        continue;
      infos.push_back(s.info);
      // The servers' and the client's CPU time over each run (setup and
      // probes included), summed over the runs.
      std::map<system_kind, cpu_tally> cpu;
      scenario timed = s;
      timed.run = [&, w = where](const endpoint& ep) {
        const auto& procs = servers(ep.kind, w).procs;
        std::vector<double> before;
        for (auto* p : procs) before.push_back(sched_cpu_seconds(p->pid()));
        const double client_before = client_cpu_seconds();
        const auto t0 = clock::now();
        run_result r = s.run(ep);
        cpu_tally& t = cpu[ep.kind];
        t.server.resize(procs.size());
        for (std::size_t i = 0; i < procs.size(); ++i) {
          const double after = sched_cpu_seconds(procs[i]->pid());
          if (after < 0 || before[i] < 0) t.unreadable = true;  // the server exited
          t.server[i] += after - before[i];
        }
        t.client += client_cpu_seconds() - client_before;
        t.wall += std::chrono::duration<double>(clock::now() - t0).count();
        t.received += static_cast<double>(r.received);
        return r;
      };
      run_interleaved(timed, eps, run, rows);
      for (const auto& [kind, t] : cpu) {
        run.info.notes.push_back(s.info.id + " / " + std::string(to_string(kind)) + ": " +
                                 describe(t));
        std::fprintf(stderr, "  %s\n", run.info.notes.back().c_str());
      }
    }

    for (auto* d : {&keyway_cluster, &nats_cluster, &keyway_single, &nats_single})
      for (auto* p : d->procs)
        if (!p->running()) {
          // Its rows after that are connection errors, not figures.
          run.info.notes.push_back(p->name() + " exited during the run; see " + p->log_path());
          std::fprintf(stderr, "cluster: %s\n", run.info.notes.back().c_str());
          status = 1;
        }
    for (auto* d : {&keyway_cluster, &nats_cluster, &keyway_single, &nats_single})
      for (auto* p : d->procs) p->stop();
    std::vector<server_process*> keywayds = keyway_cluster.procs;
    keywayds.insert(keywayds.end(), keyway_single.procs.begin(), keyway_single.procs.end());
    for (auto* p : keywayds) {
      std::string first;
      if (const auto n = count_log_problems(p->log_path(), first); n > 0)
        run.info.notes.push_back(p->name() + " logged " + std::to_string(n) +
                                 " warning/error lines (" + p->log_path() + "), first: " + first);
    }
  } catch (const std::runtime_error& e) {  // bench_error, and etcd_process's
    std::fprintf(stderr, "cluster: %s\n", e.what());
    status = 1;
  }

  if (!end_suite(run, opt, "cluster", infos, rows)) status = 1;
  return status;
}

}  // namespace keyway::bench::e2e
