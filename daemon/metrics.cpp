#include "daemon/metrics.hpp"

#include <prometheus/text_serializer.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon/server.hpp"

namespace keyway::daemon {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void add(MetricFamily& f, double v, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter)
    m.counter.value = v;
  else
    m.gauge.value = v;
  f.metric.push_back(std::move(m));
}

/// One family with a value per worker from the runtime's counters (core::worker_stats).
template <class Get>
MetricFamily per_worker(const server& s, std::string name, std::string help, MetricType type,
                        Get get) {
  MetricFamily f = family(std::move(name), std::move(help), type);
  for (std::size_t i = 0; i < s.context().workers; ++i)
    add(f, static_cast<double>(get(s.pool().at(i).stats())), {{"worker", std::to_string(i)}});
  return f;
}

/// A family of probe counters (probe.cpp's table): per worker, or summed over
/// workers with one series per label value.
MetricFamily from_probes(const server& s, const probe_metric& m) {
  MetricFamily f = family(std::string(m.name), std::string(m.help),
                          m.gauge ? MetricType::Gauge : MetricType::Counter);
  const server_context& ctx = s.context();
  if (m.per_worker) {
    for (std::size_t i = 0; i < ctx.workers; ++i)
      add(f, static_cast<double>(m.read(*ctx.stats[i], 0)), {{"worker", std::to_string(i)}});
    return f;
  }
  const std::size_t series = m.label.empty() ? 1 : m.label_values.size();
  for (std::size_t k = 0; k < series; ++k) {
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < ctx.workers; ++i) sum += m.read(*ctx.stats[i], k);
    if (m.label.empty())
      add(f, static_cast<double>(sum));
    else
      add(f, static_cast<double>(sum), {{std::string(m.label), std::string(m.label_values[k])}});
  }
  return f;
}

MetricFamily latency(const server& s) {
  MetricFamily f =
      family("keyway_delivery_latency_seconds",
             "Time from reading a publish frame to queueing its delivery for the subscriber's "
             "socket write, merged over workers",
             MetricType::Histogram);
  const server_context& ctx = s.context();
  ClientMetric m;
  std::uint64_t cumulative = 0, sum_ns = 0;
  for (std::size_t b = 0; b <= latency_histogram::buckets; ++b) {
    for (std::size_t i = 0; i < ctx.workers; ++i) cumulative += ctx.stats[i]->latency().count(b);
    if (b < latency_histogram::buckets)
      m.histogram.bucket.push_back({cumulative, latency_histogram::bound_ns(b) / 1e9});
  }
  for (std::size_t i = 0; i < ctx.workers; ++i) sum_ns += ctx.stats[i]->latency().sum_ns();
  m.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = static_cast<double>(sum_ns) / 1e9;
  f.metric.push_back(std::move(m));
  return f;
}

