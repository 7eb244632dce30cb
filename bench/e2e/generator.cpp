#include "bench/e2e/generator.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

constexpr auto setup_timeout = 10s;
constexpr auto final_sync_timeout = 10s;
constexpr auto stall_timeout = 2s;         // window full and no subscriber progress
constexpr auto hard_extra = 15s;           // beyond `duration`, for every loop
constexpr std::size_t batch = 32;          // publishes stamped with one send time
constexpr std::size_t out_high = 1 << 20;  // queued bytes before a publisher waits for the socket

double seconds(nanoseconds d) {
  return std::chrono::duration<double>(d).count();
}

// Payloads (stamp(), conn.hpp): the send time, then publisher id << 48 |
// sequence, then filler.
std::uint64_t sent_at(std::span<const std::byte> payload) {
  std::uint64_t ts = 0;
  if (payload.size() >= 8) std::memcpy(&ts, payload.data(), 8);
  return ts;
}

/// The tag of a probe (pubsub_options::probe): publisher id 0xFFFF, which no
/// publisher has. Sinks count probes apart and skip them otherwise.
constexpr std::uint64_t probe_tag = std::uint64_t{0xFFFF} << 48;
constexpr auto probe_timeout = 10s;
constexpr auto probe_interval = 20ms;

bool is_probe(std::span<const std::byte> payload) {
  std::uint64_t tag = 0;
  if (payload.size() >= 16) std::memcpy(&tag, payload.data() + 8, 8);
  return payload.size() >= 16 && tag == probe_tag;
}

struct alignas(64) padded_counter {
  std::atomic<std::uint64_t> v{0};
};

/// Counts and times deliveries on one subscriber's (or requester's) thread,
/// and checks order: for each (publisher, key) the sequence numbers must
/// rise. Every system here promises that much (Keyway orders per key, NATS
/// and Redis per publishing connection), so a fall or a repeat is a loss of
/// order or a duplicate.
class recording_sink final : public delivery_sink {
 public:
  /// `publishers` * `keys` streams are order-checked; 0 keys: no check.
  recording_sink(std::size_t payload_size, padded_counter* shared, int publishers = 0, int keys = 0)
      : size_(payload_size),
        shared_(shared),
        keys_(static_cast<std::uint64_t>(std::max(keys, 0))),
        last_(static_cast<std::size_t>(std::max(publishers, 0) * std::max(keys, 0)), 0) {}
  void on_delivery(std::span<const std::byte> payload, std::string_view,
                   std::uint64_t now) override {
    if (is_probe(payload)) {
      ++probes;
      return;
    }
    if (payload.size() != size_) ++bad;
    const std::uint64_t ts = sent_at(payload);
    latency.record(now > ts ? now - ts : 0);
    ++received;
    last_rx = now;
    if (shared_ != nullptr) shared_->v.store(received, std::memory_order_relaxed);
    if (keys_ > 0 && payload.size() >= 16) {
      std::uint64_t tag = 0;
      std::memcpy(&tag, payload.data() + 8, 8);
      const std::uint64_t seq = tag & ((std::uint64_t{1} << 48) - 1);
      const std::size_t i = static_cast<std::size_t>((tag >> 48) * keys_ + seq % keys_);
      if (i >= last_.size()) {
        ++bad;
      } else {
        if (last_[i] >= seq + 1) ++out_of_order;
        last_[i] = seq + 1;
      }
    }
  }
  histogram latency;
  std::uint64_t received = 0;
  std::uint64_t bad = 0;
  std::uint64_t out_of_order = 0;
  std::uint64_t last_rx = 0;
  std::uint64_t probes = 0;

 private:
  std::size_t size_;
  padded_counter* shared_;
  std::uint64_t keys_;
  std::vector<std::uint64_t> last_;  // per (publisher, key): last sequence + 1
};

/// Answers every request by publishing its payload to the reply subject.
class echo_sink final : public delivery_sink {
 public:
  explicit echo_sink(conn& c) : c_(c) {}
  void on_delivery(std::span<const std::byte> payload, std::string_view reply_to,
                   std::uint64_t now) override {
    last_rx = now;
    if (reply_to.empty()) {
      ++bad;
      return;
    }
    c_.queue_publish(reply_to, {}, payload, {});
    ++answered;
  }
  std::uint64_t answered = 0;
  std::uint64_t bad = 0;
  std::uint64_t last_rx = 0;

