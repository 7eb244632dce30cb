#include "bench/e2e/slow_sub.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

constexpr auto setup_timeout = 10s;
constexpr auto drain_extra = 5s;        // beyond `duration`, for the subscriber's backlog
constexpr auto sentinel_every = 250ms;  // a new round of sentinels while none got through
// The subscriber's pace it may catch up on after falling behind (a late
// wake-up on a busy machine); beyond that, lost time stays lost.
constexpr auto burst = 20ms;
constexpr std::uint64_t max_batch = 256;   // publishes queued before one write
constexpr std::size_t out_high = 1 << 20;  // queued bytes before the publisher waits for the socket
constexpr std::uint64_t sentinel_bit = std::uint64_t{1} << 63;
constexpr int max_keys = 64;

double seconds(nanoseconds d) {
  return std::chrono::duration<double>(d).count();
}
nanoseconds from_seconds(double s) {
  return std::chrono::duration_cast<nanoseconds>(std::chrono::duration<double>(s));
}

// Payloads (stamp(), conn.hpp): the scheduled send time, then the sequence
// number (its key is sequence % keys), or sentinel_bit | key.

/// The subscriber's side: counts data deliveries, checks each key's order,
/// and notes which keys' sentinels arrived. The subscriber's thread only.
class slow_sink final : public delivery_sink {
 public:
  slow_sink(std::size_t payload, int keys)
      : size_(payload), keys_(static_cast<std::uint64_t>(keys)), last_(keys_, 0) {}

  void on_delivery(std::span<const std::byte> payload, std::string_view,
                   std::uint64_t now) override {
    ++messages;
    if (payload.size() != size_ || payload.size() < 16) {
      ++bad;
      return;
    }
    std::uint64_t ts = 0, tag = 0;
    std::memcpy(&ts, payload.data(), 8);
    std::memcpy(&tag, payload.data() + 8, 8);
    if ((tag & sentinel_bit) != 0) {
      const std::uint64_t key = tag & ~sentinel_bit;
      if (key < keys_)
        sentinels_ |= std::uint64_t{1} << key;
      else
        ++bad;
      return;
    }
    ++received;
    last_rx = now;
    delay.record(now > ts ? now - ts : 0);
    std::uint64_t& last = last_[tag % keys_];
    if (last >= tag + 1) ++out_of_order;
    last = tag + 1;
  }

  bool every_sentinel() const noexcept {
    return sentinels_ == (keys_ == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << keys_) - 1);
  }

  std::uint64_t messages = 0;  // every delivery, sentinels too: what the pace counts
  std::uint64_t received = 0;  // data deliveries
  std::uint64_t bad = 0;
  std::uint64_t out_of_order = 0;
  std::uint64_t last_rx = 0;
  histogram delay;

 private:
  std::size_t size_;
  std::uint64_t keys_;
  std::vector<std::uint64_t> last_;  // per key: last sequence + 1
  std::uint64_t sentinels_ = 0;      // bit k: key k's sentinel arrived
};

struct sub_side {
  bool barrier = false;
  bool disconnected = false;
  double disconnected_at = -1;
  std::string reason;
  std::string error;
};

/// Whether a conn's failure is the server closing it (rather than a fault
/// of this program, such as a parse error).
bool closed_by_server(const std::string& failure) {
  return failure.starts_with("the server closed") || failure.starts_with("recv: ") ||
         failure.starts_with("send: ") || failure.starts_with("fatal error from keywayd");
}

/// Reads at most opt.sub_rate messages per second (a token bucket with
/// `burst` of slack) until every key's sentinel arrived, the server closed
/// the connection, or `hard_end`.
void subscribe_slowly(conn& c, const slow_sub_options& opt, slow_sink& sink, clock::time_point t0,
                      clock::time_point hard_end, sub_side& out) {
  c.set_sink(&sink);
  c.set_read_limit(opt.read_chunk);
  clock::time_point paid_until = t0;  // reads so far, at 1 / sub_rate each, are paid up to here
  std::this_thread::sleep_until(t0);
  for (;;) {
    const auto now = clock::now();
    if (c.failed()) {
      const bool server = closed_by_server(c.failure());
      out.disconnected = server;
      out.disconnected_at = seconds(now - t0);
      out.reason = c.failure();
      if (!server) out.error = "subscriber: " + c.failure();
      return;
    }
    if (sink.every_sentinel()) {
      out.barrier = true;
      return;
    }
    if (now >= hard_end) {
      out.error = "the subscriber had not seen every key's sentinel " +
                  std::to_string(std::lround(seconds(hard_end - t0))) + " s after the start";
      return;
    }
    if (paid_until > now) {
      std::this_thread::sleep_until(paid_until);
      continue;
    }
    paid_until = std::max(paid_until, now - burst);
    const std::uint64_t before = sink.messages;
    const std::size_t n = c.read_some();
    paid_until += from_seconds(static_cast<double>(sink.messages - before) / opt.sub_rate);
    if (n == 0) {
      c.write_some();  // PONGs to the server's PINGs
      c.wait(1ms);
    }
  }
}