/// [cluster] only: membership and links, as this node sees them.
void cluster_metrics(const server& s, const cluster_node& c, std::vector<MetricFamily>& out) {
  constexpr auto G = MetricType::Gauge;
  const auto st = c.read_stats();
  auto epoch =
      family("keyway_cluster_epoch", "The ring's epoch: the etcd revision of its last change", G);
  add(epoch, static_cast<double>(st.epoch));
  out.push_back(std::move(epoch));
  auto members = family("keyway_cluster_members", "Nodes registered in etcd, by state", G);
  for (std::size_t i = 0; i < 3; ++i)
    add(members, st.members[i],
        {{"state", std::string(cluster::to_string(static_cast<cluster::node_state>(i)))}});
  out.push_back(std::move(members));
  const server_context& ctx = s.context();
  auto per_peer = [&](const char* name, const char* help, MetricType type, auto read) {
    auto f = family(name, help, type);
    for (const auto& p : st.peers) {
      std::uint64_t sum = 0;
      for (std::size_t w = 0; w < ctx.workers; ++w) sum += read(ctx.stats[w]->peer(p.index));
      add(f, static_cast<double>(sum), {{"peer", p.id}});
    }
    out.push_back(std::move(f));
  };
  using t = probe::peer_traffic;
  per_peer("keyway_cluster_peer_sent_frames_total",
           "Frames queued on the links to another node (batches of forwarded publishes or "
           "deliveries, interest, replies, hand-off steps)",
           MetricType::Counter, [](const t& x) { return x.frames.get(); });
  per_peer("keyway_cluster_peer_sent_bytes_total",
           "Bytes of the frames queued on the links to another node", MetricType::Counter,
           [](const t& x) { return x.bytes.get(); });
  per_peer("keyway_cluster_peer_sent_messages_total",
           "Forwarded publishes and delivered copies sent to another node", MetricType::Counter,
           [](const t& x) { return x.messages.get(); });
  per_peer("keyway_cluster_peer_queued_bytes",
           "Bytes queued on the links to another node and not yet written (the forwarding "
           "backlog), at the end of each worker's last turn",
           G, [](const t& x) { return x.queued.get(); });
  // The lag: the longest any worker's oldest queued byte has waited (a
  // worker asleep behind a stalled write still counts, as time goes on).
  auto lag = family("keyway_cluster_peer_lag_seconds",
                    "How long the oldest frame queued on a link to another node has waited to be "
                    "written (0: nothing queued)",
                    G);
  const auto now_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  for (const auto& p : st.peers) {
    std::uint64_t oldest = 0;
    for (std::size_t w = 0; w < ctx.workers; ++w) {
      const std::uint64_t since = ctx.stats[w]->peer(p.index).queued_since_ns.get();
      if (since != 0 && since < now_ns) oldest = std::max(oldest, now_ns - since);
    }
    add(lag, static_cast<double>(oldest) / 1e9, {{"peer", p.id}});
  }
  out.push_back(std::move(lag));
  auto links = family("keyway_cluster_peer_links_up",
                      "Links up from this node's workers to another node (one per worker)", G);
  auto up = family("keyway_cluster_peer_up",
                   "1 when every worker of this node has its link to the other node up", G);
  for (const auto& p : st.peers) {
    add(links, static_cast<double>(p.links_up), {{"peer", p.id}});
    add(up, p.links_up == c.workers() ? 1 : 0, {{"peer", p.id}});
  }
  out.push_back(std::move(links));
  out.push_back(std::move(up));
  auto handoffs =
      family("keyway_cluster_handoffs_total",
             "Hand-offs of moved keys on ring changes, finished or given up", MetricType::Counter);
  add(handoffs, static_cast<double>(st.handoffs));
  out.push_back(std::move(handoffs));
  auto timeouts = family("keyway_cluster_handoff_timeouts_total",
                         "Hand-offs given up after the timeout (a node stopped answering): the "
                         "moved keys' order across that change is not guaranteed",
                         MetricType::Counter);
  add(timeouts, static_cast<double>(st.handoff_timeouts));
  out.push_back(std::move(timeouts));
  auto last = family("keyway_cluster_last_handoff_seconds",
                     "How long the last hand-off held the moved keys", G);
  add(last, st.last_handoff_seconds);
  out.push_back(std::move(last));
}

}  // namespace