 private:
  conn& c_;
};

struct pubsub_state {
  pubsub_state(int pubs, int subs)
      : sent(std::make_unique<padded_counter[]>(static_cast<std::size_t>(pubs))),
        recv(std::make_unique<padded_counter[]>(static_cast<std::size_t>(std::max(subs, 1)))),
        pubs(pubs),
        subs(subs) {}
  std::uint64_t total_sent() const {
    std::uint64_t s = 0;
    for (int i = 0; i < pubs; ++i) s += sent[i].v.load(std::memory_order_relaxed);
    return s;
  }
  std::uint64_t total_recv() const {
    std::uint64_t s = 0;
    for (int i = 0; i < subs; ++i) s += recv[i].v.load(std::memory_order_relaxed);
    return s;
  }
  /// Messages published but not yet received by the subscriber furthest
  /// behind (a queue group counts as one subscriber). May be briefly
  /// negative: the counters are read one after the other.
  std::int64_t lag() const {
    const auto s = static_cast<std::int64_t>(total_sent());
    if (queue_group) return s - static_cast<std::int64_t>(total_recv());
    std::uint64_t slowest = ~std::uint64_t{0};
    for (int i = 0; i < subs; ++i)
      slowest = std::min(slowest, recv[i].v.load(std::memory_order_relaxed));
    return s - static_cast<std::int64_t>(slowest);
  }
  std::unique_ptr<padded_counter[]> sent;
  std::unique_ptr<padded_counter[]> recv;
  int pubs;
  int subs;
  bool queue_group = false;
  std::atomic<int> pubs_running{0};
  clock::time_point t0;
  std::uint64_t fan = 0;  // deliveries per publish
};

struct pub_outcome {
  std::uint64_t sent = 0;
  clock::time_point done;
  std::string error;
  std::uint64_t server_errors = 0;
};

void publisher_body(conn& c, const pubsub_options& opt, pubsub_state& st, int id,
                    pub_outcome& out) {
  std::vector<std::byte> payload(opt.payload, std::byte{'x'});
  std::vector<std::string> keys;
  for (int k = 0; k < std::max(opt.keys, 1); ++k) {
    std::string key("k");  // not "k" + to_string(k): g++ 12 -Wrestrict false positive
    key += std::to_string(k);
    keys.push_back(std::move(key));
  }
  const std::uint64_t cap = opt.count > 0 ? opt.count : ~std::uint64_t{0};
  const double rate = opt.rate / st.pubs;  // this publisher's share
  const bool windowed = opt.rate <= 0 && st.fan > 0;
  const std::uint64_t window =
      opt.window > 0 ? opt.window
                     : std::clamp<std::uint64_t>(opt.window_bytes / opt.payload, 64, 8192);

  const auto t0 = st.t0;
  const auto end = t0 + opt.duration;
  const auto hard_end = end + hard_extra;
  const std::uint64_t tag_base = static_cast<std::uint64_t>(id) << 48;

  std::this_thread::sleep_until(t0);
  std::uint64_t seq = 0;
  std::uint64_t last_recv = 0;
  auto last_progress = clock::now();
  while (seq < cap && !c.failed()) {
    const auto now = clock::now();
    if (now >= end) break;
    std::uint64_t n = batch;
    if (rate > 0) {
      const auto due = static_cast<std::uint64_t>(seconds(now - t0) * rate) + 1;
      if (due <= seq) {
        c.read_some();
        const auto next =
            t0 + std::chrono::duration_cast<nanoseconds>(std::chrono::duration<double>(seq / rate));
        c.wait(std::min<nanoseconds>(next - now, 1ms));
        continue;
      }
      n = std::min<std::uint64_t>(due - seq, 8 * batch);
    } else if (windowed) {
      if (st.lag() + static_cast<std::int64_t>(n) > static_cast<std::int64_t>(window)) {
        const std::uint64_t r = st.total_recv();
        if (r != last_recv) {
          last_recv = r;
          last_progress = now;
        } else if (now - last_progress > stall_timeout) {
          out.error = "subscribers stopped receiving (in-flight window of " +
                      std::to_string(window) + " full for 2 s)";
          break;
        }
        c.write_some();
        c.read_some();
        std::this_thread::sleep_for(100us);
        continue;
      }
      last_progress = now;
    }
    n = std::min(n, cap - seq);
    const std::uint64_t batch_ts = to_ns(now);
    for (std::uint64_t i = 0; i < n; ++i, ++seq) {
      const std::uint64_t ts =
          rate > 0 ? to_ns(t0) + static_cast<std::uint64_t>(static_cast<double>(seq) * 1e9 / rate)
                   : batch_ts;
      stamp(payload, ts, tag_base | seq);
      const std::string& key = keys[seq % keys.size()];
      c.queue_publish(opt.subject, {reinterpret_cast<const std::byte*>(key.data()), key.size()},
                      payload, {});
    }
    c.end_publishes();
    // Counted before the bytes leave, so a subscriber never sees more than was sent.
    st.sent[id].v.store(seq, std::memory_order_relaxed);
    if (rate > 0 || c.out_size() >= opt.write_bytes) c.write_some();
    while (c.out_size() > out_high && !c.failed() && clock::now() < hard_end) {
      c.read_some();
      c.wait(1ms);
      c.write_some();
    }
    c.read_some();  // Redis answers every PUBLISH; Keyway may send errors
  }
  out.sent = seq;
  const auto deadline = clock::now() + final_sync_timeout;
  try {
    if (!c.flush(deadline)) throw bench_error(c.failed() ? c.failure() : "flush timed out");
    c.sync(deadline);
  } catch (const bench_error& e) {
    if (out.error.empty())
      out.error = std::string("publisher ") + std::to_string(id) + ": " + e.what();
  }
  if (c.failed() && out.error.empty())
    out.error = "publisher " + std::to_string(id) + ": " + c.failure();
  out.server_errors = c.server_errors();
  if (c.server_errors() > 0 && out.error.empty())
    out.error = "server error: " + c.last_server_error();
}