struct pub_side {
  std::uint64_t published = 0;
  std::uint64_t at_half = 0;  // queued by the middle of the offered period
  clock::time_point half_time{};
  bool confirmed = false;
  clock::time_point done{};
  std::string error;
};

/// Publishes at opt.pub_factor × opt.sub_rate until t0 + duration, confirms
/// with a flush and a round trip, then sends sentinel rounds until the
/// subscriber is done.
void publish(conn& c, const slow_sub_options& opt, clock::time_point t0, clock::time_point hard_end,
             const std::atomic<bool>& sub_done, pub_side& out) {
  std::vector<std::byte> payload(opt.payload, std::byte{'x'});
  std::vector<std::string> keys;
  for (int k = 0; k < opt.keys; ++k) {
    std::string key("k");
    key += std::to_string(k);
    keys.push_back(std::move(key));
  }
  auto key_of = [&](std::uint64_t i) {
    const std::string& k = keys[i % keys.size()];
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(k.data()), k.size());
  };
  const double rate = opt.sub_rate * opt.pub_factor;
  const auto end = t0 + opt.duration;
  const auto half = t0 + opt.duration / 2;
  std::uint64_t seq = 0;
  std::this_thread::sleep_until(t0);
  while (!c.failed()) {
    const auto now = clock::now();
    if (now >= end) break;
    if (out.half_time == clock::time_point{} && now >= half) {
      out.at_half = seq;
      out.half_time = now;
    }
    const auto due = static_cast<std::uint64_t>(seconds(now - t0) * rate) + 1;
    if (due <= seq) {
      c.write_some();
      c.read_some();  // Redis answers every PUBLISH
      c.wait(std::min<nanoseconds>(t0 + from_seconds(static_cast<double>(seq) / rate) - now, 1ms));
      continue;
    }
    const std::uint64_t n = std::min(due - seq, max_batch);
    for (std::uint64_t i = 0; i < n; ++i, ++seq) {
      stamp(payload, to_ns(t0) + static_cast<std::uint64_t>(static_cast<double>(seq) * 1e9 / rate),
            seq);
      c.queue_publish(opt.subject, key_of(seq), payload, {});
    }
    c.end_publishes();
    c.write_some();
    // A server that pushes back stops reading this connection: the bytes
    // stay queued here, and the publisher waits for the socket.
    while (c.out_size() > out_high && !c.failed() && clock::now() < hard_end) {
      c.read_some();
      c.wait(1ms);
      c.write_some();
    }
    c.read_some();
  }
  out.published = seq;
  try {
    if (!c.flush(hard_end))
      throw bench_error(c.failed() ? c.failure() : "the last publishes were not written in time");
    c.sync(hard_end);
    out.confirmed = true;
  } catch (const bench_error& e) {
    out.error = std::string("publisher: ") + e.what();
  }
  out.done = clock::now();
  while (out.confirmed && !sub_done.load(std::memory_order_acquire) && !c.failed() &&
         clock::now() < hard_end) {
    const std::uint64_t ts = now_ns();
    for (std::size_t k = 0; k < keys.size(); ++k) {
      stamp(payload, ts, sentinel_bit | k);
      c.queue_publish(opt.subject, key_of(k), payload, {});
    }
    c.end_publishes();
    const auto next = clock::now() + sentinel_every;
    while (clock::now() < next && !sub_done.load(std::memory_order_acquire) && !c.failed()) {
      c.write_some();
      c.read_some();
      c.wait(5ms);
    }
  }
  if (c.failed() && out.error.empty()) out.error = "publisher: " + c.failure();
}