std::vector<MetricFamily> metrics_collector::Collect() const {
  using core::worker_stats;
  const server& s = srv_;
  constexpr auto C = MetricType::Counter;
  constexpr auto G = MetricType::Gauge;
  std::vector<MetricFamily> out;

  auto build = family("keyway_build_info", "Build information; the value is always 1", G);
  add(build, 1, {{"version", KEYWAY_VERSION}});
  out.push_back(std::move(build));
  auto workers = family("keyway_workers", "Worker threads (one per core)", G);
  add(workers, static_cast<double>(s.context().workers));
  out.push_back(std::move(workers));
  auto ready = family("keyway_ready", "1 when /readyz answers 200", G);
  add(ready, s.ready() ? 1 : 0);
  out.push_back(std::move(ready));

  for (const probe_metric& m : probe::metrics()) out.push_back(from_probes(s, m));
  out.push_back(per_worker(s, "keyway_mesh_sent_messages_total",
                           "Messages a worker passed to other workers", C,
                           [](const worker_stats& w) { return w.mesh_sent.get(); }));
  out.push_back(per_worker(s, "keyway_mesh_received_messages_total",
                           "Messages a worker took from other workers", C,
                           [](const worker_stats& w) { return w.mesh_received.get(); }));
  out.push_back(per_worker(s, "keyway_credit_stalls_total",
                           "Sends refused because the destination worker had no credit", C,
                           [](const worker_stats& w) { return w.credit_stalls.get(); }));
  out.push_back(
      per_worker(s, "keyway_mesh_staged_messages",
                 "Messages a worker has staged for other workers that did not fit their ring yet",
                 G, [](const worker_stats& w) { return w.mesh_staged.get(); }));
  out.push_back(per_worker(s, "keyway_worker_loop_turns_total",
                           "Turns of the worker loop (the progress heartbeat)", C,
                           [](const worker_stats& w) { return w.loop_turns.get(); }));
  out.push_back(per_worker(s, "keyway_worker_sleeps_total",
                           "Times a worker went to sleep for lack of work", C,
                           [](const worker_stats& w) { return w.sleeps.get(); }));
  out.push_back(per_worker(s, "keyway_worker_wakeups_sent_total",
                           "Wake-ups a worker sent to sleeping peers", C,
                           [](const worker_stats& w) { return w.wakeups_sent.get(); }));
  out.push_back(per_worker(s, "keyway_handler_errors_total", "Exceptions caught from handlers", C,
                           [](const worker_stats& w) { return w.handler_errors.get(); }));
  auto stalled =
      family("keyway_worker_stalled", "1 while a worker makes no progress (see /readyz)", G);
  const auto stalled_ids = s.stalled_workers();
  for (std::size_t i = 0; i < s.context().workers; ++i)
    add(stalled, std::find(stalled_ids.begin(), stalled_ids.end(), i) != stalled_ids.end() ? 1 : 0,
        {{"worker", std::to_string(i)}});
  out.push_back(std::move(stalled));
  out.push_back(latency(s));
  if (const cluster_node* c = s.cluster()) cluster_metrics(s, *c, out);

  for (auto& f : process_metrics()) out.push_back(std::move(f));
  return out;
}

std::string metrics_collector::render() const {
  std::ostringstream os;
  prometheus::TextSerializer().Serialize(os, Collect());
  return os.str();
}

std::vector<MetricFamily> process_metrics() {
  std::vector<MetricFamily> out;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // Fields after the command name, which is in parentheses and may hold spaces.
  const auto close = stat.rfind(')');
  if (close != std::string::npos) {
    std::istringstream rest(stat.substr(close + 2));
    std::vector<std::string> f{"", "",
                               ""};  // fields 1..2 (pid, comm) are before `rest`; keep numbering
    std::string x;
    while (rest >> x) f.push_back(x);
    // Field numbers as in proc(5): 14 utime, 15 stime, 22 starttime, 23 vsize, 24 rss.
    auto num = [&](std::size_t n) { return n < f.size() ? std::stod(f[n]) : 0.0; };
    auto cpu = family("process_cpu_seconds_total",
                      "Total user and system CPU time spent in seconds.", MetricType::Counter);
    add(cpu, (num(14) + num(15)) / ticks);
    out.push_back(std::move(cpu));
    auto vsz =
        family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge);
    add(vsz, num(23));
    out.push_back(std::move(vsz));
    auto rss = family("process_resident_memory_bytes", "Resident memory size in bytes.",
                      MetricType::Gauge);
    add(rss, num(24) * page);
    out.push_back(std::move(rss));
    std::ifstream proc_stat("/proc/stat");
    std::string key;
    double btime = 0;
    while (proc_stat >> key)
      if (key == "btime") {
        proc_stat >> btime;
        break;
      }
    auto start =
        family("process_start_time_seconds",
               "Start time of the process since unix epoch in seconds.", MetricType::Gauge);
    add(start, btime + num(22) / ticks);
    out.push_back(std::move(start));
  }
  std::error_code ec;
  double fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++fds;
  auto open_fds = family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge);
  add(open_fds, fds);
  out.push_back(std::move(open_fds));
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    auto max_fds =
        family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge);
    add(max_fds, static_cast<double>(rl.rlim_cur));
    out.push_back(std::move(max_fds));
  }
  return out;
}

}  // namespace keyway::daemon