void publisher_loop(conn& c, const pubsub_options& opt, pubsub_state& st, int id,
                    pub_outcome& out) {
  try {
    publisher_body(c, opt, st, id, out);
  } catch (const std::exception& e) {
    out.error = "publisher " + std::to_string(id) + ": " + e.what();
  }
  out.done = clock::now();
  st.pubs_running.fetch_sub(1, std::memory_order_release);
}

struct sub_outcome {
  std::string error;
  std::uint64_t server_errors = 0;
};

void subscriber_body(conn& c, const pubsub_options& opt, pubsub_state& st, recording_sink& sink,
                     sub_outcome& out) {
  c.set_sink(&sink);
  const auto hard_end = st.t0 + opt.duration + hard_extra;
  clock::time_point quiet_since{};
  std::uint64_t quiet_count = ~std::uint64_t{0};
  while (!c.failed()) {
    if (c.read_some() > 0) continue;
    c.write_some();  // PONGs to the server's PINGs
    const auto now = clock::now();
    if (now >= hard_end) {
      out.error = "subscriber still waiting at the hard deadline";
      break;
    }
    if (st.pubs_running.load(std::memory_order_acquire) == 0) {
      const std::uint64_t r = st.total_recv();
      if (r >= st.total_sent() * st.fan) break;
      if (r != quiet_count) {
        quiet_count = r;
        quiet_since = now;
      } else if (now - quiet_since >= opt.drain_quiet) {
        break;  // the rest is not coming; the caller reports the loss
      }
    }
    c.wait(2ms);
  }
  if (c.failed()) out.error = "subscriber: " + c.failure();
  out.server_errors = c.server_errors();
}

void subscriber_loop(conn& c, const pubsub_options& opt, pubsub_state& st, recording_sink& sink,
                     sub_outcome& out) {
  try {
    subscriber_body(c, opt, st, sink, out);
  } catch (const std::exception& e) {
    out.error = std::string("subscriber: ") + e.what();
  }
}