/// `t` as local wall-clock time, HH:MM:SS.mmm (as spdlog stamps keywayd's log).
std::string wall_clock(clock::time_point t) {
  const auto wall =
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(t - clock::now());
  const std::time_t secs = std::chrono::system_clock::to_time_t(wall);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::localtime_r(&secs, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms));
  return buf;
}

}  // namespace

slow_sub_result run_slow_sub(const endpoint& ep, const slow_sub_options& opt) {
  slow_sub_result res;
  if (opt.payload < 16 || opt.keys < 1 || opt.keys > max_keys || opt.sub_rate <= 0 ||
      opt.pub_factor <= 0 || opt.read_chunk == 0) {
    res.error = "bad options: payload >= 16 B, 1..64 keys, positive rates and read size";
    return res;
  }
  const int keys = ep.kind == system_kind::keyway ? opt.keys : 1;
  slow_sub_options o = opt;
  o.keys = keys;
  std::unique_ptr<conn> sub, pub;
  try {
    const auto deadline = clock::now() + setup_timeout;
    sub = make_conn(ep.kind, ep.host, ep.port, "bench-slow-sub", deadline);
    sub->subscribe(o.subject, "", deadline);
    pub = make_conn(ep.kind, ep.host, ep.port, "bench-slow-pub", deadline);
    pub->set_batching(true);
  } catch (const bench_error& e) {
    res.error = std::string("setup: ") + e.what();
    return res;
  }

  slow_sink sink(o.payload, keys);
  sub_side s;
  pub_side p;
  std::atomic<bool> sub_done{false};
  const auto t0 = clock::now() + 50ms;
  res.started_at = wall_clock(t0);
  const auto sub_end = t0 + 2 * o.duration + drain_extra;
  const auto pub_end = sub_end + 1s;
  std::thread sub_thread([&] {
    try {
      subscribe_slowly(*sub, o, sink, t0, sub_end, s);
    } catch (const std::exception& e) {
      s.error = std::string("subscriber: ") + e.what();
    }
    sub_done.store(true, std::memory_order_release);
  });
  try {
    publish(*pub, o, t0, pub_end, sub_done, p);
  } catch (const std::exception& e) {
    p.error = std::string("publisher: ") + e.what();
  }
  sub_thread.join();

  res.published = p.published;
  res.confirmed = p.confirmed;
  res.received = sink.received;
  res.barrier = s.barrier;
  res.disconnected = s.disconnected;
  res.disconnected_at = s.disconnected_at;
  res.disconnect_reason = s.disconnected ? s.reason : std::string();
  if (res.confirmed && (res.barrier || res.disconnected) && res.received <= res.published)
    res.lost = res.published - res.received;
  res.pub_seconds = seconds((p.done == clock::time_point{} ? clock::now() : p.done) - t0);
  res.sub_seconds =
      sink.last_rx > to_ns(t0) ? static_cast<double>(sink.last_rx - to_ns(t0)) / 1e9 : 0;
  res.pub_rate = res.pub_seconds > 0 ? static_cast<double>(res.published) / res.pub_seconds : 0;
  res.sub_rate = res.sub_seconds > 0 ? static_cast<double>(res.received) / res.sub_seconds : 0;
  if (p.half_time != clock::time_point{} && p.done > p.half_time)
    res.pub_rate_second_half =
        static_cast<double>(res.published - p.at_half) / seconds(p.done - p.half_time);
  res.delay = sink.delay;
  res.out_of_order = sink.out_of_order;
  res.bad = sink.bad;
  res.server_errors = pub->server_errors() + sub->server_errors();
  res.last_server_error =
      sub->server_errors() > 0 ? sub->last_server_error() : pub->last_server_error();

  std::vector<std::string> errors{p.error, s.error};
  if (res.received > res.published)
    errors.push_back("received " + std::to_string(res.received - res.published) +
                     " more than were published");
  if (res.bad > 0)
    errors.push_back(std::to_string(res.bad) + " deliveries had the wrong size or tag");
  if (res.out_of_order > 0)
    errors.push_back(std::to_string(res.out_of_order) + " deliveries out of order for their key");
  for (const auto& e : errors) {
    if (e.empty()) continue;
    if (!res.error.empty()) res.error += "; ";
    res.error += e;
  }
  return res;
}

