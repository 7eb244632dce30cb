// keyway-bench: the end-to-end load generator. Keyway (through the proto
// codec directly), nats-server and redis-server (through their official
// clients, nats.c and hiredis, or the hand-written text-protocol adapters
// nats-raw and redis-raw) driven by the same generator code.
//
//   keyway-bench suite [--quick] [--raw] [--only ID[,ID...]] [--keywayd PATH] [--keywayd-arg
//   ARG]...
//       [--out DIR] [--command TEXT] [--revision TEXT]
//       every scenario (or those --only names) against servers it starts itself
//       (what `bench/run e2e` runs); --raw adds the nats-raw and redis-raw columns
//   keyway-bench capacity-suite [--quick] [--keywayd PATH] [--out DIR] [--command TEXT]
//       [--revision TEXT]
//       capacity mode and the generator side by side against servers it starts itself
//       (what `bench/run capacity` runs; see capacity_suite.hpp)
//   keyway-bench cluster-suite [--quick] [--only ID[,ID...]] [--keywayd PATH] [--keywayd-arg
//   ARG]...
//       [--out DIR] [--command TEXT] [--revision TEXT]
//       a 3-node Keyway cluster (with a real etcd) beside a 3-node NATS cluster, clients across
//       the nodes and on one node (what `bench/run cluster` runs; see cluster_suite.hpp)
//   keyway-bench capacity --system keyway|nats|redis --port P [--host H] [--subs 0|1]
//       [--size BYTES] [--keys K] [--per-frame F] [--batch N] [--window N] [--duration S]
//       [--pid SERVER_PID]
//       capacity mode against a running server: pre-built publishes in the system's own wire
//       format, written again and again on one connection (see capacity.hpp)
//   keyway-bench pubsub --system keyway|nats|redis|nats-raw|redis-raw --port P [--host H] [--pubs
//   N] [--subs M]
//       [--group] [--size BYTES] [--keys K] [--rate MSGS_PER_S] [--count N] [--duration S]
//       [--window N] [--write-bytes B] [--no-batch] one pub/sub scenario against a running server
//       (--no-batch: Keyway publishers send one publish frame per message, not publishBatch)
//   keyway-bench reqrep --system keyway|nats|nats-raw --port P [--host H] [--rate REQ_PER_S |
//   --closed-loop]
//       [--size BYTES] [--duration S]
//       one request/reply scenario against a running server
//   keyway-bench slowsub --system keyway|nats|redis|nats-raw|redis-raw --port P [--host H] [--rate
//   R] [--factor F]
//       [--size BYTES] [--keys K] [--duration S]
//       the slow_sub scenario against a running server: a subscriber reading at most R msgs/s
//       (default 100,000), a publisher offering F × R (default 2) for S s (default 10)
#include "bench/e2e/capacity.hpp"
#include "bench/e2e/capacity_suite.hpp"
#include "bench/e2e/cluster_suite.hpp"
#include "bench/e2e/generator.hpp"
#include "bench/e2e/slow_sub.hpp"
#include "bench/e2e/suite.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace e2e = keyway::bench::e2e;

namespace {

int usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s suite [--quick] [--raw] [--only ID[,ID...]] [--keywayd PATH] [--keywayd-arg "
      "ARG]...\n"
      "                [--out DIR] [--command TEXT] [--revision TEXT]\n"
      "       %s capacity-suite [--quick] [--keywayd PATH] [--out DIR] [--command TEXT] "
      "[--revision TEXT]\n"
      "       %s cluster-suite [--quick] [--only ID[,ID...]] [--keywayd PATH] [--keywayd-arg "
      "ARG]...\n"
      "                [--out DIR] [--command TEXT] [--revision TEXT]\n"
      "       %s capacity --system keyway|nats|redis --port P [--host H] [--subs 0|1] [--size "
      "BYTES]\n"
      "                 [--keys K] [--per-frame F] [--batch N] [--window N] [--duration S] [--pid "
      "SERVER_PID]\n"
      "       %s pubsub --system keyway|nats|redis|nats-raw|redis-raw --port P [--host H] [--pubs "
      "N] [--subs M] "
      "[--group]\n"
      "                 [--size BYTES] [--keys K] [--rate MSGS_PER_S] [--count N] [--duration S] "
      "[--window N]\n"
      "                 [--write-bytes B] [--no-batch]\n"
      "       %s reqrep --system keyway|nats|nats-raw --port P [--host H] [--rate REQ_PER_S | "
      "--closed-loop]\n"
      "                 [--size BYTES] [--duration S]\n"
      "       %s slowsub --system keyway|nats|redis|nats-raw|redis-raw --port P [--host H] [--rate "
      "R] [--factor F]\n"
      "                 [--size BYTES] [--keys K] [--duration S]\n",
      argv0, argv0, argv0, argv0, argv0, argv0, argv0);
  return 2;
}