/// Sends a probe through `pub` every 20 ms and reads `readers` on this thread
/// until `arrived()` holds; throws bench_error after 10 s. `what` names the
/// interest being waited for.
template <class Arrived>
void await_probe(conn& pub, std::string_view subject, std::size_t payload_size,
                 std::string_view reply_to, const std::vector<conn*>& readers, Arrived&& arrived,
                 const std::string& what) {
  std::vector<std::byte> payload(payload_size, std::byte{'p'});
  const std::string key = "k0";
  const auto deadline = clock::now() + probe_timeout;
  auto next_send = clock::now();
  while (!arrived()) {
    const auto now = clock::now();
    if (now >= deadline) throw bench_error("no probe reached " + what + " within 10 s");
    if (pub.failed()) throw bench_error("probe: " + pub.failure());
    if (now >= next_send) {
      stamp(payload, to_ns(now), probe_tag);
      pub.queue_publish(subject, {reinterpret_cast<const std::byte*>(key.data()), key.size()},
                        payload, reply_to);
      pub.end_publishes();
      next_send = now + probe_interval;
    }
    pub.write_some();
    pub.read_some();
    for (conn* c : readers) {
      c->read_some();
      c->write_some();
    }
    std::this_thread::sleep_for(1ms);
  }
}

std::string join_errors(const std::vector<std::string>& errors) {
  std::string s;
  for (const auto& e : errors) {
    if (e.empty() || s.find(e) != std::string::npos) continue;
    if (!s.empty()) s += "; ";
    s += e;
  }
  return s;
}

}  // namespace

run_result run_pubsub(const endpoint& ep, const pubsub_options& opt) {
  run_result res;
  if (opt.payload < 16) {
    res.error = "payload must be at least 16 bytes (send time + sequence)";
    return res;
  }
  pubsub_state st(opt.publishers, opt.subscribers);
  st.fan = opt.subscribers == 0 ? 0
           : opt.queue_group    ? 1
                                : static_cast<std::uint64_t>(opt.subscribers);
  st.queue_group = opt.queue_group;

  std::vector<std::unique_ptr<conn>> subs;
  std::vector<std::unique_ptr<conn>> pubs;
  try {
    const auto deadline = clock::now() + setup_timeout;
    for (int i = 0; i < opt.subscribers; ++i) {
      const int port = opt.sub_ports.empty()
                           ? ep.port
                           : opt.sub_ports[static_cast<std::size_t>(i) % opt.sub_ports.size()];
      subs.push_back(make_conn(ep.kind, ep.host, port, "bench-sub-" + std::to_string(i), deadline));
      subs.back()->subscribe(opt.subject, opt.queue_group ? "bench_group" : "", deadline);
    }
    for (int i = 0; i < opt.publishers; ++i) {
      pubs.push_back(
          make_conn(ep.kind, ep.host, ep.port, "bench-pub-" + std::to_string(i), deadline));
      pubs.back()->set_batching(opt.batch);
    }
  } catch (const bench_error& e) {
    res.error = std::string("setup: ") + e.what();
    return res;
  }

  std::vector<std::unique_ptr<recording_sink>> sinks;
  for (int i = 0; i < opt.subscribers; ++i)
    sinks.push_back(std::make_unique<recording_sink>(opt.payload, &st.recv[i], opt.publishers,
                                                     std::max(opt.keys, 1)));
  if (opt.probe && opt.subscribers > 0 && opt.publishers > 0) {
    std::vector<conn*> readers;
    for (int i = 0; i < opt.subscribers; ++i) {
      subs[i]->set_sink(sinks[i].get());
      readers.push_back(subs[i].get());
    }
    try {
      await_probe(
          *pubs[0], opt.subject, opt.payload, {}, readers,
          [&] {
            // A queue group: one member has it; otherwise every subscriber.
            std::size_t have = 0;
            for (const auto& s : sinks) have += s->probes > 0 ? 1 : 0;
            return opt.queue_group ? have > 0 : have == sinks.size();
          },
          "every subscriber");
    } catch (const bench_error& e) {
      res.error = std::string("setup: ") + e.what();
      return res;
    }
  }
  std::vector<pub_outcome> pub_out(static_cast<std::size_t>(opt.publishers));
  std::vector<sub_outcome> sub_out(static_cast<std::size_t>(opt.subscribers));
  st.pubs_running = opt.publishers;
  st.t0 = clock::now() + 50ms;  // every thread starts at the same instant

  std::vector<std::thread> threads;
  for (int i = 0; i < opt.subscribers; ++i)
    threads.emplace_back(subscriber_loop, std::ref(*subs[i]), std::cref(opt), std::ref(st),
                         std::ref(*sinks[i]), std::ref(sub_out[i]));
  for (int i = 0; i < opt.publishers; ++i)
    threads.emplace_back(publisher_loop, std::ref(*pubs[i]), std::cref(opt), std::ref(st), i,
                         std::ref(pub_out[i]));
  for (auto& t : threads) t.join();

  std::vector<std::string> errors;
  clock::time_point pub_done = st.t0;
  for (const auto& p : pub_out) {
    res.sent += p.sent;
    pub_done = std::max(pub_done, p.done);
    res.server_errors += p.server_errors;
    errors.push_back(p.error);
  }
  std::uint64_t last_rx = to_ns(st.t0);
  for (int i = 0; i < opt.subscribers; ++i) {
    res.received += sinks[i]->received;
    res.bad += sinks[i]->bad;
    res.out_of_order += sinks[i]->out_of_order;
    res.latency.merge(sinks[i]->latency);
    last_rx = std::max(last_rx, sinks[i]->last_rx);
    res.server_errors += sub_out[i].server_errors;
    errors.push_back(sub_out[i].error);
  }
  res.expected = res.sent * st.fan;
  if (res.received < res.expected)
    errors.push_back("lost " + std::to_string(res.expected - res.received) + " of " +
                     std::to_string(res.expected) + " deliveries");
  if (res.received > res.expected)
    errors.push_back("received " + std::to_string(res.received - res.expected) +
                     " more deliveries than expected");
  if (res.bad > 0)
    errors.push_back(std::to_string(res.bad) + " deliveries had the wrong size or tag");
  if (res.out_of_order > 0)
    errors.push_back(std::to_string(res.out_of_order) +
                     " deliveries out of order or repeated for their (publisher, key)");
  res.pub_seconds = seconds(pub_done - st.t0);
  res.sub_seconds = static_cast<double>(last_rx - to_ns(st.t0)) / 1e9;
  res.pub_rate = res.pub_seconds > 0 ? static_cast<double>(res.sent) / res.pub_seconds : 0;
  res.sub_rate = res.sub_seconds > 0 ? static_cast<double>(res.received) / res.sub_seconds : 0;
  res.error = join_errors(errors);
  res.ok = res.sent > 0 && res.error.empty();
  return res;
}

