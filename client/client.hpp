// keyway::client::connection — one client connection to keywayd, over TCP
// (tcp://HOST:PORT) or a Unix socket (unix:///path): publish (fire-and-forget
// or acknowledged), subscribe with wildcards and queue groups, request/reply,
// flush and close. docs/client.md has examples.
//
// Threading model
//   - Each connection runs its own IO thread ("keyway-io") with a private
//     asio::io_context. The IO thread owns the socket, the decoder, the
//     subscription handlers and the timers.
//   - Every public method is thread-safe and may be called from any thread.
//   - Callbacks — message handlers, async completions (ack, reply, subscribe,
//     flush), connect_options::on_error and ::on_batch_end — run on the IO
//     thread, one at a time, in the order the frames arrived. A callback must
//     not block for long: while it runs no other frame of this connection is
//     read. Completions that fail at once (closed connection, invalid
//     argument) run inline on the calling thread instead.
//   - Blocking calls (publish_ack, subscribe, unsubscribe, request, flush)
//     wait on the calling thread. Called from a callback (the IO thread) they
//     would wait for themselves: they return errc::would_block at once; use
//     the *_async forms there. publish() and close() are fine in callbacks.
//   - Do not destroy a connection from one of its own callbacks.
//
// Cost and batching
//   - publish() validates the frame against the server's limits, then encodes
//     it under a mutex into the outbound buffer (one memcpy-sized copy of the
//     payload, no allocation in the steady state). The IO thread writes
//     everything queued in one socket write; publishes that arrive while a
//     write is in flight go out together in the next one. Only the first
//     publish of a batch wakes the IO thread.
//   - With protocol version 2, consecutive plain publishes (no headers,
//     reply_to or ack) to one subject wait for that write in one
//     publishBatch frame (up to 64 KiB of entries; larger payloads go as
//     publish frames): about 8 bytes of framing per message instead of ~100.
//     The server routes each entry by its own key, in order.
//   - Against a server of protocol version 1, which refuses any other
//     version, connect() reconnects once saying 1 (within connect_timeout);
//     publishes then go one frame each, and server_info::protocol_version
//     says 1.
//   - Backpressure: when more than connect_options::max_pending_bytes are
//     queued (the server pushes back, or the network is slow), publish()
//     blocks the calling thread until the IO thread has written some — except
//     on the IO thread itself, which never blocks.
//   - Deliveries are decoded in place and handed to the handler as a reused
//     `message` (no allocation once its strings have grown to size).
//
// Ordering: frames go out in the order their calls took the mutex, so one
// thread's publishes keep their order (and the server keeps it per key).
// The only exception: the first requests of a connection wait for its reply
// inbox subscription to be acknowledged, so they may go out after publishes
// made later.
#pragma once

#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "client/errc.hpp"
#include "client/message.hpp"
#include "client/url.hpp"
#include "proto/decoder.hpp"
#include "proto/encoder.hpp"
#include "proto/limits.hpp"
#include "proto/out_buffer.hpp"

namespace keyway::client {

struct connect_options {
  /// Shown in the server's logs and /status.
  std::string client_name = "keyway-client";
  /// Empty = no token.
  std::string auth_token;
  /// Connect and hello/welcome handshake, together.
  std::chrono::milliseconds connect_timeout{5000};
  /// Deadline of acks (publish_ack, subscribe, unsubscribe), flush and of the
  /// graceful part of close().
  std::chrono::milliseconds op_timeout{10000};
  /// Outbound bytes queued before publish() blocks (see Backpressure above).
  std::size_t max_pending_bytes = 8u << 20;
  /// Asynchronous errors, on the IO thread: a server error frame that answers
  /// no pending call (e.g. a fire-and-forget publish the server refused), and,
  /// once, the loss of the connection — with the server's fatal error frame
  /// (code and message) when one arrived. Not called for close().
  std::function<void(const error&)> on_error;
  /// Called on the IO thread after the frames of one socket read have been
  /// dispatched: the place to flush output buffered by message handlers.
  std::function<void()> on_batch_end;
};

/// Options of publish() and publish_ack(); views, valid during the call.
struct publish_options {
  std::string_view key;  // bytes; empty = route by subject
  std::span<const header> headers;
  std::string_view reply_to;  // empty = none
};

struct subscribe_options {
  std::string_view queue_group;  // empty = none
};

struct request_options {
  std::string_view key;
  std::span<const header> headers;
};

/// What the server said in its welcome frame.
struct server_info {
  std::string server_id;
  std::string server_version;
  std::uint32_t protocol_version = 0;
  std::uint32_t worker_count = 0;  // message.owner_core is in [0, worker_count)
  /// The server's limits (defaults where the server announced 0).
  proto::limits limits;
  std::uint32_t max_subscriptions = 0;  // 0 = not announced
  std::uint64_t max_pending_bytes = 0;  // 0 = not announced
};

/// A subscription handle: the sid the server stamps on its deliveries.
struct subscription {
  std::uint32_t sid = 0;
};

class connection {
 public:
  using clock = std::chrono::steady_clock;
  using message_handler = std::function<void(const message&)>;
  using ack_handler = std::function<void(outcome<std::uint32_t>)>;
  using reply_handler = std::function<void(outcome<message>)>;
  using subscribe_handler = std::function<void(outcome<subscription>)>;
  using done_handler = std::function<void(outcome<void>)>;