void print(const e2e::run_result& r) {
  const auto& h = r.latency;
  std::printf(
      "sent %llu, received %llu of %llu expected; publishers %.0f msgs/s over %.3f s; "
      "subscribers %.0f msgs/s over %.3f s\n",
      static_cast<unsigned long long>(r.sent), static_cast<unsigned long long>(r.received),
      static_cast<unsigned long long>(r.expected), r.pub_rate, r.pub_seconds, r.sub_rate,
      r.sub_seconds);
  if (h.count() > 0)
    std::printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (%llu samples)\n",
                h.percentile(50) / 1e3, h.percentile(90) / 1e3, h.percentile(99) / 1e3,
                h.percentile(99.9) / 1e3, h.max() / 1e3,
                static_cast<unsigned long long>(h.count()));
  if (!r.error.empty()) std::printf("problem: %s\n", r.error.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(argv[0]);
  const std::string_view cmd = argv[1];
  std::vector<std::string_view> args(argv + 2, argv + argc);
  std::size_t i = 0;
  auto value = [&](std::string_view flag) -> std::string {
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "%.*s needs a value\n", static_cast<int>(flag.size()), flag.data());
      std::exit(2);
    }
    return std::string(args[++i]);
  };
  auto seconds = [](const std::string& s) {
    return std::chrono::duration_cast<e2e::nanoseconds>(
        std::chrono::duration<double>(std::stod(s)));
  };

  try {
    if (cmd == "suite" || cmd == "capacity-suite" || cmd == "cluster-suite") {
      e2e::suite_options o;
      if (cmd == "cluster-suite") o.command = "bench/run cluster";
      for (; i < args.size(); ++i) {
        const auto a = args[i];
        if (a == "--quick")
          o.quick = true;
        else if (a == "--raw")
          o.raw = true;
        else if (a == "--keywayd")
          o.keywayd = value(a);
        else if (a == "--keywayd-arg")
          o.keywayd_args.push_back(value(a));
        else if (a == "--only") {
          const std::string list = value(a);
          for (std::size_t at = 0; at <= list.size();) {
            const auto comma = std::min(list.find(',', at), list.size());
            if (comma > at) o.only.push_back(list.substr(at, comma - at));
            at = comma + 1;
          }
        } else if (a == "--out")
          o.out_dir = value(a);
        else if (a == "--command")
          o.command = value(a);
        else if (a == "--revision")
          o.keyway_revision = value(a);
        else
          return usage(argv[0]);
      }
      if (cmd == "cluster-suite") return e2e::run_cluster_suite(o);
      return cmd == "suite" ? e2e::run_suite(o) : e2e::run_capacity_suite(o);
    }

    e2e::endpoint ep;
    bool have_system = false;
    e2e::pubsub_options ps;
    e2e::reqrep_options rr;
    e2e::slow_sub_options ss;
    e2e::capacity_options cap;
    bool closed_loop = false;
    for (; i < args.size(); ++i) {
      const auto a = args[i];
      if (a == "--system") {
        const std::string s = value(a);
        have_system = true;
        if (s == "keyway")
          ep.kind = e2e::system_kind::keyway;
        else if (s == "nats")
          ep.kind = e2e::system_kind::nats;
        else if (s == "redis")
          ep.kind = e2e::system_kind::redis;
        else if (s == "nats-raw")
          ep.kind = e2e::system_kind::nats_raw;
        else if (s == "redis-raw")
          ep.kind = e2e::system_kind::redis_raw;
        else
          return usage(argv[0]);
      } else if (a == "--host")
        ep.host = value(a);
      else if (a == "--port")
        ep.port = std::stoi(value(a));
      else if (a == "--per-frame")
        cap.per_frame = std::stoul(value(a));
      else if (a == "--batch")
        cap.batch = std::stoul(value(a));
      else if (a == "--pid")
        cap.server_pid = std::stoi(value(a));
      else if (a == "--pubs")
        ps.publishers = std::stoi(value(a));
      else if (a == "--subs")
        ps.subscribers = std::stoi(value(a));
      else if (a == "--group")
        ps.queue_group = true;
      else if (a == "--size")
        ps.payload = rr.payload = ss.payload = std::stoul(value(a));
      else if (a == "--keys")
        ps.keys = ss.keys = std::stoi(value(a));
      else if (a == "--rate")
        ps.rate = rr.rate = ss.sub_rate = std::stod(value(a));
      else if (a == "--factor")
        ss.pub_factor = std::stod(value(a));
      else if (a == "--count")
        ps.count = std::stoull(value(a));
      else if (a == "--duration")
        ps.duration = rr.duration = ss.duration = seconds(value(a));
      else if (a == "--write-bytes")
        ps.write_bytes = std::stoull(value(a));
      else if (a == "--no-batch")
        ps.batch = false;
      else if (a == "--window")
        ps.window = std::stoull(value(a));
      else if (a == "--closed-loop")
        closed_loop = true;
      else
        return usage(argv[0]);
    }
    if (!have_system || ep.port <= 0 || ps.publishers < 1 || ps.subscribers < 0)
      return usage(argv[0]);
    if (cmd == "capacity") {
      cap.subscribers = std::min(ps.subscribers, 1);
      cap.payload = ps.payload;
      cap.keys = ps.keys;
      cap.window = ps.window;
      cap.duration = ps.duration;
      const auto r = e2e::run_capacity(ep, cap);
      std::printf("%s\n", e2e::describe(r).c_str());
      return r.error.empty() ? 0 : 1;
    }
    if (cmd == "pubsub") {
      const auto r = e2e::run_pubsub(ep, ps);
      print(r);
      return r.ok ? 0 : 1;
    }
    if (cmd == "slowsub") {
      const auto r = e2e::run_slow_sub(ep, ss);
      std::printf("%s\n", e2e::describe(ss).c_str());
      e2e::print_slow_sub("slow_sub", ep.kind, r);
      std::printf("%s\n", e2e::slow_sub_row("slow_sub", ep.kind, r).note.c_str());
      return r.error.empty() ? 0 : 1;
    }
    if (cmd == "reqrep") {
      rr.mode = closed_loop ? e2e::reqrep_mode::closed_loop : e2e::reqrep_mode::fixed_rate;
      const auto r = e2e::run_reqrep(ep, rr);
      print(r);
      return r.ok ? 0 : 1;
    }
    return usage(argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keyway-bench: %s\n", e.what());
    return 1;
  }
}