run_result run_reqrep(const endpoint& ep, const reqrep_options& opt) {
  run_result res;
  if (opt.payload < 16) {
    res.error = "payload must be at least 16 bytes (send time + sequence)";
    return res;
  }
  if (is_redis(ep.kind)) {
    res.error = "Redis has no request/reply";
    return res;
  }
  std::unique_ptr<conn> responder;
  std::unique_ptr<conn> requester;
  try {
    const auto deadline = clock::now() + setup_timeout;
    responder = make_conn(ep.kind, ep.host, opt.responder_port > 0 ? opt.responder_port : ep.port,
                          "bench-responder", deadline, true);
    responder->subscribe(opt.service, "", deadline);
    requester = make_conn(ep.kind, ep.host, ep.port, "bench-requester", deadline, true);
    requester->subscribe(opt.inbox, "", deadline);
  } catch (const bench_error& e) {
    res.error = std::string("setup: ") + e.what();
    return res;
  }

  std::atomic<bool> stop{false};
  echo_sink echo(*responder);
  recording_sink replies(opt.payload, nullptr);
  requester->set_sink(&replies);
  if (opt.probe) {
    responder->set_sink(&echo);
    try {
      await_probe(
          *requester, opt.service, opt.payload, opt.inbox, {responder.get()},
          [&] { return replies.probes > 0; }, "the responder and back");
    } catch (const bench_error& e) {
      res.error = std::string("setup: ") + e.what();
      return res;
    }
    echo.answered = 0;
  }
  const auto t0 = clock::now() + 50ms;
  const auto end = t0 + opt.duration;
  const auto hard_end = end + hard_extra;
  std::string responder_error;

  std::thread responder_thread([&] {
    conn& c = *responder;
    c.set_sink(&echo);
    try {
      while (!c.failed() && !stop.load(std::memory_order_acquire) && clock::now() < hard_end) {
        const bool got = c.read_some() > 0;
        c.write_some();
        if (!got) c.wait(2ms);
      }
    } catch (const std::exception& e) {
      responder_error = std::string("responder: ") + e.what();
    }
    if (c.failed()) responder_error = "responder: " + c.failure();
  });

  conn& c = *requester;
  std::vector<std::byte> payload(opt.payload, std::byte{'x'});
  std::string error;
  std::uint64_t sent = 0;
  clock::time_point pub_done = t0;
  try {
    std::this_thread::sleep_until(t0);
    if (opt.mode == reqrep_mode::fixed_rate) {
      // Open loop: request i is due at t0 + i / rate and stamped with that time.
      const double rate = opt.rate;
      const auto max_outstanding = static_cast<std::uint64_t>(std::max(rate, 1000.0));
      while (!c.failed()) {
        const auto now = clock::now();
        if (now >= end) break;
        const auto due = static_cast<std::uint64_t>(seconds(now - t0) * rate) + 1;
        while (sent < due && sent - replies.received < max_outstanding) {
          stamp(payload,
                to_ns(t0) + static_cast<std::uint64_t>(static_cast<double>(sent) * 1e9 / rate),
                sent);
          c.queue_publish(opt.service, {}, payload, opt.inbox);
          ++sent;
        }
        c.write_some();
        while (c.read_some() > 0) {
        }
        const auto next = t0 + std::chrono::duration_cast<nanoseconds>(
                                   std::chrono::duration<double>(sent / rate));
        if (next > clock::now()) c.wait(std::min<nanoseconds>(next - clock::now(), 1ms));
      }
    } else {
      // Closed loop: one request in flight, the next sent when its reply is in.
      while (!c.failed() && clock::now() < end) {
        stamp(payload, now_ns(), sent);
        c.queue_publish(opt.service, {}, payload, opt.inbox);
        ++sent;
        const std::uint64_t want = sent;
        const auto deadline = clock::now() + 1s;
        c.write_some();
        while (replies.received < want && !c.failed()) {
          if (c.read_some() > 0) continue;
          if (clock::now() >= deadline) break;
          c.wait(1ms);
          c.write_some();
        }
        if (replies.received < want) {
          error = "no reply within 1 s";
          break;
        }
      }
    }
    pub_done = clock::now();
    // Drain the replies still in flight.
    const auto drain_end = clock::now() + 2s;
    while (replies.received < sent && !c.failed() && clock::now() < drain_end) {
      c.write_some();
      if (c.read_some() == 0) c.wait(2ms);
    }
  } catch (const std::exception& e) {
    error = std::string("requester: ") + e.what();
    pub_done = clock::now();
  }
  stop.store(true, std::memory_order_release);
  responder_thread.join();

  res.sent = sent;
  res.expected = sent;
  res.received = replies.received;
  res.bad = replies.bad + echo.bad;
  res.latency = replies.latency;
  res.server_errors = c.server_errors() + responder->server_errors();
  std::vector<std::string> errors{error, responder_error};
  if (c.failed()) errors.push_back("requester: " + c.failure());
  if (res.received < res.sent)
    errors.push_back("lost " + std::to_string(res.sent - res.received) + " of " +
                     std::to_string(res.sent) + " replies");
  if (res.server_errors > 0)
    errors.push_back("server error: " +
                     (c.server_errors() ? c.last_server_error() : responder->last_server_error()));
  res.pub_seconds = seconds(pub_done - t0);
  res.sub_seconds =
      replies.last_rx > to_ns(t0) ? static_cast<double>(replies.last_rx - to_ns(t0)) / 1e9 : 0;
  res.pub_rate = res.pub_seconds > 0 ? static_cast<double>(res.sent) / res.pub_seconds : 0;
  res.sub_rate = res.sub_seconds > 0 ? static_cast<double>(res.received) / res.sub_seconds : 0;
  res.error = join_errors(errors);
  res.ok = res.sent > 0 && res.error.empty();
  return res;
}

}  // namespace keyway::bench::e2e
