#include "tests/integration/hostile.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <variant>

namespace keyway::itest {
namespace {

/// `unit` repeated to about `bytes` (at least once).
std::vector<std::byte> repeated(const std::vector<std::byte>& unit, std::size_t bytes) {
  std::vector<std::byte> v;
  do v.insert(v.end(), unit.begin(), unit.end());
  while (v.size() + unit.size() <= bytes);
  return v;
}

us median(std::vector<us> v) {
  if (v.empty()) return us::max();
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string ms_text(us t) {
  return std::to_string(static_cast<double>(t.count()) / 1000.0) + " ms";
}

}  // namespace

// ---- frames as bytes ------------------------------------------------------------

std::vector<std::byte> hello_bytes(std::string_view name) {
  return frame_bytes([&](proto::encoder& e, proto::out_buffer& o) {
    return e.hello(o, {proto::protocol_version, name, {}});
  });
}

std::vector<std::byte> publish_bytes(std::string_view subject, std::string_view key,
                                     std::string_view payload, std::uint64_t ack_id) {
  return frame_bytes([&](proto::encoder& e, proto::out_buffer& o) {
    proto::publish_fields f;
    f.subject = subject;
    f.key = as_bytes(key);
    f.payload = as_bytes(payload);
    f.ack_id = ack_id;
    return e.publish(o, f);
  });
}

std::vector<std::byte> ping_bytes(std::uint64_t id) {
  return frame_bytes([&](proto::encoder& e, proto::out_buffer& o) { return e.ping(o, id); });
}

std::string numbered(std::string_view prefix, std::uint64_t n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

// ---- a socket for floods --------------------------------------------------------

flood_conn::flood_conn(std::uint16_t port, int rcvbuf, int sndbuf) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw io_error(std::string("socket: ") + std::strerror(errno));
  if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (sndbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    throw io_error("connect to 127.0.0.1:" + std::to_string(port) + ": " + why);
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

flood_conn::~flood_conn() {
  ::close(fd_);
}

void flood_conn::queue(std::span<const std::byte> bytes) {
  if (off_ == out_.size()) {
    out_.clear();
    off_ = 0;
  }
  out_.insert(out_.end(), bytes.begin(), bytes.end());
}

bool flood_conn::write_until(steady::time_point deadline) {
  while (off_ < out_.size()) {
    const ssize_t n = ::send(fd_, out_.data() + off_, out_.size() - off_, MSG_NOSIGNAL);
    if (n > 0) {
      off_ += static_cast<std::size_t>(n);
      written_ += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const auto left = std::chrono::ceil<ms>(deadline - steady::now());
      if (left <= 0ms) return true;
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(std::min<ms::rep>(left.count(), 1000)));
      continue;
    }
    gone_ = true;
    return false;
  }
  return true;
}

bool flood_conn::discard_input(ms wait) {
  pollfd p{fd_, POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(wait.count()));
  std::vector<std::byte>& buf = scratch_;
  buf.resize(64 * 1024);
  for (int i = 0; i < 256; ++i) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) {
      discarded_ += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    gone_ = true;
    return false;
  }
  return true;
}

flood_outcome flood_unread(std::uint16_t port, const std::vector<std::byte>& unit,
                           std::uint64_t max_bytes, ms duration) {
  flood_outcome out;
  try {
    const auto end = steady::now() + duration;
    flood_conn c(port, 4096);
    c.queue(hello_bytes("flood"));
    const std::vector<std::byte> chunk = repeated(unit, 64 * 1024);
    while (steady::now() < end && c.written() < max_bytes) {
      if (c.queued() < chunk.size()) c.queue(chunk);
      if (!c.write_until(std::min(end, steady::now() + 20ms))) break;
    }
    out.written = c.written();
    while (!c.gone() && steady::now() < end) std::this_thread::sleep_for(10ms);
    out.peer_closed = c.gone();
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

// ---- the well-behaved client --------------------------------------------------

latency_probe::latency_probe(const std::string& url) : c_(open_client(url, "good-client")) {
  c_.subscribe(sid, subject);
}

std::optional<us> latency_probe::once(ms timeout) {
  const std::uint64_t id = ++count_;
  const std::string payload = "probe " + std::to_string(id);
  const auto start = steady::now();
  const auto deadline = start + timeout;
  try {
    c_.publish(subject, "probe-key", payload, {}, id);
    bool acked = false, delivered = false;
    while (!(acked && delivered)) {
      const auto left = std::chrono::ceil<ms>(deadline - steady::now());
      auto f = left > 0ms ? c_.read(left) : std::nullopt;
      if (!f) {
        why_ = c_.eof() ? "the connection closed"
                        : "no ack and delivery within " + std::to_string(timeout.count()) + " ms";
        return std::nullopt;
      }
      if (const auto* a = std::get_if<ack_frame>(&*f)) {
        acked = acked || a->request_id == id;
      } else if (const auto* m = std::get_if<message_frame>(&*f)) {
        delivered = delivered || m->payload == payload;  // else a late one of a failed round trip
      } else if (const auto* e = std::get_if<error_frame>(&*f)) {
        why_ = describe(*f);
        if (e->request_id == id || e->fatal) return std::nullopt;
      }
    }
  } catch (const io_error& e) {
    why_ = e.what();
    return std::nullopt;
  }
  return std::chrono::duration_cast<us>(steady::now() - start);
}

latency_samples latency_probe::sample(int n, ms timeout) {
  latency_samples s;
  for (int i = 0; i < n; ++i) add(s, timeout);
  return s;
}

void latency_probe::settle() {
  (void)once(default_timeout);
  for (int i = 0; i < 100'000 && c_.read(0ms); ++i) {
  }
}

void latency_probe::add(latency_samples& s, ms timeout) {
  if (const auto t = once(timeout)) {
    s.round_trips.push_back(*t);
  } else {
    s.round_trips.push_back(std::chrono::duration_cast<us>(timeout));
    ++s.failures;
    s.last_failure = why_;
  }
}

background_probe::background_probe(latency_probe& good, ms pause)
    : thread_([this, &good, pause] {
        samples_ = good.sample_until([this] { return stop_.load(); }, pause);
      }) {}

latency_samples background_probe::finish() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  return samples_;
}

void check_latency(const std::string& phase, us baseline, const latency_samples& s) {
  const us m = median(s.round_trips);
  MESSAGE("good client: median round trip "
          << ms_text(baseline) << " before, " << ms_text(m) << " " << phase << " ("
          << s.round_trips.size() << " round trips, " << s.failures << " failed"
          << (s.failures ? ": " + s.last_failure : std::string()) << ")");
  REQUIRE_FALSE(s.round_trips.empty());
  CHECK(m <= baseline + latency_slack);
}

us baseline_of(latency_probe& good) {
  const latency_samples s = good.sample(baseline_round_trips);
  REQUIRE_MESSAGE(s.failures == 0, "the good client failed before any attack: " << s.last_failure);
  return median(s.round_trips);
}

// ---- the daemon ---------------------------------------------------------------------

std::string log_tail(const keywayd_process& d, std::size_t bytes) {
  const std::string log = d.log();
  return log.size() <= bytes ? log : "[...]" + log.substr(log.size() - bytes);
}

void require_running(const keywayd_process& d) {
  REQUIRE_MESSAGE(test::is_running(d.pid()), "keywayd is gone (its log is above)");
}

}  // namespace keyway::itest