  /// Connects, sends hello and waits for welcome (connect_options::connect_timeout).
  /// Errors: invalid_url, connect_failed (e.g. connection refused), timeout,
  /// or the server's error code (auth_failed, shutting_down, ...).
  static outcome<std::unique_ptr<connection>> connect(std::string_view url,
                                                      connect_options options = {});

  /// close(), then joins the IO thread.
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  const server_info& info() const noexcept { return info_; }
  const server_url& url() const noexcept { return url_; }
  /// False once close() was called or the connection was lost.
  bool is_open() const noexcept { return open_.load(std::memory_order_acquire); }

  /// Fire-and-forget. Returns once the frame is queued (it may block for
  /// backpressure). Errors: closed, or a local check with the server's limits
  /// (invalid_subject, invalid_key, payload_too_large, protocol). A refusal by
  /// the server later goes to on_error.
  outcome<void> publish(std::string_view subject, std::string_view payload,
                        const publish_options& options = {});

  /// Publishes with an ack id and waits for the server's answer: the number
  /// of subscribers reached, or the server's error. Timeout: op_timeout.
  outcome<std::uint32_t> publish_ack(std::string_view subject, std::string_view payload,
                                     const publish_options& options = {});
  /// Same, pipelined: `done` runs on the IO thread when the answer arrives.
  void publish_ack_async(std::string_view subject, std::string_view payload,
                         const publish_options& options, ack_handler done);

  /// Subscribes and waits for the server's ack: once it returns, every later
  /// matching publish reaches `handler` (on the IO thread). Timeout: op_timeout.
  outcome<subscription> subscribe(std::string_view pattern, message_handler handler,
                                  const subscribe_options& options = {});
  void subscribe_async(std::string_view pattern, message_handler handler,
                       const subscribe_options& options, subscribe_handler done);
  /// Stops calling the handler at once, then waits for the server's ack.
  outcome<void> unsubscribe(subscription sub);
  void unsubscribe_async(subscription sub, done_handler done);

  /// Publishes `payload` to `subject` with a reply_to in this connection's
  /// inbox and waits for the first reply. Errors: timeout (after `timeout`),
  /// no_responders (from the server: nobody subscribes to `subject`), closed.
  outcome<message> request(std::string_view subject, std::string_view payload,
                           std::chrono::milliseconds timeout, const request_options& options = {});
  void request_async(std::string_view subject, std::string_view payload,
                     std::chrono::milliseconds timeout, const request_options& options,
                     reply_handler done);

  /// Waits until everything queued before the call is written and the server
  /// answered a ping sent after it (so it has processed all of it).
  outcome<void> flush();
  void flush_async(done_handler done);

  /// Graceful: writes what is queued, half-closes, waits (up to op_timeout)
  /// for the server to finish reading, then closes. Pending calls fail with
  /// errc::closed. Joins the IO thread unless called on it. Idempotent.
  void close();

 private:
  enum class state { connecting, open, closing, closed };
  enum class op_kind : std::uint8_t { publish_ack, subscribe, unsubscribe, inbox, request, ping };
  enum class inbox_state : std::uint8_t { none, subscribing, ready };
  using deadline_map = std::multimap<clock::time_point, std::uint64_t>;

  /// A call waiting for the server: keyed by its ack id / request id / ping id.
  struct pending_op {
    op_kind kind = op_kind::publish_ack;
    ack_handler on_ack;      // every kind but request
    reply_handler on_reply;  // request
    std::string what;        // "publish to 'a.b'", for timeout messages
    std::chrono::milliseconds timeout{0};
    std::optional<deadline_map::iterator> deadline;
  };
  /// A request held until the inbox subscription is acknowledged.
  struct deferred_request {
    std::uint64_t id = 0;
    std::string subject, payload, key;
    std::vector<received_header> headers;
  };

  connection(server_url url, connect_options options);

