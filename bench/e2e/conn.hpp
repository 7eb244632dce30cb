// e2e::conn: one client connection of the load generator to one server
// (Keyway, nats-server or redis-server). The generator (generator.cpp) drives
// every system through this interface, so every system runs exactly the same
// scenario code. Two families implement it:
//  - socket_conn: a non-blocking TCP socket that the owning thread drives
//    with poll(), and a hand-written codec: keyway_conn.cpp (the proto codec),
//    nats_conn.cpp and redis_conn.cpp ("nats-raw", "redis-raw");
//  - the official client libraries (official_conn.cpp): nats.c ("nats") and
//    hiredis ("redis"), each doing its own I/O; see there.
//
// Threading: one thread at a time. The generator sets a conn up on its own
// thread, then hands it to the conn's worker thread (start and join order the
// hand-over). nats.c runs threads of its own behind a conn.
// Cost: publishes are encoded into an outbound buffer (the adapter's or the
// library's) and written in batches; deliveries are handed to `sink` with the
// time of the read that brought them in (one clock read per read, not per
// message).
//
// Every blocking call takes a deadline. Setup steps (connect, handshake,
// subscribe, sync) throw bench_error when the deadline passes or the server
// refuses; the hot loops use the non-throwing write_some()/read_some().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keyway::bench::e2e {

using clock = std::chrono::steady_clock;
using std::chrono::nanoseconds;

struct bench_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// steady_clock nanoseconds: the timestamp carried in every payload.
inline std::uint64_t to_ns(clock::time_point t) noexcept {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<nanoseconds>(t.time_since_epoch()).count());
}
inline std::uint64_t now_ns() noexcept {
  return to_ns(clock::now());
}

/// Writes a payload's head: [0, 8) send time (steady_clock ns), [8, 16) a tag
/// (what it holds is the scenario's).
inline void stamp(std::vector<std::byte>& payload, std::uint64_t ts, std::uint64_t tag) noexcept {
  std::memcpy(payload.data(), &ts, 8);
  std::memcpy(payload.data() + 8, &tag, 8);
}

/// nats and redis: the official clients (nats.c, hiredis); nats_raw and
/// redis_raw: the hand-written text-protocol adapters.
enum class system_kind { keyway, nats, redis, nats_raw, redis_raw };
std::string_view to_string(system_kind s) noexcept;
/// Redis, through either client: no queue groups, no request/reply.
inline bool is_redis(system_kind s) noexcept {
  return s == system_kind::redis || s == system_kind::redis_raw;
}

/// Receives deliveries from a conn, on the conn's thread.
class delivery_sink {
 public:
  virtual ~delivery_sink() = default;
  /// `now_ns` is when the bytes holding this delivery were read.
  virtual void on_delivery(std::span<const std::byte> payload, std::string_view reply_to,
                           std::uint64_t now_ns) = 0;
};

class conn {
 public:
  virtual ~conn();
  conn(const conn&) = delete;
  conn& operator=(const conn&) = delete;

  // ---- setup (throw bench_error) -----------------------------------------
  /// Protocol greeting: Keyway hello/welcome, NATS INFO/CONNECT, nothing for Redis.
  virtual void handshake(std::string_view name, clock::time_point deadline) = 0;
  /// Subscribes and waits until the server acknowledges it: afterwards no
  /// matching publish is missed. `group` empty = plain subscription; a
  /// non-empty group on Redis throws (it has none).
  virtual void subscribe(std::string_view subject, std::string_view group,
                         clock::time_point deadline) = 0;
  /// A round trip (Keyway ping/pong, NATS PING/PONG, Redis PING): returns
  /// once the server has handled everything this connection sent before.
  virtual void sync(clock::time_point deadline) = 0;

  // ---- data path ---------------------------------------------------------
  /// Appends one publish to the outbound buffer (nothing is written yet,
  /// unless the client library writes by itself, as nats.c's flusher does).
  /// `key` is used by Keyway only; NATS and Redis have no keys.
  virtual void queue_publish(std::string_view subject, std::span<const std::byte> key,
                             std::span<const std::byte> payload, std::string_view reply_to) = 0;
  /// The publishes queued since the last call are complete: an adapter that
  /// gathers them (Keyway's publishBatch, with set_batching(true)) encodes
  /// them now. Call it before writing.
  virtual void end_publishes() {}
  /// Whether queue_publish() may gather plain publishes into batches (Keyway
  /// with protocol version 2; the others have none and ignore it).
  void set_batching(bool on) noexcept { batching_ = on; }
  /// Bytes queued and not yet handed to the socket (0 where the library
  /// writes by itself).
  virtual std::size_t out_size() const noexcept = 0;
  /// Writes what the socket takes now; false once the connection failed.
  virtual bool write_some() noexcept = 0;
  /// Reads what has arrived and dispatches it; nonzero when something came
  /// in, 0 when nothing was ready. Marks the connection failed on EOF or error.
  virtual std::size_t read_some() noexcept = 0;
  /// At most `bytes` per read_some() (default: the adapter's whole buffer,
  /// 64 KiB or more). A deliberately slow reader (the slow_sub scenario)
  /// takes small bites, so that what it has not read stays in the socket
  /// and the server sees it as a slow consumer. The socket adapters only:
  /// the official clients read on their own terms.
  void set_read_limit(std::size_t bytes) noexcept { read_limit_ = bytes > 0 ? bytes : 1; }
  /// Waits until something can be read (or written, while output is queued)
  /// or `timeout` passes.
  virtual void wait(nanoseconds timeout) noexcept = 0;
  /// Writes everything queued, reading meanwhile. False on deadline or failure.
  bool flush(clock::time_point deadline) noexcept;

