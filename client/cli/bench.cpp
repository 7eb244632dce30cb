#include "client/cli/bench.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "client/cli/format.hpp"

namespace keyway::cli {
namespace {

using client::connection;
using clock = std::chrono::steady_clock;

constexpr std::uint64_t ack_window = 1024;  // acks in flight per publisher
constexpr std::string_view queue_group = "bench";

double secs_between(clock::time_point a, clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

/// Keeps the first few errors of every client, for the report.
class error_log {
 public:
  void add(std::string e) {
    std::lock_guard lock(mu_);
    if (errors_.size() < 20) errors_.push_back(std::move(e));
  }
  std::vector<std::string> all() const {
    std::lock_guard lock(mu_);
    return errors_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> errors_;
};

/// One publisher or requester: its connection, its share of the messages and
/// what it measured. Its thread writes the results; the main thread reads
/// them after join().
struct sender {
  std::unique_ptr<connection> conn;
  std::uint64_t first = 0;  // global index of its first message
  std::uint64_t count = 0;  // its share
  std::uint64_t sent = 0;   // publishes queued / requests answered
  std::uint64_t reply_bytes = 0;
  clock::time_point end;
  std::vector<std::int64_t> latency_ns;  // acks or round trips

  // --ack: the pipeline, completed on the IO thread.
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t in_flight = 0, acked = 0, failed = 0;
};

/// One subscriber or responder. Its handler runs on its IO thread.
struct receiver {
  std::unique_ptr<connection> conn;
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::int64_t> last_ns{0};  // clock::time_point of the last message, since epoch
  std::atomic<bool> closing{false};      // bench is closing it
  std::atomic<bool> lost{false};         // closed under bench's feet
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch())
      .count();
}

struct rate {
  std::uint64_t msgs = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  double msgs_per_sec() const { return seconds > 0 ? static_cast<double>(msgs) / seconds : 0.0; }
  double mb_per_sec() const {
    return seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0.0;
  }
};

struct latency_summary {
  std::size_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0, mean = 0;  // microseconds
};

/// Nearest-rank percentiles of `ns` (sorted here).
latency_summary summarize(std::vector<std::int64_t>& ns) {
  latency_summary s;
  s.count = ns.size();
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  const auto at = [&](double p) {
    auto rank = static_cast<std::size_t>(p * static_cast<double>(ns.size()) + 0.999999);
    rank = std::clamp<std::size_t>(rank, 1, ns.size());
    return static_cast<double>(ns[rank - 1]) / 1000.0;
  };
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  s.max = static_cast<double>(ns.back()) / 1000.0;
  double sum = 0;
  for (const std::int64_t v : ns) sum += static_cast<double>(v);
  s.mean = sum / static_cast<double>(ns.size()) / 1000.0;
  return s;
}

std::string rate_json(const rate& r, std::optional<std::uint64_t> expected = std::nullopt) {
  json_object j;
  j.num("msgs", r.msgs);
  if (expected) j.num("expected", *expected);
  j.num("bytes", r.bytes)
      .real("seconds", r.seconds, 6)
      .real("msgs_per_sec", r.msgs_per_sec(), 1)
      .real("mb_per_sec", r.mb_per_sec(), 3);
  return j.done();
}

/// One line of the text report. `unit`: "msgs", or "reqs" in request mode.
void print_rate(const std::string& role, const rate& r, std::optional<std::uint64_t> expected,
                const char* unit) {
  const std::string n =
      expected ? std::to_string(r.msgs) + "/" + std::to_string(*expected) : std::to_string(r.msgs);
  std::printf("%-10s %15s %s in %8.4f s  %12.0f %s/s  %9.2f MB/s\n", role.c_str(), n.c_str(), unit,
              r.seconds, r.msgs_per_sec(), unit, r.mb_per_sec());
}

std::string plural(std::uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

int run_bench(const global_options& g, const bench_options& o) {
  const bool mode_pub = o.mode == "pub", mode_sub = o.mode == "sub", mode_queue = o.mode == "queue",
             mode_request = o.mode == "request";
  if (!mode_pub && !mode_sub && !mode_queue && !mode_request) {
    say("bench: unknown mode '" + o.mode + "'; modes: pub, sub, queue, request");
    return exit_usage;
  }
  if (mode_pub && o.subscribers_given) {
    say("bench: --sub: pub mode has no subscribers; use sub, queue or request mode");
    return exit_usage;
  }
  if (mode_request && o.ack) {
    say("bench: --ack: request mode measures round trips already; use --ack with pub, sub or "
        "queue");
    return exit_usage;
  }
  if (o.publishers > bench_max_clients || o.subscribers > bench_max_clients) {
    say("bench: --pub and --sub must be at most " + std::to_string(bench_max_clients));
    return exit_usage;
  }
  const std::uint64_t n_recv = mode_pub ? 0 : o.subscribers;
  const std::string subject =
      o.subject.empty() ? "bench." + std::to_string(static_cast<long>(::getpid())) : o.subject;
  std::string payload(o.size, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>('a' + static_cast<int>(i % 26));
  std::vector<std::string> keys;
  for (std::uint64_t k = 0; k < o.key_space; ++k) {
    std::string& key = keys.emplace_back(1, 'k');
    key += std::to_string(k);
  }

  error_log errors;
  auto options_for = [&](const std::string& name) {
    auto opts = base_options(g);
    opts.client_name = g.client_name + "-bench-" + name;
    opts.reconnect.enabled = false;
    opts.on_error = [&errors, name](const client::error& e) {
      errors.add(name + ": " + describe(e));
    };
    return opts;
  };

  // ---- receivers first: everything published must find them subscribed --------
  std::vector<std::unique_ptr<receiver>> receivers;
  for (std::uint64_t i = 0; i < n_recv; ++i) {
    auto r = std::make_unique<receiver>();
    receiver* rp = r.get();
    const std::string name = (mode_request ? "rep" : "sub") + std::to_string(i + 1);
    auto opts = options_for(name);
    opts.on_closed = [rp, &errors, name](const client::error& e) {
      if (rp->closing.load()) return;
      rp->lost.store(true);
      errors.add(name + ": " + describe(e));
    };
    auto c = client::connect(g.server, std::move(opts));
    if (!c) {
      say("bench: " + describe(c.error()));
      return exit_error;
    }
    r->conn = std::move(*c);
    connection::message_handler handler;
    if (mode_request) {
      handler = [rp, &errors, name](const client::message& m) {
        if (auto ok = rp->conn->respond(m, m.payload); !ok) {
          errors.add(name + ": reply failed: " + describe(ok.error()));
          return;
        }
        rp->bytes.fetch_add(m.payload.size(), std::memory_order_relaxed);
        rp->last_ns.store(now_ns(), std::memory_order_relaxed);
        rp->received.fetch_add(1, std::memory_order_relaxed);
      };
    } else {
      handler = [rp](const client::message& m) {
        rp->bytes.fetch_add(m.payload.size(), std::memory_order_relaxed);
        rp->last_ns.store(now_ns(), std::memory_order_relaxed);
        rp->received.fetch_add(1, std::memory_order_relaxed);
      };
    }
    client::subscribe_options so;
    if (mode_queue || mode_request) so.queue_group = queue_group;
    if (auto s = r->conn->subscribe(subject, std::move(handler), so); !s) {
      say("bench: cannot subscribe to " + subject + ": " + describe(s.error()));
      return exit_error;
    }
    receivers.push_back(std::move(r));
  }

  // ---- senders -----------------------------------------------------------------
  std::vector<std::unique_ptr<sender>> senders;
  std::uint64_t next = 0;
  for (std::uint64_t i = 0; i < o.publishers; ++i) {
    auto s = std::make_unique<sender>();
    s->first = next;
    s->count = o.msgs / o.publishers + (i < o.msgs % o.publishers ? 1 : 0);
    next += s->count;
    auto c = client::connect(g.server,
                             options_for((mode_request ? "req" : "pub") + std::to_string(i + 1)));
    if (!c) {
      say("bench: " + describe(c.error()));
      return exit_error;
    }
    s->conn = std::move(*c);
    senders.push_back(std::move(s));
  }
  const std::string server = senders.empty() ? g.server : senders.front()->conn->info().url;

  auto key_of = [&](std::uint64_t index) -> std::string_view {
    return keys.empty() ? std::string_view{} : std::string_view(keys[index % keys.size()]);
  };

  auto run_sender = [&](sender& s, std::size_t number) {
    const std::string name = (mode_request ? "req" : "pub") + std::to_string(number);
    s.latency_ns.reserve(mode_request || o.ack ? s.count : 0);
    if (mode_request) {
      for (std::uint64_t j = 0; j < s.count; ++j) {
        client::request_options ro;
        ro.key = key_of(s.first + j);
        const auto t = clock::now();
        auto r = s.conn->request(subject, payload, o.timeout, ro);
        if (!r) {
          errors.add(name + ": request " + std::to_string(j + 1) +
                     " failed: " + describe(r.error()));
          break;
        }
        s.latency_ns.push_back(
            std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t).count());
        s.reply_bytes += r->payload.size();
        ++s.sent;
      }
    } else if (o.ack) {
      std::vector<std::int64_t> sent_at(s.count, 0), lat(s.count, -1);
      for (std::uint64_t j = 0; j < s.count; ++j) {
        {
          std::unique_lock lock(s.mu);
          s.cv.wait(lock, [&] { return s.in_flight < ack_window; });
          ++s.in_flight;
        }
        client::publish_options po;
        po.key = key_of(s.first + j);
        sent_at[j] = now_ns();
        s.conn->publish_ack_async(
            subject, payload, po,
            [&s, &sent_at, &lat, &errors, &name, j](client::outcome<std::uint32_t> r) {
              const std::int64_t t = now_ns();
              std::lock_guard lock(s.mu);
              --s.in_flight;
              if (r) {
                lat[j] = t - sent_at[j];
                ++s.acked;
              } else if (++s.failed <= 3) {
                errors.add(name + ": publish failed: " + describe(r.error()));
              }
              s.cv.notify_all();
            });
        ++s.sent;
        std::lock_guard lock(s.mu);
        if (s.failed > 0) break;  // stop at the first failure, as without --ack
      }
      std::unique_lock lock(s.mu);
      s.cv.wait(lock, [&] { return s.in_flight == 0; });  // each by op_timeout at the latest
      for (const std::int64_t v : lat)
        if (v >= 0) s.latency_ns.push_back(v);
      s.sent = s.acked;
    } else {
      bool failed = false;
      for (std::uint64_t j = 0; j < s.count; ++j) {
        client::publish_options po;
        po.key = key_of(s.first + j);
        if (auto r = s.conn->publish(subject, payload, po); !r) {
          errors.add(name + ": publish failed: " + describe(r.error()));
          failed = true;
          break;
        }
        ++s.sent;
      }
      if (!failed) {
        if (auto r = s.conn->flush(); !r)
          errors.add(name + ": flush failed: " + describe(r.error()));
      }
    }
    s.end = clock::now();
  };

  // ---- go ------------------------------------------------------------------------
  std::latch go(1);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < senders.size(); ++i) {
    threads.emplace_back([&, i] {
      go.wait();
      run_sender(*senders[i], i + 1);
    });
  }
  const auto t0 = clock::now();
  go.count_down();
  for (auto& t : threads) t.join();

  std::uint64_t total_sent = 0;
  for (const auto& s : senders) total_sent += s->sent;

  // Subscribers: wait (bounded) until each got what was sent.
  const bool fan_out = mode_sub;  // every subscriber gets every message
  auto received_enough = [&] {
    std::uint64_t sum = 0;
    bool all = true;
    for (const auto& r : receivers) {
      const std::uint64_t n = r->received.load(std::memory_order_relaxed);
      sum += n;
      if (fan_out && n < total_sent && !r->lost.load()) all = false;
    }
    if (mode_queue) {
      bool any_alive = false;
      for (const auto& r : receivers) any_alive = any_alive || !r->lost.load();
      return sum >= total_sent || !any_alive;
    }
    return all;
  };
  if (mode_sub || mode_queue) {
    const auto deadline = clock::now() + o.timeout;
    while (!received_enough() && clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& r : receivers) r->closing.store(true);
  for (auto& r : receivers) r->conn->close();
  for (auto& s : senders) s->conn->close();

  // ---- results -------------------------------------------------------------------
  const auto t0_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count();
  std::vector<rate> send_rates;
  rate send_all;
  clock::time_point last_end = t0;
  std::vector<std::int64_t> latencies;
  for (const auto& s : senders) {
    rate r;
    r.msgs = s->sent;
    r.bytes = s->sent * o.size;
    r.seconds = secs_between(t0, s->end);
    send_rates.push_back(r);
    send_all.msgs += r.msgs;
    send_all.bytes += r.bytes;
    last_end = std::max(last_end, s->end);
    latencies.insert(latencies.end(), s->latency_ns.begin(), s->latency_ns.end());
  }
  send_all.seconds = secs_between(t0, last_end);

  std::vector<rate> recv_rates;
  rate recv_all;
  std::int64_t last_recv = t0_ns;
  for (const auto& r : receivers) {
    rate x;
    x.msgs = r->received.load();
    x.bytes = r->bytes.load();
    const std::int64_t last = r->last_ns.load();
    x.seconds = x.msgs > 0 ? static_cast<double>(last - t0_ns) / 1e9 : 0.0;
    recv_rates.push_back(x);
    recv_all.msgs += x.msgs;
    recv_all.bytes += x.bytes;
    if (x.msgs > 0) last_recv = std::max(last_recv, last);
  }
  recv_all.seconds = static_cast<double>(last_recv - t0_ns) / 1e9;

  // Expected: per subscriber (sub), over the group (queue), or the requests.
  std::optional<std::uint64_t> expected_each, expected_all;
  if (mode_sub) {
    expected_each = total_sent;
    expected_all = total_sent * receivers.size();
  } else if (mode_queue) {
    expected_all = total_sent;
  } else if (mode_request) {
    expected_all = total_sent;  // requests answered: every reply that came back
  }
  std::uint64_t shortfall = o.msgs - std::min(o.msgs, total_sent);  // not sent at all
  std::vector<std::string> shortfalls;
  if (o.msgs > total_sent)
    shortfalls.push_back(
        std::to_string(o.msgs - total_sent) + " of " + std::to_string(o.msgs) +
        (mode_request ? " requests were not answered" : " messages were not sent"));
  if (mode_sub) {
    for (std::size_t i = 0; i < recv_rates.size(); ++i) {
      if (recv_rates[i].msgs >= total_sent) continue;
      shortfall += total_sent - recv_rates[i].msgs;
      shortfalls.push_back(
          "subscriber " + std::to_string(i + 1) + " received " +
          std::to_string(recv_rates[i].msgs) + " of " + std::to_string(total_sent) + " messages " +
          (receivers[i]->lost.load() ? std::string("before its connection closed")
                                     : "within --timeout " + format_duration(o.timeout)));
    }
  } else if (mode_queue && recv_all.msgs < total_sent) {
    shortfall += total_sent - recv_all.msgs;
    shortfalls.push_back("the queue group received " + std::to_string(recv_all.msgs) + " of " +
                         std::to_string(total_sent) + " messages within --timeout " +
                         format_duration(o.timeout));
  }
  const latency_summary lat = summarize(latencies);
  const bool has_latency = mode_request || o.ack;
  const std::vector<std::string> errs = errors.all();
  const bool ok = errs.empty() && shortfall == 0;

  const char* send_role = mode_request ? "req" : "pub";
  const char* recv_role = mode_request ? "rep" : "sub";
  const char* unit = mode_request ? "reqs" : "msgs";
  if (o.json) {
    json_object j;
    j.str("mode", o.mode)
        .str("server", server)
        .str("subject", subject)
        .num("msgs", o.msgs)
        .num("size", o.size)
        .num("key_space", o.key_space)
        .boolean("ack", o.ack);
    auto role_json = [&](const std::vector<rate>& members, const rate& all,
                         std::optional<std::uint64_t> each, std::optional<std::uint64_t> total) {
      std::string arr = "[";
      for (std::size_t i = 0; i < members.size(); ++i) {
        if (i > 0) arr.push_back(',');
        arr += rate_json(members[i], each);
      }
      arr.push_back(']');
      std::string obj = rate_json(all, total);
      obj.pop_back();
      obj += ",\"clients\":" + std::to_string(members.size()) + ",\"members\":" + arr + "}";
      return obj;
    };
    j.raw("pub", role_json(send_rates, send_all, std::nullopt, std::nullopt));
    if (!mode_pub) j.raw("sub", role_json(recv_rates, recv_all, expected_each, expected_all));
    if (has_latency) {
      j.raw("latency_us", json_object()
                              .num("count", static_cast<std::uint64_t>(lat.count))
                              .real("p50", lat.p50, 1)
                              .real("p90", lat.p90, 1)
                              .real("p99", lat.p99, 1)
                              .real("max", lat.max, 1)
                              .real("mean", lat.mean, 1)
                              .done());
    }
    std::string err_arr = "[";
    for (std::size_t i = 0; i < errs.size(); ++i) {
      if (i > 0) err_arr.push_back(',');
      append_json_string(err_arr, errs[i]);
    }
    err_arr.push_back(']');
    j.num("shortfall", shortfall).raw("errors", err_arr).boolean("ok", ok);
    const std::string line = j.done();
    std::printf("%s\n", line.c_str());
  } else {
    std::printf("keyway bench %s: %s of %s to %s (%s) on %s; %s", o.mode.c_str(),
                plural(o.msgs, mode_request ? "request" : "msg", mode_request ? "requests" : "msgs")
                    .c_str(),
                plural(o.size, "byte", "bytes").c_str(), subject.c_str(),
                o.key_space == 0 ? "no keys" : plural(o.key_space, "key", "keys").c_str(),
                server.c_str(),
                plural(o.publishers, mode_request ? "requester" : "publisher",
                       mode_request ? "requesters" : "publishers")
                    .c_str());
    if (!mode_pub)
      std::printf(", %s%s",
                  plural(n_recv, mode_request ? "responder" : "subscriber",
                         mode_request ? "responders" : "subscribers")
                      .c_str(),
                  mode_queue ? " in a queue group" : "");
    std::printf("%s\n", o.ack ? ", acknowledged publishes" : "");
    if (send_rates.size() > 1)
      for (std::size_t i = 0; i < send_rates.size(); ++i)
        print_rate(std::string(send_role) + " #" + std::to_string(i + 1), send_rates[i],
                   std::nullopt, unit);
    print_rate(std::string(send_role) + (send_rates.size() > 1 ? " all" : ""), send_all,
               std::nullopt, unit);
    if (!mode_pub) {
      if (recv_rates.size() > 1)
        for (std::size_t i = 0; i < recv_rates.size(); ++i)
          print_rate(std::string(recv_role) + " #" + std::to_string(i + 1), recv_rates[i],
                     expected_each, unit);
      print_rate(std::string(recv_role) + (recv_rates.size() > 1 ? " all" : ""), recv_all,
                 expected_all, unit);
    }
    if (has_latency)
      std::printf("%-10s p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us (%zu %s)\n", "latency",
                  lat.p50, lat.p90, lat.p99, lat.max, lat.count,
                  mode_request ? "round trips" : "acks");
  }
  std::fflush(stdout);
  for (const std::string& s : shortfalls) say("bench: shortfall: " + s);
  for (const std::string& e : errs) say("bench: " + e);
  return ok ? exit_ok : exit_error;
}

}  // namespace keyway::cli