void print_slow_sub(const std::string& id, system_kind kind, const slow_sub_result& r) {
  char lost[32] = "?";
  if (r.lost) std::snprintf(lost, sizeof lost, "%llu", static_cast<unsigned long long>(*r.lost));
  std::fprintf(
      stderr,
      "  %-24s %-7s published %9llu  received %9llu  lost %9s  %s  pub %9.0f/s (2nd half "
      "%9.0f/s)  sub %9.0f/s  pub/sub %.2f  delay max %.0f ms%s%s\n",
      id.c_str(), std::string(to_string(kind)).c_str(),
      static_cast<unsigned long long>(r.published), static_cast<unsigned long long>(r.received),
      lost, r.disconnected ? "DISCONNECTED" : (r.barrier ? "barrier ok  " : "no barrier  "),
      r.pub_rate, r.pub_rate_second_half, r.sub_rate,
      r.sub_rate > 0 ? r.pub_rate / r.sub_rate : 0.0, static_cast<double>(r.delay.max()) / 1e6,
      r.error.empty() ? "" : "  ! ", r.error.c_str());
  if (r.disconnected)
    std::fprintf(stderr, "  %-24s %-7s subscriber closed by the server (read at %.2f s): %s\n",
                 id.c_str(), std::string(to_string(kind)).c_str(), r.disconnected_at,
                 r.disconnect_reason.c_str());
}

result_row slow_sub_row(const std::string& id, system_kind kind, const slow_sub_result& r) {
  result_row row;
  row.scenario = id;
  row.system = std::string(to_string(kind));
  row.published = static_cast<double>(r.published);
  row.received = static_cast<double>(r.received);
  if (r.lost) row.lost = static_cast<double>(*r.lost);
  row.disconnected = r.disconnected;
  if (r.pub_seconds > 0) row.pub_msgs_per_sec = r.pub_rate;
  if (r.sub_seconds > 0) row.sub_msgs_per_sec = r.sub_rate;
  if (r.pub_rate_second_half > 0) row.pub_msgs_per_sec_second_half = r.pub_rate_second_half;
  std::string note;
  auto add = [&](const std::string& s) {
    if (s.empty()) return;
    if (!note.empty()) note += "; ";
    note += s;
  };
  char buf[256];
  if (r.disconnected) {
    std::snprintf(buf, sizeof buf,
                  "the server closed the subscriber (the close read at %.2f s, after the data "
                  "the server had already written): ",
                  r.disconnected_at);
    add(buf + r.disconnect_reason);
  } else if (r.barrier) {
    add("every key's sentinel arrived after the data");
  } else {
    add("no barrier: lost is not proven");
  }
  if (!r.confirmed) add("the publisher's last publishes were not confirmed");
  if (r.delay.count() > 0) {
    std::snprintf(
        buf, sizeof buf,
        "delay from the scheduled send time (so including any time the publisher was held "
        "back) to the read: p50 %.1f ms, max %.1f ms; run %.1f s (publisher) / %.1f s "
        "(last delivery)",
        static_cast<double>(r.delay.percentile(50)) / 1e6, static_cast<double>(r.delay.max()) / 1e6,
        r.pub_seconds, r.sub_seconds);
    add(buf);
  }
  if (r.server_errors > 0)
    add(std::to_string(r.server_errors) + " server errors, last: " + r.last_server_error);
  if (!r.started_at.empty())
    add("started at " + r.started_at + " local time (to line up with the servers' logs)");
  if (r.stolen_ms >= 0) {
    std::snprintf(buf, sizeof buf, "CPU ms stolen by the hypervisor: %.0f", r.stolen_ms);
    add(buf);
  }
  add(r.error);
  row.note = note;
  return row;
}

std::string describe(const slow_sub_options& opt) {
  return "1 publisher offering " + grouped(opt.sub_rate * opt.pub_factor) + " msgs/s of " +
         std::to_string(opt.payload) + " B (paced) for " + grouped(seconds(opt.duration)) +
         " s → 1 subscriber reading at most " + grouped(opt.sub_rate) + " msgs/s (recv of " +
         std::to_string(opt.read_chunk >> 10) + " KiB, then a sleep); Keyway publishes on " +
         std::to_string(opt.keys) + " keys, NATS and Redis on the one subject";
}

}  // namespace keyway::bench::e2e