  bool failed() const noexcept { return !failure_.empty(); }
  const std::string& failure() const noexcept { return failure_; }
  /// Non-fatal errors the server reported (e.g. Keyway error frames, NATS -ERR).
  std::uint64_t server_errors() const noexcept { return server_errors_; }
  const std::string& last_server_error() const noexcept { return last_server_error_; }
  /// Replies a Redis publisher got (PUBLISH answers with a count); others 0.
  std::uint64_t publish_replies() const noexcept { return publish_replies_; }

  void set_sink(delivery_sink* s) noexcept { sink_ = s; }

 protected:
  conn() = default;

  /// Reads and dispatches until `done()` holds; throws bench_error naming
  /// `what` on deadline, EOF or failure.
  template <class Pred>
  void wait_until(Pred&& done, clock::time_point deadline, std::string_view what) {
    while (!done()) {
      if (failed()) throw bench_error(std::string(what) + ": " + failure());
      if (!write_some()) continue;
      if (read_some() > 0) continue;
      if (clock::now() >= deadline) throw bench_error(std::string(what) + ": timed out");
      wait(std::chrono::milliseconds(20));
    }
  }

  void server_error(std::string text) {
    ++server_errors_;
    last_server_error_ = std::move(text);
  }
  void fail(std::string why) {
    if (failure_.empty()) failure_ = std::move(why);
  }

  delivery_sink* sink_ = nullptr;
  std::uint64_t publish_replies_ = 0;
  bool batching_ = false;
  std::size_t read_limit_ = static_cast<std::size_t>(-1);

 private:
  std::string failure_;
  std::uint64_t server_errors_ = 0;
  std::string last_server_error_;
};

/// A conn over a non-blocking TCP socket of its own, with the codec in the
/// adapter: the adapter encodes into its outbound buffer and parses what
/// read_some() receives into in_space().
class socket_conn : public conn {
 public:
  ~socket_conn() override;

  void sync(clock::time_point deadline) override;
  bool write_some() noexcept override;
  /// One recv(); the bytes read.
  std::size_t read_some() noexcept override;
  void wait(nanoseconds timeout) noexcept override;
  /// Gives the socket up (see take_socket()): the caller closes it.
  int release_fd() noexcept { return std::exchange(fd_, -1); }

 protected:
  explicit socket_conn(int fd) : fd_(fd) {}

  // ---- adapter hooks -----------------------------------------------------
  /// Writable space for incoming bytes (at least 64 KiB).
  virtual std::span<std::byte> in_space() = 0;
  /// `n` bytes arrived in in_space(): parse every complete frame.
  virtual void in_commit(std::size_t n, std::uint64_t now) = 0;
  /// The first run of queued outbound bytes; consume after writing.
  virtual std::span<const std::byte> out_front() const noexcept = 0;
  virtual void out_consume(std::size_t n) noexcept = 0;
  virtual void queue_ping() = 0;

  int fd_ = -1;
  std::uint64_t pings_sent_ = 0;
  std::uint64_t pongs_received_ = 0;
};

/// The socket of a greeted (and subscribed) socket conn, for a caller that
/// speaks the protocol by hand from here on (capacity mode); the conn is
/// destroyed without closing it. Throws bench_error for the official
/// clients, which own their sockets.
int take_socket(std::unique_ptr<conn> c);

/// A blocking TCP connect to host:port with TCP_NODELAY, then non-blocking.
/// Throws bench_error.
int tcp_connect(const std::string& host, int port, clock::time_point deadline);

/// A connected, greeted client of `kind` (handshake() done). `name` shows up
/// in the server's logs. `send_asap`: for request/reply, a client library
/// that holds writes back to gather them (nats.c's flusher waits about 1 ms)
/// sends each at once instead (natsOptions_SetSendAsap, which nats.c's docs
/// advise for a replier, and which its own natsConnection_Request does for
/// requests). The other conns write when the generator says so and ignore it.
std::unique_ptr<conn> make_conn(system_kind kind, const std::string& host, int port,
                                std::string_view name, clock::time_point deadline,
                                bool send_asap = false);

std::unique_ptr<conn> make_keyway_conn(int fd);
std::unique_ptr<conn> make_nats_conn(int fd);
std::unique_ptr<conn> make_redis_conn(int fd);
/// The official clients (official_conn.cpp). nats.c connects in handshake();
/// hiredis connects here.
std::unique_ptr<conn> make_natsc_conn(const std::string& host, int port, bool send_asap);
std::unique_ptr<conn> make_hiredis_conn(const std::string& host, int port,
                                        clock::time_point deadline);
/// "nats.c 3.4.1, hiredis 0.14.1": the versions linked in.
std::string official_client_versions();

}  // namespace keyway::bench::e2e
