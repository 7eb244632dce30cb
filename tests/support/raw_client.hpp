// raw_client: a small synchronous Keyway client for integration tests, built
// straight on the proto codec (not on keyway::client), so a test can send any
// frame — well-formed, out of order or hostile bytes — and see exactly which
// frames the daemon answers with, in order. A messageBatch (protocol version
// 2) is read as the Message frames it stands for, one message_frame each, in
// order; message_batches() counts them.
//
// Every read and every write takes a deadline: nothing here can block for
// ever. Failures that make the rest of a test meaningless (connect refused,
// a write that times out, a welcome that never comes) throw io_error, which
// doctest reports as a failed test case.
//
// Threading: one thread at a time per raw_client; tests that need concurrent
// publishers or readers give each thread its own client.
// Cost: test code; each client owns an encoder (a lazily touched scratch of
// limits.max_frame bytes) and a decoder.
#pragma once

#include "proto/codec.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace keyway::itest {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

/// Generous default for waits that should succeed (ASan builds on 2 cores).
inline constexpr ms default_timeout = 10s;

struct io_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- frames from the server, copied out of the decoder ----------------------

struct welcome_frame {
  std::string server_id;
  std::string server_version;
  std::uint32_t protocol_version = 0;
  std::uint32_t worker_count = 0;
  std::uint32_t max_payload = 0;
  std::uint32_t max_frame = 0;
  std::uint32_t max_segments = 0;
  std::uint64_t max_pending_bytes = 0;
  std::vector<std::string> connect_urls;
};

struct message_frame {
  std::uint32_t sid = 0;
  std::string subject;
  std::string key;
  std::string payload;
  std::string reply_to;
  std::vector<std::pair<std::string, std::string>> headers;
  std::uint32_t owner_core = 0;
  std::uint64_t seq = 0;
};

struct ack_frame {
  std::uint64_t request_id = 0;
  std::uint32_t delivered = 0;
};

struct error_frame {
  proto::errc code = proto::errc::ok;
  std::string message;
  std::uint64_t request_id = 0;
  bool fatal = false;
  std::string reply_to;
};

struct ping_frame {
  std::uint64_t id = 0;
};
struct pong_frame {
  std::uint64_t id = 0;
};
/// The server is shutting down (lame duck): move to another server.
struct draining_frame {
  std::string reason;
  std::uint32_t grace_ms = 0;
};
/// A kind a server must not send to a client (or an unknown one).
struct other_frame {
  int which = -1;
};

using server_frame = std::variant<welcome_frame, message_frame, ack_frame, error_frame, ping_frame,
                                  pong_frame, draining_frame, other_frame>;

/// One line for failure messages, e.g. "error{protocol fatal id 0 '...'}".
std::string describe(const server_frame& f);
/// For failure messages about deliveries that should not have come: their
/// count and the first of them, e.g. "2 deliveries, the first message{...}".
std::string describe_deliveries(const std::vector<message_frame>& ms);

