#include "bench/e2e/capacity.hpp"

#include "bench/e2e/servers.hpp"
#include "bench/e2e/text_buffer.hpp"
#include "proto/codec.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

constexpr auto setup_timeout = 10s;
constexpr auto final_sync_timeout = 10s;
constexpr auto stall_timeout = 2s;
constexpr auto hard_extra = 15s;

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

bool parse_size(std::string_view s, std::size_t& out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

void append(std::vector<std::byte>& v, std::string_view s) {
  const std::size_t at = v.size();
  v.resize(at + s.size());  // not insert(): g++ 12 -Wstringop-overflow false positive
  std::memcpy(v.data() + at, s.data(), s.size());
}

/// The pre-built publishes: the bytes and how many publishes they hold.
struct prebuilt {
  std::vector<std::byte> bytes;
  std::uint64_t messages = 0;
};

/// One system's wire format as the capacity loops need it, for one
/// connection (it holds that connection's unparsed input).
class wire {
 public:
  virtual ~wire() = default;
  virtual prebuilt publishes(const capacity_options& opt) = 0;
  virtual std::vector<std::byte> ping() = 0;
  virtual std::span<std::byte> space() = 0;
  /// `n` bytes arrived in space(); parses what is complete.
  virtual void commit(std::size_t n) = 0;
  /// Publisher side: PONGs seen so far; `error` holds the first server error.
  std::uint64_t pongs = 0;
  std::string error;
  /// Subscriber side: deliveries counted so far.
  std::uint64_t deliveries = 0;
};

/// NATS and Redis: text streams, parsed line by line.
class text_wire : public wire {
 public:
  /// `opt.batch` times the publish head, the payload and CRLF.
  prebuilt publishes(const capacity_options& opt) override {
    prebuilt p;
    const std::string head = publish_head(opt);
    const std::string body = std::string(opt.payload, 'x') + "\r\n";
    for (std::size_t i = 0; i < opt.batch; ++i) {
      append(p.bytes, head);
      append(p.bytes, body);
    }
    p.messages = opt.batch;
    return p;
  }
  std::vector<std::byte> ping() override {
    std::vector<std::byte> v;
    append(v, ping_text());
    return v;
  }
  std::span<std::byte> space() override { return in_.space(); }
  void commit(std::size_t n) override {
    in_.commit(n);
    while (step(in_.unparsed())) {
    }
  }

 protected:
  /// A publish up to its payload.
  virtual std::string publish_head(const capacity_options& opt) const = 0;
  virtual std::string_view ping_text() const = 0;
  /// Consumes one complete element of `buf`; false when it needs more bytes.
  virtual bool step(std::string_view buf) = 0;
  in_text in_;
};

class nats_wire final : public text_wire {
 private:
  std::string publish_head(const capacity_options& opt) const override {
    return "PUB " + opt.subject + " " + std::to_string(opt.payload) + "\r\n";
  }
  std::string_view ping_text() const override { return "PING\r\n"; }
  bool step(std::string_view buf) override {
    const auto eol = buf.find("\r\n");
    if (eol == std::string_view::npos) return false;
    const std::string_view line = buf.substr(0, eol);
    if (line.starts_with("MSG ")) {  // MSG <subject> <sid> [reply-to] <#bytes>
      std::size_t len = 0;
      if (!parse_size(line.substr(line.rfind(' ') + 1), len)) len = 0;
      if (buf.size() < eol + 2 + len + 2) return false;
      ++deliveries;
      in_.consume(eol + 2 + len + 2);
      return true;
    }
    if (line == "PONG") ++pongs;
    if (line.starts_with("-ERR") && error.empty()) error = std::string(line);
    in_.consume(eol + 2);
    return true;
  }
};

class redis_wire final : public text_wire {
 private:
  std::string publish_head(const capacity_options& opt) const override {
    return "*3\r\n$7\r\nPUBLISH\r\n$" + std::to_string(opt.subject.size()) + "\r\n" + opt.subject +
           "\r\n$" + std::to_string(opt.payload) + "\r\n";
  }
  std::string_view ping_text() const override { return "*1\r\n$4\r\nPING\r\n"; }
  /// A simple reply (+ - :) or an array of bulk strings (a pub/sub push).
  bool step(std::string_view buf) override {
    const auto eol = buf.find("\r\n");
    if (eol == std::string_view::npos) return false;
    const std::string_view line = buf.substr(0, eol);
    if (!line.starts_with("*")) {
      if (line == "+PONG") ++pongs;
      if (line.starts_with("-") && error.empty()) error = std::string(line);
      in_.consume(eol + 2);
      return true;
    }
    std::size_t items = 0, pos = eol + 2;
    if (!parse_size(line.substr(1), items)) items = 0;
    bool message = false;
    for (std::size_t i = 0; i < items; ++i) {
      const auto e = buf.find("\r\n", pos);
      std::size_t len = 0;
      if (e == std::string_view::npos) return false;
      if (!parse_size(buf.substr(pos + 1, e - pos - 1), len)) len = 0;
      if (buf.size() < e + 2 + len + 2) return false;
      if (i == 0) message = buf.substr(e + 2, len) == "message";
      pos = e + 2 + len + 2;
    }
    if (message) ++deliveries;
    in_.consume(pos);
    return true;
  }
};

class keyway_wire final : public wire {
 public:
  prebuilt publishes(const capacity_options& opt) override {
    proto::encoder enc(limits_);
    proto::out_buffer out;
    std::vector<std::string> keys;
    for (int k = 0; k < std::max(opt.keys, 1); ++k) {
      std::string key("k");  // not "k" + to_string(k): g++ 12 -Wrestrict false positive
      key += std::to_string(k);
      keys.push_back(std::move(key));
    }
    const std::vector<std::byte> payload(opt.payload, std::byte{'x'});
    const std::size_t per_frame = std::max<std::size_t>(opt.per_frame, 1);
    const std::size_t frames = (opt.batch + per_frame - 1) / per_frame;
    std::vector<std::byte> entries;
    std::uint64_t seq = 0;
    for (std::size_t f = 0; f < frames; ++f) {
      entries.clear();
      for (std::size_t i = 0; i < per_frame; ++i, ++seq) {
        const std::string& k = keys[seq % keys.size()];
        const std::span<const std::byte> key{reinterpret_cast<const std::byte*>(k.data()),
                                             k.size()};
        if (per_frame == 1) {
          proto::publish_fields pf;
          pf.subject = opt.subject;
          pf.key = key;
          pf.payload = payload;
          if (!enc.publish(out, pf)) throw bench_error("cannot encode a keyway publish");
          continue;
        }
        const std::size_t at = entries.size();
        entries.resize(at + proto::batch_entry_size(key.size(), payload.size()));
        proto::write_batch_entry(entries.data() + at, key, payload);
      }
      if (per_frame > 1 &&
          !enc.publish_batch(out, opt.subject, static_cast<std::uint32_t>(per_frame), entries))
        throw bench_error("cannot encode a keyway publishBatch");
    }
    prebuilt p{drain(out), seq};
    return p;
  }
  std::vector<std::byte> ping() override {
    proto::encoder enc(limits_);
    proto::out_buffer out;
    if (!enc.ping(out, 1)) throw bench_error("cannot encode a keyway ping");
    return drain(out);
  }
  std::span<std::byte> space() override { return dec_->prepare(64 * 1024); }
  void commit(std::size_t n) override {
    dec_->commit(n);
    for (;;) {
      auto next = dec_->next();
      if (!next) {
        if (error.empty()) error = "undecodable stream from keywayd: " + dec_->error().message();
        return;
      }
      if (!next->has_value()) return;
      const proto::frame& f = **next;
      if (f.delivery() != nullptr) {
        ++deliveries;
      } else if (const proto::message_batch_view* b = f.message_batch()) {
        deliveries += b->count;
      } else if (f.publish_batch() == nullptr) {
        const auto root = f.root();
        if (root.which() == proto::wire::Frame::PONG) ++pongs;
        if (root.which() == proto::wire::Frame::ERROR && error.empty())
          error = std::string(proto::as_string_view(root.getError().getMessage()));
      }
    }
  }

 private:
  static std::vector<std::byte> drain(proto::out_buffer& out) {
    std::vector<std::byte> v;
    while (!out.empty()) {
      const auto f = out.front();
      v.insert(v.end(), f.begin(), f.end());
      out.consume(f.size());
    }
    return v;
  }
  proto::limits limits_{};
  // Behind a pointer: the decoder's destructor is noexcept(false) (see keyway_conn.cpp).
  std::unique_ptr<proto::decoder> dec_ = std::make_unique<proto::decoder>(limits_, 256 * 1024);
};

std::unique_ptr<wire> make_wire(system_kind kind) {
  if (kind == system_kind::keyway) return std::make_unique<keyway_wire>();
  if (is_redis(kind)) return std::make_unique<redis_wire>();
  return std::make_unique<nats_wire>();
}

/// Reads what is there (non-blocking) into `w`; false on EOF or error.
bool read_available(int fd, wire& w, std::uint64_t* last_read_ns = nullptr) {
  for (;;) {
    const auto space = w.space();
    const ssize_t n = ::recv(fd, space.data(), space.size(), 0);
    if (n > 0) {
      w.commit(static_cast<std::size_t>(n));
      if (last_read_ns != nullptr) *last_read_ns = now_ns();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

/// Writes all of `bytes`, reading (and parsing) meanwhile; false on failure
/// or at `deadline`.
bool write_all(int fd, std::span<const std::byte> bytes, wire& w, clock::time_point deadline) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes = bytes.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
    if (!read_available(fd, w) || clock::now() >= deadline) return false;
    pollfd p{fd, POLLIN | POLLOUT, 0};
    ::poll(&p, 1, 1);
  }
  return true;
}

struct alignas(64) shared_count {
  std::atomic<std::uint64_t> v{0};
};

}  // namespace

capacity_result run_capacity(const endpoint& ep, const capacity_options& opt) {
  capacity_result res;
  const system_kind kind = ep.kind == system_kind::nats    ? system_kind::nats_raw
                           : ep.kind == system_kind::redis ? system_kind::redis_raw
                                                           : ep.kind;
  int pub_fd = -1, sub_fd = -1;
  prebuilt buf;
  std::vector<std::byte> ping;
  auto pub_wire = make_wire(kind);
  auto sub_wire = make_wire(kind);
  try {
    const auto deadline = clock::now() + setup_timeout;
    if (opt.subscribers > 0) {
      auto s = make_conn(kind, ep.host, ep.port, "capacity-sub", deadline);
      s->subscribe(opt.subject, "", deadline);
      sub_fd = take_socket(std::move(s));
    }
    auto p = make_conn(kind, ep.host, ep.port, "capacity-pub", deadline);
    p->set_batching(true);
    p->sync(deadline);
    pub_fd = take_socket(std::move(p));
    buf = pub_wire->publishes(opt);
    ping = pub_wire->ping();
  } catch (const bench_error& e) {
    if (pub_fd >= 0) ::close(pub_fd);
    if (sub_fd >= 0) ::close(sub_fd);
    res.error = std::string("setup: ") + e.what();
    return res;
  }
  res.bytes_per_publish = buf.messages > 0 ? buf.bytes.size() / buf.messages : 0;

  shared_count sent, received;
  std::atomic<bool> pub_running{true};
  const auto t0 = clock::now() + 50ms;
  const auto end = t0 + opt.duration;
  const auto hard_end = end + hard_extra;
  std::string pub_error, sub_error;
  clock::time_point pub_done = t0;
  std::uint64_t last_rx = to_ns(t0);
  const double server_cpu0 = opt.server_pid > 0 ? sched_cpu_seconds(opt.server_pid) : -1;

  std::thread pub([&] {
    const double cpu0 = thread_cpu_seconds();
    std::this_thread::sleep_until(t0);
    std::uint64_t n = 0, last_recv = 0;
    auto last_progress = clock::now();
    const bool windowed = opt.window > 0 && opt.subscribers > 0;
    while (pub_error.empty()) {
      const auto now = clock::now();
      if (now >= end) break;
      if (windowed && n - received.v.load(std::memory_order_relaxed) + buf.messages > opt.window) {
        const std::uint64_t r = received.v.load(std::memory_order_relaxed);
        if (r != last_recv) {
          last_recv = r;
          last_progress = now;
        } else if (now - last_progress > stall_timeout) {
          pub_error = "the subscriber stopped receiving (window full for 2 s)";
        }
        if (!read_available(pub_fd, *pub_wire)) pub_error = "publisher: the connection failed";
        std::this_thread::sleep_for(100us);  // as the generator does
        continue;
      }
      last_progress = now;
      // Counted before the bytes leave, so the subscriber never sees more than was sent.
      n += buf.messages;
      sent.v.store(n, std::memory_order_relaxed);
      if (!write_all(pub_fd, buf.bytes, *pub_wire, hard_end) || !read_available(pub_fd, *pub_wire))
        pub_error = "publisher: the connection failed or stalled";
    }
    // The final round trip: the server has taken every publish.
    const auto deadline = clock::now() + final_sync_timeout;
    const std::uint64_t want = pub_wire->pongs + 1;
    if (pub_error.empty() && !write_all(pub_fd, ping, *pub_wire, deadline))
      pub_error = "publisher: the final ping failed";
    while (pub_error.empty() && pub_wire->pongs < want) {
      if (!read_available(pub_fd, *pub_wire)) pub_error = "publisher: the connection failed";
      if (clock::now() >= deadline) pub_error = "publisher: no pong within 10 s";
      pollfd p{pub_fd, POLLIN, 0};
      ::poll(&p, 1, 2);
    }
    if (pub_error.empty() && !pub_wire->error.empty())
      pub_error = "server error: " + pub_wire->error;
    pub_done = clock::now();
    res.pub_cpu = thread_cpu_seconds() - cpu0;
    pub_running.store(false, std::memory_order_release);
  });

  std::thread sub;
  if (sub_fd >= 0) {
    sub = std::thread([&] {
      const double cpu0 = thread_cpu_seconds();
      clock::time_point quiet_since{};
      std::uint64_t quiet_count = ~std::uint64_t{0};
      for (;;) {
        if (!read_available(sub_fd, *sub_wire, &last_rx)) {
          sub_error = "subscriber: the server closed the connection";
          break;
        }
        received.v.store(sub_wire->deliveries, std::memory_order_relaxed);
        const auto now = clock::now();
        if (now >= hard_end) {
          sub_error = "subscriber still waiting at the hard deadline";
          break;
        }
        if (!pub_running.load(std::memory_order_acquire)) {
          if (sub_wire->deliveries >= sent.v.load(std::memory_order_relaxed)) break;
          if (sub_wire->deliveries != quiet_count) {
            quiet_count = sub_wire->deliveries;
            quiet_since = now;
          } else if (now - quiet_since >= opt.drain_quiet) {
            break;
          }
        }
        pollfd p{sub_fd, POLLIN, 0};
        ::poll(&p, 1, 2);
      }
      res.sub_cpu = thread_cpu_seconds() - cpu0;
    });
  }
  pub.join();
  if (sub.joinable()) sub.join();
  res.wall = std::chrono::duration<double>(clock::now() - t0).count();
  if (server_cpu0 >= 0) res.server_cpu = sched_cpu_seconds(opt.server_pid) - server_cpu0;
  ::close(pub_fd);
  if (sub_fd >= 0) ::close(sub_fd);

  res.sent = sent.v.load();
  res.received = sub_wire->deliveries;
  res.pub_seconds = std::chrono::duration<double>(pub_done - t0).count();
  res.sub_seconds = static_cast<double>(last_rx - to_ns(t0)) / 1e9;
  res.pub_rate = res.pub_seconds > 0 ? static_cast<double>(res.sent) / res.pub_seconds : 0;
  res.sub_rate = res.sub_seconds > 0 ? static_cast<double>(res.received) / res.sub_seconds : 0;
  std::string err = pub_error;
  auto add = [&](const std::string& e) {
    if (!e.empty()) err += (err.empty() ? "" : "; ") + e;
  };
  add(sub_error);
  if (opt.subscribers > 0 && res.received != res.sent)
    add("received " + std::to_string(res.received) + " of " + std::to_string(res.sent));
  res.error = err;
  return res;
}

std::string describe(const capacity_result& r) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "sent %llu, received %llu; pub %.0f/s over %.3f s, sub %.0f/s over %.3f s; %zu B "
                "per publish; CPU s: publisher %.2f, subscriber %.2f, server %.2f over %.2f s%s%s",
                static_cast<unsigned long long>(r.sent),
                static_cast<unsigned long long>(r.received), r.pub_rate, r.pub_seconds, r.sub_rate,
                r.sub_seconds, r.bytes_per_publish, r.pub_cpu, r.sub_cpu, r.server_cpu, r.wall,
                r.error.empty() ? "" : "; problem: ", r.error.c_str());
  return buf;
}

}  // namespace keyway::bench::e2e
