// Hostile clients against the real keywayd. Each attacker stays within the
// protocol, or nearly, but makes the daemon do or hold far more than it
// sends: queue-group joins, replies it never reads, frames announced before
// hello, connection floods, costly subscriptions and matches, subscribers
// slower than their publishers. Each test checks that the daemon refuses or
// paces the attacker with the error that names the limit, keeps its memory
// and CPU bounded (tests/support/proc_stats.hpp), and keeps serving a
// well-behaved client on another connection: the median publish → ack +
// delivery round trip of that client during (or after) the attack stays
// within 100 ms of the median measured before it.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/proc_stats.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define KEYWAY_HOSTILE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYWAY_HOSTILE_TEST_ASAN 1
#endif
#endif

namespace keyway::itest {
namespace {

using us = std::chrono::microseconds;
using test::rss_watch;

constexpr std::uint64_t mib = 1 << 20;
/// Added to every RSS bound under AddressSanitizer, which keeps freed memory
/// in quarantine (256 MiB by default): there RSS grows with the allocations
/// an attack causes, even when the daemon keeps none of them.
#ifdef KEYWAY_HOSTILE_TEST_ASAN
constexpr std::uint64_t asan_rss_slack = 64 * mib;
#else
constexpr std::uint64_t asan_rss_slack = 0;
#endif
/// How much slower than before the attack the good client may get.
constexpr auto latency_slack = 100ms;
constexpr int baseline_round_trips = 20;

// ---- frames as bytes ------------------------------------------------------------

/// The wire bytes of one frame, from an encoder of this thread.
template <class Encode>
std::vector<std::byte> frame_bytes(Encode&& encode) {
  thread_local proto::encoder enc;
  proto::out_buffer out;
  const auto r = encode(enc, out);
  if (!r) throw io_error("encoding failed: " + r.error().message());
  std::vector<std::byte> v;
  std::span<const std::byte> pieces[16];
  while (!out.empty()) {
    const std::size_t n = out.gather(pieces);
    std::size_t taken = 0;
    for (std::size_t i = 0; i < n; ++i) {
      v.insert(v.end(), pieces[i].begin(), pieces[i].end());
      taken += pieces[i].size();
    }
    out.consume(taken);
  }
  return v;
}

std::vector<std::byte> hello_bytes(std::string_view name) {
  return frame_bytes([&](proto::encoder& e, proto::out_buffer& o) {
    return e.hello(o, {proto::protocol_version, name, {}});
  });
}

std::vector<std::byte> publish_bytes(std::string_view subject, std::string_view key,
                                     std::string_view payload, std::uint64_t ack_id = 0) {
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

/// "key-17" from ("key-", 17).
std::string numbered(std::string_view prefix, std::uint64_t n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

/// `unit` repeated to about `bytes` (at least once).
std::vector<std::byte> repeated(const std::vector<std::byte>& unit, std::size_t bytes) {
  std::vector<std::byte> v;
  do v.insert(v.end(), unit.begin(), unit.end());
  while (v.size() + unit.size() <= bytes);
  return v;
}

// ---- a socket for floods --------------------------------------------------------

/// A TCP client for floods. raw_client::send_raw gives up mid-frame when the
/// server stops reading; this one keeps its place in what it queued, so a
/// flood can wait for the server and carry on. It reads only when asked to,
/// and then drops what it reads without decoding it (its hello's welcome
/// included): a cheap sink for deliveries.
class flood_conn {
 public:
  /// rcvbuf/sndbuf > 0 set SO_RCVBUF/SO_SNDBUF before connecting (a small
  /// buffer keeps the kernel from absorbing much of a flood). Throws io_error.
  explicit flood_conn(std::uint16_t port, int rcvbuf = 0, int sndbuf = 0) {
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
  flood_conn(const flood_conn&) = delete;
  flood_conn& operator=(const flood_conn&) = delete;
  ~flood_conn() { ::close(fd_); }

  void queue(std::span<const std::byte> bytes) {
    if (off_ == out_.size()) {
      out_.clear();
      off_ = 0;
    }
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }
  std::size_t queued() const noexcept { return out_.size() - off_; }
  std::uint64_t written() const noexcept { return written_; }
  std::uint64_t discarded() const noexcept { return discarded_; }
  /// The server closed or reset the connection.
  bool gone() const noexcept { return gone_; }

  /// Writes queued bytes until none is left or `deadline` passes. False once
  /// the peer is gone.
  bool write_until(steady::time_point deadline) {
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

  /// Waits up to `wait` for input, then reads and drops what arrived (at
  /// most 16 MiB, so that a caller gets control back). False once the peer
  /// is gone.
  bool discard_input(ms wait) {
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

 private:
  int fd_ = -1;
  std::vector<std::byte> out_;
  std::size_t off_ = 0;
  std::uint64_t written_ = 0;
  std::uint64_t discarded_ = 0;
  std::vector<std::byte> scratch_;
  bool gone_ = false;
};

struct flood_outcome {
  std::uint64_t written = 0;
  bool peer_closed = false;
  std::string error;  // an exception in the flood thread
};

/// Connects with a 4 KiB receive buffer, says hello, then writes `unit` over
/// and over without ever reading, until `max_bytes` are written or
/// `duration` passes, and holds the connection (unread) until then. For a
/// thread of its own.
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

struct latency_samples {
  std::vector<us> round_trips;  // a failed one counts as its timeout
  int failures = 0;
  std::string last_failure;
};

us median(std::vector<us> v) {
  if (v.empty()) return us::max();
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string ms_text(us t) {
  return std::to_string(static_cast<double>(t.count()) / 1000.0) + " ms";
}

/// The well-behaved client: on its own connection, subscribed to a subject
/// of its own, it publishes with an ack and times the round trip until both
/// the ack and the delivery are in.
class latency_probe {
 public:
  explicit latency_probe(const std::string& url) : c_(open_client(url, "good-client")) {
    c_.subscribe(sid, subject);
  }

  raw_client& client() noexcept { return c_; }

  /// One round trip, or nullopt if the ack or the delivery did not come
  /// within `timeout` (the reason goes to latency_samples::last_failure).
  std::optional<us> once(ms timeout = 5s) {
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

  /// `n` round trips in a row.
  latency_samples sample(int n, ms timeout = 5s) {
    latency_samples s;
    for (int i = 0; i < n; ++i) add(s, timeout);
    return s;
  }
  /// Round trips `pause` apart until `done()` (asked before each), at least one.
  template <class Done>
  latency_samples sample_until(Done&& done, ms pause, ms timeout = 5s) {
    latency_samples s;
    do {
      add(s, timeout);
      std::this_thread::sleep_for(pause);
    } while (!done());
    return s;
  }

  /// Reads away whatever is left (late deliveries of failed round trips), so
  /// that the connection can be used by other helpers. The barrier is one
  /// more round trip: its delivery comes after those of every earlier one
  /// (one key, one publisher), which it skips. A ping would not do: its pong
  /// does not wait for deliveries routed through another worker.
  void settle() {
    (void)once(default_timeout);
    for (int i = 0; i < 100'000 && c_.read(0ms); ++i) {
    }
  }

  static constexpr std::uint32_t sid = 4242;
  static constexpr const char* subject = "good.client.latency";

 private:
  void add(latency_samples& s, ms timeout) {
    if (const auto t = once(timeout)) {
      s.round_trips.push_back(*t);
    } else {
      s.round_trips.push_back(std::chrono::duration_cast<us>(timeout));
      ++s.failures;
      s.last_failure = why_;
    }
  }

  raw_client c_;
  std::uint64_t count_ = 0;
  std::string why_;
};

/// Runs the good client's round trips, `pause` apart, on a thread of its
/// own until finish(), which returns them: the test's thread stays free to
/// watch the attack. The probe must not be used elsewhere meanwhile.
class background_probe {
 public:
  background_probe(latency_probe& good, ms pause)
      : thread_([this, &good, pause] {
          samples_ = good.sample_until([this] { return stop_.load(); }, pause);
        }) {}
  background_probe(const background_probe&) = delete;
  background_probe& operator=(const background_probe&) = delete;
  ~background_probe() { (void)finish(); }

  latency_samples finish() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    return samples_;
  }

 private:
  std::atomic<bool> stop_{false};
  latency_samples samples_;
  std::thread thread_;  // last: it starts once the rest is built
};

/// The good client's median `phase` stays within latency_slack of `baseline`.
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

// ---- requests and their answers ---------------------------------------------

/// The frame answering request `id`: its ack, an error for it, or a fatal
/// error. nullopt on timeout or close.
std::optional<server_frame> answer_to(raw_client& c, std::uint64_t id,
                                      ms timeout = default_timeout) {
  return c.wait_for(
      [id](const server_frame& x) {
        if (const auto* a = std::get_if<ack_frame>(&x)) return a->request_id == id;
        if (const auto* e = std::get_if<error_frame>(&x)) return e->request_id == id || e->fatal;
        return false;
      },
      timeout);
}

/// Expects `f`, the answer to request `id`, to be a non-fatal error `code`
/// whose message names `limit`.
void check_refused(const std::optional<server_frame>& f, std::uint64_t id, proto::errc code,
                   std::string_view limit) {
  REQUIRE_MESSAGE(f.has_value(), "no answer to request " << id);
  const auto* e = std::get_if<error_frame>(&*f);
  REQUIRE_MESSAGE(e != nullptr,
                  "request " << id << " was answered with " << describe(*f) << ", not refused");
  CHECK_MESSAGE(e->code == code, "got " << proto::to_string(e->code) << ": " << e->message);
  CHECK_FALSE(e->fatal);
  CHECK(e->request_id == id);
  CHECK_MESSAGE(e->message.find(limit) != std::string::npos,
                "the message does not name " << limit << ": " << e->message);
}

/// What a batch of subscribe requests came to.
struct subscribe_tally {
  int accepted = 0;
  int refused = 0;         // with the expected code and limit
  std::string unexpected;  // the first other answer
};

/// Sends the subscribes of `specs` (request id = sid, queue group `group`)
/// in batches of `batch`, reading the answers of each batch before the next,
/// and tallies them: an ack, or a non-fatal `code` naming `limit`.
subscribe_tally subscribe_all(raw_client& c,
                              const std::vector<std::pair<std::uint32_t, std::string>>& specs,
                              proto::errc code, std::string_view limit, std::size_t batch = 256,
                              std::string_view group = {}) {
  subscribe_tally t;
  for (std::size_t first = 0; first < specs.size() && t.unexpected.empty(); first += batch) {
    const std::size_t last = std::min(first + batch, specs.size());
    for (std::size_t i = first; i < last; ++i)
      c.queue_subscribe({specs[i].first, specs[i].second, group, specs[i].first});
    c.flush();
    for (std::size_t i = first; i < last; ++i) {
      const auto f = answer_to(c, specs[i].first);
      if (!f) {
        t.unexpected = "no answer to the subscribe of " + specs[i].second;
        break;
      }
      if (std::holds_alternative<ack_frame>(*f)) {
        ++t.accepted;
        continue;
      }
      const auto& e = std::get<error_frame>(*f);
      if (e.code == code && !e.fatal && e.request_id == specs[i].first &&
          e.message.find(limit) != std::string::npos) {
        ++t.refused;
      } else if (t.unexpected.empty()) {
        t.unexpected = "subscribe of " + specs[i].second + " answered with " + describe(*f);
      }
    }
  }
  return t;
}

/// A config file with loopback listeners on port 0, two workers and these
/// [limits] lines.
std::string write_config(const temp_dir& dir, const std::string& limits) {
  const auto path = dir.path() / "keyway.toml";
  std::ofstream(path)
      << "[server]\nworkers = 2\n[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = "
         "\"127.0.0.1:0\"\n[limits]\n"
      << limits;
  return path.string();
}

/// The end of keywayd's log, for failure messages (a daemon in trouble may
/// log a lot).
std::string log_tail(const keywayd_process& d, std::size_t bytes = 6000) {
  const std::string log = d.log();
  return log.size() <= bytes ? log : "[...]" + log.substr(log.size() - bytes);
}

/// keywayd survived the attack (a crash shows here, with its log, rather
/// than as a failed read later).
void require_running(const keywayd_process& d) {
  REQUIRE_MESSAGE(test::is_running(d.pid()), "keywayd is gone (its log is above)");
}

/// tooManyConnections (wire ErrorCode 13), once proto::errc has it.
template <class Errc>
void check_too_many_connections(const error_frame& e) {
  if constexpr (requires { Errc::too_many_connections; }) {
    CHECK_MESSAGE(e.code == Errc::too_many_connections,
                  "got " << proto::to_string(e.code) << ": " << e.message);
    CHECK(static_cast<unsigned>(proto::to_wire(Errc::too_many_connections)) == 13u);
  } else {
    FAIL_CHECK("proto::errc has no too_many_connections (wire ErrorCode 13) yet; got "
               << proto::to_string(e.code));
  }
}

}  // namespace

// ---- 1. queue-group members -----------------------------------------------------

TEST_CASE("hostile: a queue group takes at most limits.max_queue_group_members members") {
  temp_dir dir;
  keywayd_process d({"--config", write_config(dir, "max_queue_group_members = 16\n")});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  raw_client a = open_client(d.url(), "joiner-a");
  for (std::uint32_t sid = 1; sid <= 16; ++sid) a.subscribe(sid, "qo.x", "grp");
  a.queue_subscribe({17, "qo.x", "grp", 1717});
  a.flush();
  check_refused(answer_to(a, 1717), 1717, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");

  // The cap is the group's, whichever connection joins.
  raw_client b = open_client(d.url(), "joiner-b");
  b.queue_subscribe({1, "qo.x", "grp", 4242});
  b.flush();
  check_refused(answer_to(b, 4242), 4242, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");
  // Another group on the same pattern is a group of its own.
  b.subscribe(2, "qo.x", "other");
  a.ping();
  b.ping();

  // One delivery per group: the refused joins joined nothing.
  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked("qo.x", "k", "one").delivered == 2);

  // While and after A's 16 members leave, publishes are still acked.
  a.close();
  for (int i = 0; i < 50; ++i) {
    const ack_frame ack = pub.publish_acked("qo.x", numbered("key-", i), "after");
    CHECK(ack.delivered <= 2);
  }
  // Members that left free their places: a join goes through again (the
  // leave is applied asynchronously; retry for a bounded time).
  bool joined = false;
  std::string last;
  std::uint64_t id = 9000;
  for (const auto deadline = steady::now() + 5s; !joined && steady::now() < deadline;) {
    b.queue_subscribe({3, "qo.x", "grp", ++id});
    b.flush();
    const auto f = answer_to(b, id);
    REQUIRE(f.has_value());
    joined = std::holds_alternative<ack_frame>(*f);
    if (!joined) {
      last = describe(*f);
      std::this_thread::sleep_for(50ms);
    }
  }
  CHECK_MESSAGE(joined, "a join after the members left was still refused: " << last);
  CHECK(pub.publish_acked("qo.x", "k", "two").delivered == 2);

  require_running(d);
  check_latency("after the joins", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

TEST_CASE("hostile: the 1025th member of a queue group is refused at the default limit") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  raw_client a = open_client(d.url(), "joiner");
  std::vector<std::pair<std::uint32_t, std::string>> joins;
  for (std::uint32_t sid = 1; sid <= 1024; ++sid) joins.emplace_back(sid, "qo.big");
  const subscribe_tally t = subscribe_all(a, joins, proto::errc::too_many_subscriptions,
                                          "limits.max_queue_group_members", 256, "grp");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted == 1024);
  a.queue_subscribe({1025, "qo.big", "grp", 1025});
  a.flush();
  check_refused(answer_to(a, 1025), 1025, proto::errc::too_many_subscriptions,
                "limits.max_queue_group_members");

  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked("qo.big", "k", "x").delivered == 1);
  a.close();
  for (int i = 0; i < 20; ++i)
    CHECK(pub.publish_acked("qo.big", numbered("key-", i), "after").delivered <= 1);
  require_running(d);
  check_latency("after the joins", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

// ---- 2. replies count against the outbound budget ---------------------------------

namespace {

/// A client writes `unit` (a frame that earns a reply) as fast as it can
/// for 5 s, up to 200 MiB, and never reads. keywayd must stop reading from
/// it once the replies queued for it pass half of max_pending_bytes.
void flood_for_replies(const std::vector<std::byte>& unit) {
  constexpr std::uint64_t max_pending = 4 * mib;
  keywayd_process d({"--workers", "2", "--max-pending-bytes", std::to_string(max_pending)});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  rss_watch rss(d.pid());
  std::atomic<bool> done{false};
  flood_outcome flood;
  std::thread attacker([&] {
    flood = flood_unread(d.port(), unit, 200 * mib, 5s);
    done.store(true);
  });
  const latency_samples during = good.sample_until([&] { return done.load(); }, 10ms);
  attacker.join();
  const std::uint64_t growth = rss.growth();
  require_running(d);
  MESSAGE("the flood wrote " << flood.written / 1024 << " KiB"
                             << std::string(flood.peer_closed ? " and was closed" : "")
                             << "; keywayd's RSS grew by " << growth / 1024 << " KiB (from "
                             << rss.baseline() / 1024 << " KiB)");
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK(growth < max_pending + 32 * mib + asan_rss_slack);
  // It stopped reading: what was written fits in the replies it allows
  // itself plus the kernel's socket buffers (a few MiB each way).
  CHECK(flood.written < 64 * mib);
  check_latency("during the flood", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

}  // namespace

TEST_CASE("hostile: pings from a client that never reads are bounded by limits.max_pending_bytes") {
  flood_for_replies(ping_bytes(7));
}

TEST_CASE(
    "hostile: invalid publishes from a client that never reads are bounded by "
    "limits.max_pending_bytes") {
  const std::vector<std::byte> bad = publish_bytes("flood.*", "k", "", 7);
  {  // each one earns a non-fatal error frame: the attack's premise
    keywayd_process d({"--workers", "2"});
    INFO("keywayd's log, at the failure: " << log_tail(d));
    raw_client c = open_client(d.url(), "premise");
    c.send_raw(bad);
    const error_frame e = c.await_error();
    CHECK(e.code == proto::errc::invalid_subject);
    CHECK_FALSE(e.fatal);
    CHECK(e.request_id == 7);
  }
  flood_for_replies(bad);
}

// ---- 3. before hello --------------------------------------------------------------

TEST_CASE("hostile: before hello only a hello-sized frame is accepted") {
  // A long handshake timeout: a daemon that waits for a frame's body must
  // not be rescued by the timeout here.
  keywayd_process d({"--workers", "2", "--handshake-timeout", "30s"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  for (const std::uint32_t announced : {64u * 1024, 1024u * 1024}) {
    CAPTURE(announced);
    raw_client bad = raw_client::connect(d.url());
    const auto start = steady::now();
    // The segment table alone: 8 bytes, then a segment that takes the rest.
    bad.send_raw(words({seg_table(0, announced / 8 - 1)}));
    const error_frame e = expect_fatal_then_close(bad, proto::errc::frame_too_large, 5s);
    const auto took = std::chrono::duration_cast<ms>(steady::now() - start);
    CHECK_MESSAGE(took < 2s, "refused after " << took.count() << " ms, not at once");
    CHECK_MESSAGE(e.message.find("before hello") != std::string::npos, e.message);
  }

  {  // A hello with its name and token at their limits still fits.
    raw_client c = raw_client::connect(d.url());
    const std::string name(256, 'n'), token(4096, 't');
    c.queue_hello({proto::protocol_version, name, token});
    c.flush();
    const auto f = c.read(default_timeout);
    REQUIRE(f.has_value());
    CHECK_MESSAGE(std::holds_alternative<welcome_frame>(*f), describe(*f));
  }

  // 300 connections each send all but the last byte of a 1 MiB frame, before hello.
  constexpr int connections = 300;
  std::vector<std::byte> frame = words({seg_table(0, static_cast<std::uint32_t>(mib / 8 - 1))});
  frame.resize(mib - 1, std::byte{0});
  rss_watch rss(d.pid());
  std::vector<raw_client> held;
  int cut_off = 0;  // connections whose write failed: closed under them
  for (int i = 0; i < connections; ++i) {
    held.push_back(raw_client::connect(d.url()));
    try {
      held.back().send_raw(frame, 5s);
    } catch (const io_error&) {
      ++cut_off;
    }
  }
  std::this_thread::sleep_for(200ms);
  const std::uint64_t growth = rss.growth();
  MESSAGE(connections << " connections sent " << frame.size() << " bytes each before hello ("
                      << cut_off << " were cut off); keywayd's RSS grew by " << growth / 1024
                      << " KiB");
  CHECK(growth < 32 * mib + asan_rss_slack);
  held.clear();
  require_running(d);

  check_latency("after the frames", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, good.client());
}

// ---- 4. connections ---------------------------------------------------------------

TEST_CASE("hostile: a connection over limits.max_connections is refused with tooManyConnections") {
  keywayd_process d({"--workers", "2", "--max-connections", "3"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client second = open_client(d.url(), "second");
  raw_client third = open_client(d.url(), "third");

  raw_client over = raw_client::connect(d.url());
  std::vector<server_frame> seen;
  CHECK(over.wait_closed(5s, &seen));
  require_running(d);
  REQUIRE(seen.size() == 1);
  const auto* e = std::get_if<error_frame>(&seen[0]);
  REQUIRE_MESSAGE(e != nullptr, describe(seen[0]));
  check_too_many_connections<proto::errc>(*e);
  CHECK(e->fatal);
  CHECK_MESSAGE(e->message.find("limits.max_connections") != std::string::npos, e->message);

  // A place that frees up is taken (the close is counted asynchronously).
  third.close();
  bool welcomed = false;
  std::string last;
  for (const auto deadline = steady::now() + 5s; !welcomed && steady::now() < deadline;) {
    raw_client c = raw_client::connect(d.url());
    try {
      (void)c.hello("retry", 2s);
      welcomed = true;
    } catch (const io_error& x) {
      last = x.what();
      std::this_thread::sleep_for(50ms);
    }
  }
  CHECK_MESSAGE(welcomed, last);
  check_latency("after the refusal", baseline, good.sample(baseline_round_trips));
  good.settle();
  second.ping();
}

TEST_CASE("hostile: out of file descriptors keywayd backs off instead of spinning on accept") {
  keywayd_process d({"--workers", "2", "--max-connections", "1000"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  // The daemon raises its soft RLIMIT_NOFILE to the hard limit at start, so
  // the low limit is set on it, soft and hard, once it runs.
  const rlimit low{64, 64};
  REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, &low, nullptr) == 0);
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  const std::size_t fds = test::open_fd_count(d.pid());
  MESSAGE("keywayd has " << fds << " descriptors open before the flood, out of 64");
  REQUIRE(fds < 56);

  const std::size_t log_before = d.log().size();
  std::vector<raw_client> flood;
  for (int i = 0; i < 200; ++i)
    flood.push_back(raw_client::connect(d.url()));  // completes in the backlog
  const auto cpu_before = test::cpu_time(d.pid());
  REQUIRE(cpu_before.has_value());
  const auto start = steady::now();
  background_probe probe(good, 100ms);
  std::this_thread::sleep_for(3s);
  const auto cpu_after = test::cpu_time(d.pid());
  const auto wall = std::chrono::duration_cast<ms>(steady::now() - start);
  const latency_samples during = probe.finish();
  require_running(d);
  REQUIRE(cpu_after.has_value());
  const auto cpu = std::chrono::duration_cast<ms>(*cpu_after - *cpu_before);
  const std::string flood_log = d.log().substr(log_before);
  const auto lines = std::count(flood_log.begin(), flood_log.end(), '\n');
  MESSAGE("over " << wall.count() << " ms with 200 connections pending, keywayd used "
                  << cpu.count() << " ms of CPU and logged " << lines
                  << " lines; the first: " << flood_log.substr(0, flood_log.find('\n')));
  CHECK(cpu < 500ms);
  CHECK(lines < 100);
  check_latency("during the flood", baseline, during);

  flood.clear();
  std::optional<raw_client> fresh;
  std::string last;
  for (const auto deadline = steady::now() + 10s; !fresh && steady::now() < deadline;) {
    try {
      fresh.emplace(open_client(d.url(), "after-the-flood"));
    } catch (const io_error& x) {
      last = x.what();
      std::this_thread::sleep_for(100ms);
    }
  }
  REQUIRE_MESSAGE(fresh.has_value(), "no new client was served after the flood: " << last);
  good.settle();
  check_round_trip(*fresh, good.client());
  check_round_trip(good.client(), *fresh);
}

TEST_CASE("hostile: keywayd logs the max_connections it derives from RLIMIT_NOFILE") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  const std::string log = d.log();
  const auto at = log.find("max_connections");
  REQUIRE_MESSAGE(at != std::string::npos, "keywayd's start-up log:\n" << log);
  const auto begin = log.rfind('\n', at);
  const std::string line =
      log.substr(begin == std::string::npos ? 0 : begin + 1,
                 log.find('\n', at) - (begin == std::string::npos ? 0 : begin + 1));
  MESSAGE(line);
  CHECK(line.find("RLIMIT_NOFILE") != std::string::npos);
}

// ---- 5. what one subscription may cost ------------------------------------------

namespace {
/// `count` dot-separated tokens "t", the last one `last`.
std::string pattern_of(int count, std::string_view last = "t") {
  std::string p;
  for (int i = 0; i + 1 < count; ++i) p += "t.";
  return p + std::string(last);
}
}  // namespace

TEST_CASE("hostile: a pattern over limits.max_pattern_tokens is invalidSubject") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client c = open_client(d.url(), "long-patterns");

  std::uint32_t sid = 0;
  for (const std::string& p :
       {pattern_of(33), pattern_of(33, ">"), pattern_of(33, "*"), pattern_of(128)}) {
    CAPTURE(p);
    ++sid;
    c.queue_subscribe({sid, p, {}, 100 + sid});
    c.flush();
    check_refused(answer_to(c, 100 + sid), 100 + sid, proto::errc::invalid_subject,
                  "limits.max_pattern_tokens");
  }
  // 32 tokens are fine, and the refused ones subscribed nothing.
  c.subscribe(50, pattern_of(32));
  c.subscribe(51, pattern_of(32, ">"));
  raw_client pub = open_client(d.url(), "publisher");
  CHECK(pub.publish_acked(pattern_of(32), "k", "32").delivered == 2);
  CHECK(pub.publish_acked(pattern_of(33), "k", "33").delivered == 1);  // t×31.> only
  CHECK(c.collect(3, default_timeout).size() == 3);
  require_running(d);
  check_latency("after the patterns", baseline, good.sample(baseline_round_trips));
  check_daemon_serves(d, c);
}

TEST_CASE("hostile: a connection's subscriptions are bounded by limits.max_subscription_bytes") {
  constexpr std::uint64_t budget = mib;
  temp_dir dir;
  keywayd_process d(
      {"--config", write_config(dir, "max_subscription_bytes = " + std::to_string(budget) + "\n")});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  // 5,000 patterns of 32 tokens each that no other pattern shares (223 bytes).
  constexpr int patterns = 5000;
  std::vector<std::pair<std::uint32_t, std::string>> specs;
  for (int i = 0; i < patterns; ++i) {
    std::string p;
    for (int t = 0; t < 32; ++t) {
      unsigned n = static_cast<unsigned>(i * 32 + t);
      std::string token = "p";
      for (int k = 0; k < 5; ++k, n /= 36) token += "0123456789abcdefghijklmnopqrstuvwxyz"[n % 36];
      p += (t ? "." : "") + token;
    }
    specs.emplace_back(static_cast<std::uint32_t>(i + 1), std::move(p));
  }
  rss_watch rss(d.pid());
  raw_client hog = open_client(d.url(), "pattern-hog");
  const subscribe_tally t = subscribe_all(hog, specs, proto::errc::too_many_subscriptions,
                                          "limits.max_subscription_bytes");
  const std::uint64_t growth = rss.growth();
  require_running(d);
  MESSAGE(t.accepted << " patterns accepted, " << t.refused << " refused; keywayd's RSS grew by "
                     << growth / 1024 << " KiB");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted + t.refused == patterns);
  CHECK(t.refused > 0);  // the pattern text alone is over the budget
  CHECK(growth < budget + 64 * mib + asan_rss_slack);
  hog.ping();  // refusals are not fatal

  // Another connection has a budget of its own.
  raw_client other = open_client(d.url(), "other");
  other.subscribe(1, "small.one");
  CHECK(good.client().publish_acked("small.one", "k", "x").delivered == 1);
  CHECK(other.collect(1, default_timeout).size() == 1);
  check_latency("after the subscriptions", baseline, good.sample(baseline_round_trips));
  good.settle();
  check_daemon_serves(d, other);
}

// ---- 6. what one publish may cost to match ------------------------------------------

TEST_CASE("hostile: matching a publish is bounded by limits.max_pattern_shapes") {
  keywayd_process d({"--workers", "2"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);

  // Five patterns that match the 13-token subject a.a.…a: more than a
  // subject-cache entry holds, so every publish to it is matched afresh.
  // They belong to a sink that reads and drops its deliveries without
  // decoding them (so that the test's own threads leave the CPUs to the
  // daemon), and none matches the good client's subject: the good client must
  // not publish to the sink, which may fall behind and so pause its publishers.
  const std::string a13 = "a.a.a.a.a.a.a.a.a.a.a.a.a";
  const std::vector<std::string> matchers{a13, "a.>", "a.a.>", "*.*.*.*.*.*.*.*.*.*.*.*.*",
                                          "a.*.a.*.a.*.a.*.a.*.a.*.a"};
  flood_conn sink(d.port(), 1 << 20);
  sink.queue(hello_bytes("sink"));
  for (std::size_t i = 0; i < matchers.size(); ++i)
    sink.queue(frame_bytes([&](proto::encoder& e, proto::out_buffer& o) {
      return e.subscribe(o, {static_cast<std::uint32_t>(i + 1), matchers[i], {}, 0});
    }));
  REQUIRE(sink.write_until(steady::now() + 5s));
  // The barrier: once every matcher is in place, a publish to a.…a counts five
  // deliveries (the sink reads none of this; it is all small).
  std::uint32_t delivered = 0;
  for (const auto deadline = steady::now() + 5s; delivered != 5 && steady::now() < deadline;) {
    delivered = good.client().publish_acked(a13, "k", "barrier").delivered;
    if (delivered != 5) std::this_thread::sleep_for(20ms);
  }
  REQUIRE_MESSAGE(delivered == 5, "the sink's five patterns were not all subscribed");

  // Then every mix of `a` and `*` over 12 tokens, then `b`: 4,096 patterns,
  // 4,095 shapes (the cap is daemon-wide: the sink's patterns came first).
  // No publish below matches them.
  raw_client shapes = open_client(d.url(), "shapes");
  std::vector<std::pair<std::uint32_t, std::string>> specs;
  for (unsigned mask = 0; mask < 4096; ++mask) {
    std::string p;
    for (int t = 0; t < 12; ++t) p += (mask >> t & 1) ? "*." : "a.";
    specs.emplace_back(100 + mask, p + "b");
  }
  const subscribe_tally t = subscribe_all(shapes, specs, proto::errc::too_many_subscriptions,
                                          "limits.max_pattern_shapes", 512);
  MESSAGE(t.accepted << " of the 4096 a/* patterns accepted, " << t.refused << " refused");
  CHECK_MESSAGE(t.unexpected.empty(), t.unexpected);
  CHECK(t.accepted + t.refused == 4096);
  CHECK(t.accepted <= 256);

  std::atomic<bool> stop{false};
  std::thread drainer([&] {
    while (!stop.load() && sink.discard_input(20ms)) {
    }
  });
  std::vector<std::byte> attack;
  for (int i = 0; i < 20000; ++i) {
    const std::string subject = i % 4 == 0 ? a13 : numbered("a.a.a.a.a.a.a.a.a.a.a.a.v", i);
    const auto f = publish_bytes(subject, numbered("k", i % 64), "x");
    attack.insert(attack.end(), f.begin(), f.end());
  }
  std::atomic<bool> done{false};
  flood_outcome flood;
  std::thread attacker([&] {
    try {
      const auto end = steady::now() + 3s;
      flood_conn c(d.port());
      c.queue(hello_bytes("matcher"));
      while (steady::now() < end) {
        if (c.queued() < 64 * 1024) c.queue(attack);
        if (!c.write_until(std::min(end, steady::now() + 20ms))) break;
      }
      flood.written = c.written();
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
    }
    done.store(true);
  });
  // Meanwhile: the good client's round trips, and /readyz every 100 ms.
  background_probe probe(good, 10ms);
  int readyz_checks = 0, readyz_bad = 0;
  std::string readyz_last;
  while (!done.load()) {
    ++readyz_checks;
    try {
      const auto r = test::http_get(d.admin_port(), "/readyz", 2s);
      if (r.status != 200) {
        ++readyz_bad;
        readyz_last = std::to_string(r.status) + " " + r.body;
      }
    } catch (const std::exception& e) {
      ++readyz_bad;
      readyz_last = e.what();
    }
    std::this_thread::sleep_for(100ms);
  }
  const latency_samples during = probe.finish();
  attacker.join();
  stop.store(true);
  drainer.join();
  require_running(d);
  MESSAGE("the attacker wrote " << flood.written / 1024
                                << " KiB of publishes in 3 s, the sink read "
                                << sink.discarded() / 1024 << " KiB; /readyz answered "
                                << readyz_checks - readyz_bad << " of " << readyz_checks
                                << " times with 200"
                                << (readyz_bad ? ", last: " + readyz_last : std::string()));
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK(readyz_checks >= 5);
  CHECK(readyz_bad == 0);
  check_latency("during the publishes", baseline, during);

  good.settle();
  check_daemon_serves(d, good.client());
}

// ---- 7. slow consumers ------------------------------------------------------------------
// With --max-pending-bytes 1 MiB: small against the 20 MB by which the
// publisher below would outrun its subscriber, large against what is already
// on its way to the subscriber when its publisher is paused (a read of the
// publisher's, the mesh rings), which may still arrive within the grace.

TEST_CASE("hostile: a stalled subscriber is disconnected only after limits.slow_consumer_grace") {
  constexpr auto grace = 5s;  // the default
  keywayd_process d({"--workers", "2", "--max-pending-bytes", "1048576"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client stalled = raw_client::connect(d.url(), 4096);
  (void)stalled.hello("stalled-sub");
  stalled.subscribe(1, "stall.data");

  std::vector<std::byte> chunk;
  for (int i = 0; i < 64; ++i) {
    const auto f = publish_bytes("stall.data", numbered("k", i % 16), std::string(1024, 'x'));
    chunk.insert(chunk.end(), f.begin(), f.end());
  }
  background_probe probe(good, 20ms);
  std::atomic<bool> stop{false};
  flood_outcome flood;
  const auto start = steady::now();
  std::thread publisher([&] {
    try {
      flood_conn c(d.port(), 0, 64 * 1024);
      c.queue(hello_bytes("stall-publisher"));
      const auto end = steady::now() + grace + 15s;
      while (!stop.load() && steady::now() < end) {
        if (c.queued() < chunk.size()) c.queue(chunk);
        if (!c.write_until(steady::now() + 20ms)) break;
      }
      flood.written = c.written();
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
    }
  });
  // The daemon logs the close with the client's name and the code.
  std::optional<steady::time_point> decided;
  if (d.wait_log("(stalled-sub): slow_consumer", grace + 10s)) decided = steady::now();
  // The subscriber reads again at once, well within the close grace (2 s).
  std::vector<server_frame> seen;
  const bool closed = decided && stalled.wait_closed(10s, &seen);
  stop.store(true);
  publisher.join();
  const latency_samples during = probe.finish();
  require_running(d);

  REQUIRE_MESSAGE(decided.has_value(), "the stalled subscriber was never declared a slow consumer");
  const auto after = std::chrono::duration_cast<ms>(*decided - start);
  MESSAGE("declared a slow consumer " << after.count()
                                      << " ms after the flood began; limits.slow_consumer_grace is "
                                      << std::chrono::duration_cast<ms>(grace).count() << " ms");
  CHECK(after >= grace - 100ms);
  CHECK(closed);
  std::size_t deliveries = 0;
  std::vector<error_frame> errors;
  for (const auto& f : seen) {
    if (std::holds_alternative<message_frame>(f)) ++deliveries;
    if (const auto* e = std::get_if<error_frame>(&f)) errors.push_back(*e);
  }
  MESSAGE("after resuming, the subscriber read " << deliveries << " deliveries before the error");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::errc::slow_consumer);
  CHECK(errors[0].fatal);
  CHECK_MESSAGE(errors[0].message.find("limits.max_pending_bytes") != std::string::npos,
                errors[0].message);
  REQUIRE_FALSE(seen.empty());
  CHECK(std::holds_alternative<error_frame>(seen.back()));  // the last frame before EOF
  // The publisher was held back meanwhile, not closed.
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK_FALSE(flood.peer_closed);
  check_latency("while the subscriber stalled", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

TEST_CASE(
    "hostile: a publisher twice as fast as its only subscriber runs at the subscriber's pace") {
  keywayd_process d({"--workers", "2", "--max-pending-bytes", "1048576"});
  INFO("keywayd's log, at the failure: " << log_tail(d));
  latency_probe good(d.url());
  const us baseline = baseline_of(good);
  raw_client sub = raw_client::connect(d.url(), 64 * 1024);
  (void)sub.hello("paced-sub");
  sub.subscribe(1, "pace.data");

  constexpr int keys = 16;
  // Deliveries per second the subscriber takes (also under the sanitizers:
  // at a lower rate what the kernel's socket buffers absorb would hide
  // whether the publisher was held back).
  constexpr double sub_rate = 4000;
  constexpr auto duration = 5s;
  const std::string filler(1024, 'p');
  // Every frame is the same size: the index in 10 digits, then filler.
  auto frame = [&](std::uint64_t i) {
    std::string index = std::to_string(i);
    index.insert(0, 10 - index.size(), '0');
    std::string key = std::to_string(i % keys);
    key.insert(0, 2 - key.size(), '0');
    return publish_bytes("pace.data", "k" + key, index + filler);
  };
  REQUIRE(frame(0).size() == frame(1234567).size());

  std::atomic<bool> pub_done{false}, release{false};
  std::atomic<std::uint64_t> published{0};
  flood_outcome flood;
  std::thread publisher([&] {
    try {
      flood_conn c(d.port(), 0, 64 * 1024);
      c.queue(hello_bytes("paced-pub"));
      const auto start = steady::now();
      std::uint64_t i = 0;
      while (steady::now() - start < duration && !c.gone()) {
        const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
        const auto want = static_cast<std::uint64_t>(2 * sub_rate * elapsed);
        while (i < want && c.queued() < 256 * 1024) c.queue(frame(i++));
        if (!c.write_until(std::min(start + duration, steady::now() + 5ms))) break;
        if (c.queued() == 0) std::this_thread::sleep_for(1ms);
      }
      // What is queued goes out at whatever pace the daemon takes it.
      c.write_until(steady::now() + 30s);
      if (c.queued() != 0)
        flood.error = "the last " + std::to_string(c.queued()) + " bytes could not be written";
      published.store(i);
      flood.written = c.written();
      pub_done.store(true);
      // Held open until the subscriber has everything: a publisher that
      // closes may lose what the daemon read but did not yet route.
      for (const auto end = steady::now() + 60s; !release.load() && steady::now() < end;)
        std::this_thread::sleep_for(10ms);
      flood.peer_closed = c.gone();
    } catch (const std::exception& e) {
      flood.error = e.what();
      pub_done.store(true);
    }
  });

  struct seen_message {
    std::uint64_t index;
    std::string key;
    std::uint32_t core;
    std::uint64_t seq;
  };
  std::vector<seen_message> got;
  std::vector<std::string> sub_errors;
  bool sub_closed = false;
  std::atomic<bool> sub_done{false};
  std::thread subscriber([&] {
    try {
      const auto start = steady::now();
      const auto limit = start + duration + 40s;
      while (steady::now() < limit) {
        if (pub_done.load() && got.size() >= published.load()) break;
        // Paced while the publisher runs, then as fast as it can.
        const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
        if (!pub_done.load() && static_cast<double>(got.size()) >= sub_rate * elapsed) {
          std::this_thread::sleep_for(5ms);
          continue;
        }
        auto f = sub.read(5ms);
        if (!f) {
          if (sub.eof()) {
            sub_closed = true;
            break;
          }
          continue;
        }
        if (auto* m = std::get_if<message_frame>(&*f))
          got.push_back({std::stoull(m->payload.substr(0, 10)), m->key, m->owner_core, m->seq});
        else
          sub_errors.push_back(describe(*f));
      }
    } catch (const std::exception& e) {
      sub_errors.push_back(e.what());
    }
    sub_done.store(true);
  });
  const latency_samples during = good.sample_until([&] { return sub_done.load(); }, 10ms);
  subscriber.join();
  release.store(true);
  publisher.join();
  require_running(d);

  const std::uint64_t n = published.load();
  const double target = 2 * sub_rate * std::chrono::duration<double>(duration).count();
  MESSAGE("published " << n << " of the " << target << " the publisher wanted in "
                       << std::chrono::duration_cast<ms>(duration).count()
                       << " ms; the subscriber got " << got.size());
  CHECK_MESSAGE(flood.error.empty(), flood.error);
  CHECK_FALSE(flood.peer_closed);
  CHECK_FALSE(sub_closed);
  CHECK_MESSAGE(sub_errors.empty(), (sub_errors.empty() ? std::string() : sub_errors.front()));
  // The publisher was held back to about the subscriber's pace (plus what
  // the kernel's socket buffers absorb).
  CHECK(static_cast<double>(n) < 0.9 * target);
  // Nothing lost, nothing twice, and in order per key and per owner core.
  CHECK(got.size() == n);
  std::set<std::uint64_t> indexes;
  std::map<std::string, std::uint64_t> next_index, last_seq_of_key;
  std::map<std::uint32_t, std::uint64_t> last_seq_of_core;
  std::size_t out_of_order = 0;
  for (const auto& m : got) {
    indexes.insert(m.index);
    auto [ni, fresh_key] = next_index.try_emplace(m.key, m.index);
    if (!fresh_key && m.index != ni->second) ++out_of_order;
    ni->second = m.index + keys;
    auto [ks, k_new] = last_seq_of_key.try_emplace(m.key, m.seq);
    if (!k_new && m.seq <= ks->second) ++out_of_order;
    ks->second = m.seq;
    auto [cs, c_new] = last_seq_of_core.try_emplace(m.core, m.seq);
    if (!c_new && m.seq <= cs->second) ++out_of_order;
    cs->second = m.seq;
  }
  CHECK(indexes.size() == n);
  CHECK((n == 0 || *indexes.rbegin() == n - 1));
  CHECK(out_of_order == 0);
  check_latency("while the publisher was paced", baseline, during);
  good.settle();
  check_daemon_serves(d, good.client());
}

}  // namespace keyway::itest