inline std::span<const std::byte> as_bytes(std::string_view s) noexcept {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

/// One entry of a publishBatch, as a test writes it (binary-safe strings).
struct batch_item {
  std::string key;
  std::string payload;
};

/// The wire bytes of `items` as publishBatch.entries: proto::write_batch_entry
/// for each, back to back.
std::vector<std::byte> batch_entries(std::span<const batch_item> items);

// ---- the client --------------------------------------------------------------

class raw_client {
 public:
  /// Connects to tcp://HOST:PORT or unix:///path (blocking connect, then the
  /// socket is non-blocking). rcvbuf > 0 sets SO_RCVBUF before connecting, to
  /// make a client that never reads fill up quickly. Throws io_error.
  static raw_client connect(std::string_view url, int rcvbuf = 0);

  raw_client(raw_client&& other) noexcept;
  raw_client& operator=(raw_client&& other) noexcept;
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;
  ~raw_client();

  /// Closes the socket now (the daemon sees EOF). Later reads report eof().
  void close() noexcept;
  bool is_open() const noexcept { return fd_ >= 0; }

  // ---- sending -----------------------------------------------------------
  /// Writes every byte before `timeout` passes; throws io_error if the peer
  /// is gone or the time runs out (the server stopped reading).
  void send_raw(std::span<const std::byte> bytes, ms timeout = default_timeout);
  void send_raw(std::string_view bytes, ms timeout = default_timeout) {
    send_raw(as_bytes(bytes), timeout);
  }

  /// Encode into the outbound queue; nothing is written until flush().
  void queue_hello(const proto::hello_fields& f);
  void queue_publish(const proto::publish_fields& f);
  void queue_subscribe(const proto::subscribe_fields& f);
  void queue_unsubscribe(std::uint32_t sid, std::uint64_t request_id);
  void queue_ping(std::uint64_t id);
  /// A publishBatch with these very fields: `entries` may be any bytes and
  /// `count` any number, so a test can lie about either.
  void queue_publish_batch(std::string_view subject, std::uint32_t count,
                           std::span<const std::byte> entries);
  /// Writes everything queued (see send_raw for the failure modes).
  void flush(ms timeout = default_timeout);
  std::size_t queued_bytes() const noexcept { return out_.size(); }
  /// The encoded bytes of one frame, without sending it (to split, corrupt...).
  template <class Encode>
  std::vector<std::byte> encode_only(Encode&& encode) {
    proto::out_buffer tmp;
    auto r = encode(*enc_, tmp);
    if (!r) throw io_error("encoding failed: " + r.error().message());
    std::vector<std::byte> v;
    tmp.drain_to(v);
    return v;
  }

  void send_hello(std::uint32_t version = proto::protocol_version, std::string_view name = "itest");
  /// One publishBatch of `items` to `subject`, sent now; its count is
  /// items.size() unless `count_override` says otherwise.
  void send_publish_batch(std::string_view subject, std::span<const batch_item> items,
                          std::optional<std::uint32_t> count_override = std::nullopt);
  /// Fire and forget (ack_id 0 unless given).
  void publish(std::string_view subject, std::string_view key, std::string_view payload,
               std::string_view reply_to = {}, std::uint64_t ack_id = 0);

  // ---- reading -----------------------------------------------------------
  /// The next frame: a kept-back one first, else one read from the socket
  /// before `timeout`. nullopt on timeout or when the peer closed (eof()).
  /// timeout 0 returns what is already readable without waiting.
  std::optional<server_frame> read(ms timeout);
  /// The peer closed (EOF or reset); frames already buffered can still be read.
  bool eof() const noexcept { return eof_; }
  bool reset_by_peer() const noexcept { return reset_; }
  std::uint64_t bytes_received() const noexcept { return bytes_in_; }
  /// messageBatch frames decoded so far (their deliveries come as message_frames).
  std::uint64_t message_batches() const noexcept { return message_batches_; }

  /// Reads until a frame satisfies `pred`, or the deadline passes or the peer
  /// closes (nullopt). Frames that do not match are kept back, in order, for
  /// later reads.
  template <class Pred>
  std::optional<server_frame> wait_for(Pred&& pred, ms timeout) {
    const auto deadline = steady::now() + timeout;
    std::vector<server_frame> skipped;
    std::optional<server_frame> found;
    // The backlog first (without waiting), then the socket.
    while (!backlog_.empty()) {
      server_frame f = std::move(backlog_.front());
      backlog_.pop_front();
      if (pred(f)) {
        found = std::move(f);
        break;
      }
      skipped.push_back(std::move(f));
    }
    while (!found) {
      auto f = read_socket(deadline);
      if (!f) break;
      if (pred(*f))
        found = std::move(f);
      else
        skipped.push_back(std::move(*f));
    }
    for (auto it = skipped.rbegin(); it != skipped.rend(); ++it)
      backlog_.push_front(std::move(*it));
    return found;
  }

  /// Deliveries, in arrival order, until `n` were read or the deadline passes.
  /// Other frames are kept back.
  std::vector<message_frame> collect(std::size_t n, ms timeout);
  /// Deliveries until none arrives for `quiet` (at most `limit` in all).
  std::vector<message_frame> collect_until_quiet(ms quiet, ms limit = 30s);
  /// Reads (and records) frames until the peer closes. False if it did not
  /// close before the deadline.
  bool wait_closed(ms timeout, std::vector<server_frame>* seen = nullptr);

  // ---- request/response helpers (throw io_error on failure) ----------------
  /// Sends hello and waits for welcome.
  welcome_frame hello(std::string_view name = "itest", ms timeout = default_timeout);
  /// The same with hello.protocolVersion = `version` (the highest this client
  /// claims to speak); the welcome carries the version agreed.
  welcome_frame hello_version(std::uint32_t version, std::string_view name = "itest",
                              ms timeout = default_timeout);
  /// Subscribes with a request id and waits for the ack: afterwards no
  /// matching publish is missed.
  void subscribe(std::uint32_t sid, std::string_view pattern, std::string_view group = {},
                 ms timeout = default_timeout);
  void unsubscribe(std::uint32_t sid, ms timeout = default_timeout);
  /// Publishes with a fresh ack id and waits for its ack.
  ack_frame publish_acked(std::string_view subject, std::string_view key, std::string_view payload,
                          ms timeout = default_timeout);
  /// The ack (or error) answering request `id`; throws if an error answers it.
  ack_frame await_ack(std::uint64_t id, ms timeout = default_timeout);
  /// The next error frame (others are kept back); throws on timeout.
  error_frame await_error(ms timeout = default_timeout);
  /// A ping/pong round trip: every frame this client sent before has been
  /// handled by its connection, every publish routed by its owner, and what
  /// those publishes delivered to this client came before the pong (kept back
  /// for later reads).
  void ping(ms timeout = default_timeout);

  /// A deterministic barrier on this connection: a ping, then every frame
  /// that came before its pong (kept-back frames first), consumed and
  /// returned in order. The server writes a connection's frames in order, so
  /// an empty result proves nothing was queued for this client before the
  /// pong: what the server sends only after the barrier cannot be excluded
  /// (no test can prove a future silence). Throws io_error if no pong comes.
  std::vector<server_frame> barrier(ms timeout = default_timeout);

  /// Request ids this client picks for itself (subscribe, publish_acked, ping)
  /// start here, far from the small ids tests choose by hand.
  static constexpr std::uint64_t auto_id_base = std::uint64_t{1} << 40;

 private:
  explicit raw_client(int fd);
  std::optional<server_frame> read_socket(steady::time_point deadline);
  std::optional<server_frame> decode_one();
  /// Reads more bytes; false if the deadline passed with nothing new.
  bool fill(steady::time_point deadline);
  void check(const result<std::size_t>& r, const char* what);
  void close_fd() noexcept;
  /// For failure messages: the error frames among the kept-back frames.
  std::string kept_back_summary() const;

  int fd_ = -1;
  std::unique_ptr<proto::decoder> dec_;  // neither is movable; the client is
  std::unique_ptr<proto::encoder> enc_;
  proto::out_buffer out_;
  std::deque<server_frame> backlog_;
  std::deque<server_frame> unbatched_;  // the rest of the last messageBatch decoded
  std::uint64_t message_batches_ = 0;
  bool eof_ = false;
  bool reset_ = false;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t next_id_ = auto_id_base;
};

/// Sentinels for "nothing (more) is delivered" checks, instead of waiting
/// for a quiet window. Per-key total order makes them a deterministic
/// barrier: a sentinel published by connection P on key K after message X
/// (also from P, on K) is delivered to a subscriber after X, if X is
/// delivered to it at all. So once a subscriber has every sentinel, anything
/// earlier on those keys from those publishers has arrived, or never will.
/// Each sentinel must match the subscriber's subscription, be published from
/// the same connection and on the same key as the message(s) it fences off.
class sentinels {
 public:
  sentinels();  // a tag of its own: sentinels of different sets never mix
  /// `pub` publishes (now) one sentinel to `subject` on each of `keys`.
  void publish(raw_client& pub, std::string_view subject, std::span<const std::string> keys);
  void publish(raw_client& pub, std::string_view subject, std::string_view key);
  bool is_sentinel(const message_frame& m) const;
  std::size_t count() const noexcept { return count_; }
  /// `sub`'s deliveries until it has received every sentinel published so far
  /// (once each, for each of its matching subscriptions: `per_sentinel`
  /// copies); returns the other deliveries, in arrival order. Other frames
  /// are kept back. Throws io_error if the sentinels do not all come in time.
  std::vector<message_frame> await(raw_client& sub, ms timeout = default_timeout,
                                   std::size_t per_sentinel = 1) const;

 private:
  std::string tag_;
  std::size_t count_ = 0;
};

/// A connected client that has completed the handshake.
inline raw_client open_client(const std::string& url, std::string_view name = "itest") {
  raw_client c = raw_client::connect(url);
  (void)c.hello(name);
  return c;
}

}  // namespace keyway::itest