  // ---- any thread (client.cpp) ---------------------------------------------
  bool on_io_thread() const noexcept { return std::this_thread::get_id() == io_thread_id_.load(); }
  error closed_error() const;
  error closed_error_locked() const;
  outcome<void> check_publish(std::string_view subject, std::string_view key,
                              std::string_view payload, std::span<const header> headers,
                              std::string_view reply_to) const;
  /// Waits (mu_ held through `lock`) until out_ has room, unless on the IO
  /// thread. False if the connection is not open.
  bool wait_room_locked(std::unique_lock<std::mutex>& lock);
  /// out_, after encoding the publishes staged for a publishBatch (mu_ held):
  /// every frame goes in through it, so the batch keeps its place in order.
  proto::out_buffer& out_locked();
  /// Stages a plain publish for the next publishBatch (protocol version 2),
  /// sealing the one open first if it is for another subject or full. False
  /// when it must go as a publish frame (version 1, or a large entry).
  bool stage_publish_locked(std::string_view subject, std::string_view key, std::string_view payload);
  /// Bytes queued for the writer, staged ones included (mu_ held).
  std::size_t queued_locked() const noexcept { return out_.size() + batch_entries_.size(); }
  /// Encodes one publish (into out_, or staged for a batch) and wakes the writer (mu_ held).
  outcome<void> encode_publish_locked(std::string_view subject, std::string_view key,
                                      std::string_view payload, std::span<const header> headers,
                                      std::string_view reply_to, std::uint64_t ack_id);
  std::uint64_t add_pending_locked(pending_op op);
  std::optional<pending_op> take_pending_locked(std::uint64_t id);
  void kick_locked();
  std::string inbox_reply_to(std::uint64_t id) const;

  // ---- IO thread (client_io.cpp) --------------------------------------------
  void run_io();
  void start_connect(std::function<void(outcome<void>)> done);
  void on_connected(std::error_code ec);
  bool retry_with_version_1(std::string_view refusal);
  void send_hello();
  void read_handshake_frame(std::size_t have, std::size_t need);
  void on_handshake_frame();
  void finish_handshake(outcome<void> result);
  void start_read();
  void on_read(std::error_code ec, std::size_t n);
  void dispatch(const proto::frame& f);
  void on_message(const proto::delivery_view& m);
  void on_inbox_reply();
  void on_ack(std::uint64_t id, std::uint32_t delivered);
  void on_error_frame(proto::wire::Error::Reader e);
  void complete(pending_op& op, std::uint64_t id, outcome<std::uint32_t> result);
  void complete_inbox(outcome<std::uint32_t> result);
  void start_write();
  void on_write(std::error_code ec, std::size_t n);
  void arm_timer();
  void on_deadline();
  void begin_close();
  void half_close();
  void finish_close();
  /// The connection is gone: fail every pending call, report `reason` once.
  void shut_down(const error& reason, bool report);
  void report(const error& e);

  const server_url url_;
  const connect_options options_;
  server_info info_;          // written by the handshake, read-only after connect()
  proto::limits limits_;      // likewise
  std::string inbox_prefix_;  // "_INBOX.<random>." — immutable
  std::atomic<bool> open_{false};
  std::atomic<std::uint32_t> next_sid_{1};
  std::atomic<std::uint32_t> inbox_sid_{0};
  std::atomic<std::thread::id> io_thread_id_{};

  // ---- IO thread only -------------------------------------------------------
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  asio::generic::stream_protocol::socket socket_;
  asio::ip::tcp::resolver resolver_;
  asio::steady_timer connect_timer_;
  asio::steady_timer deadline_timer_;
  asio::steady_timer close_timer_;
  std::function<void(outcome<void>)> connect_done_;
  std::vector<std::byte> handshake_bytes_;
  std::uint32_t hello_version_ = proto::protocol_version;  // 1 after a version-1 server refused more
  std::string fallback_from_;  // why hello_version_ dropped to 1, for a later connect error
  asio::generic::stream_protocol::endpoint peer_;  // the address the socket connected to
  std::optional<proto::decoder> decoder_;
  proto::out_buffer writing_;
  std::array<asio::const_buffer, 16> iov_;
  std::unordered_map<std::uint32_t, message_handler> subs_;
  message rx_;                  // the reused delivery handed to handlers
  std::optional<error> fatal_;  // the server's fatal error frame, if one came
  bool half_closed_ = false;

  // ---- guarded by mu_ -------------------------------------------------------
  mutable std::mutex mu_;
  std::condition_variable room_cv_;  // out_ shrank or the connection closed
  state state_ = state::connecting;
  std::optional<proto::encoder> encoder_;
  proto::out_buffer out_;
  bool write_scheduled_ = false;  // a start_write is posted or a write is in flight
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, pending_op> pending_;
  deadline_map deadlines_;
  std::optional<clock::time_point> timer_at_;  // what the IO thread's timer is armed for
  inbox_state inbox_ = inbox_state::none;
  std::uint64_t inbox_op_ = 0;
  std::vector<deferred_request> deferred_;
  std::vector<proto::header> header_scratch_;
  // Plain publishes staged for one publishBatch frame: sealed into out_ by
  // out_locked() when another frame is queued, the subject changes, the batch
  // is full or the writer takes out_.
  static constexpr std::size_t max_batch_bytes = 64 * 1024;
  std::string batch_subject_;
  std::vector<std::byte> batch_entries_;
  std::uint32_t batch_count_ = 0;
  std::string close_reason_;  // why the connection closed, for later calls' errors

  std::mutex join_mu_;  // serialises close()'s join

  std::thread io_thread_;
};

/// The same as connection::connect.
inline outcome<std::unique_ptr<connection>> connect(std::string_view url,
                                                    connect_options options = {}) {
  return connection::connect(url, std::move(options));
}

}  // namespace keyway::client
