// <keyway/client.hpp>: the Keyway C++ client. One `connection` to keywayd over
// TCP (tcp://HOST:PORT) or a Unix socket (unix:///path): publish
// (fire-and-forget or acknowledged), subscribe with wildcards and queue groups
// (callback or synchronous), request/reply, flush, drain and close — and it
// rides through server restarts: automatic reconnect to any server of its
// list, with every subscription re-established. docs/client.md has examples.
//
// This header and the ones it includes use the standard library only.
//
// Threading model
//   - Each connection runs its own IO thread ("keyway-io"). The IO thread
//     owns the socket, the subscription handlers and the timers.
//   - Every public method is thread-safe and may be called from any thread.
//   - Callbacks — message handlers, async completions (ack, reply, subscribe,
//     flush) and the connect_options callbacks — run on the IO thread, one at
//     a time, in the order the frames arrived. A callback must not block for
//     long: while it runs no other frame of this connection is read.
//     Completions that fail at once (closed connection, invalid argument) run
//     inline on the calling thread instead.
//   - Blocking calls (publish_ack, subscribe, unsubscribe, request, flush,
//     drain, next_message) wait on the calling thread. Called from a callback
//     (the IO thread) they would wait for themselves: they return
//     errc::would_block at once; use the *_async forms there. publish(),
//     respond() and close() are fine in callbacks.
//   - Do not destroy a connection from one of its own callbacks.
//
// Reconnect (connect_options::reconnect)
//   - When the link drops (the server restarted, the network failed, or the
//     server announced it is draining), the connection tries the servers of
//     its list in turn — the URLs given to connect(), then the ones servers
//     announced in their welcome — with jittered exponential backoff, until
//     it is back or max_attempts failed in a row. on_disconnected,
//     on_reconnected and on_closed tell the application.
//   - Once back, every live subscription (with its queue group) is
//     subscribed again before anything buffered is sent.
//   - Publishes made while disconnected wait in the reconnect buffer
//     (reconnect_buffer_bytes); over it publish() fails with errc::buffer_full.
//   - Calls that were waiting for the server when the link dropped — an
//     acknowledged publish, a request, a flush — fail with
//     errc::connection_lost: the server may or may not have acted on them.
//     Nothing is resent silently, so there are no hidden duplicates.
//     Fire-and-forget publishes that were already written to the lost socket
//     are lost (at most once), and counted in statistics::lost_publishes.
//
// Cost and batching
//   - publish() validates the frame against the server's limits, then encodes
//     it into the outbound buffer (one copy of the payload, no allocation in
//     the steady state). The IO thread writes everything queued in one socket
//     write. Consecutive plain publishes to one subject travel in one
//     publishBatch frame (about 8 bytes of framing per message).
//   - Backpressure: when more than max_pending_bytes are queued, publish()
//     blocks the calling thread until the IO thread has written some (never
//     on the IO thread itself).
//
// Ordering: frames go out in the order their calls were made, so one
// thread's publishes keep their order (and the server keeps it per key).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/error.hpp>
#include <keyway/export.hpp>
#include <keyway/message.hpp>

namespace keyway::client {

/// The library's version ("0.1.0").
KEYWAY_API std::string_view version() noexcept;

/// How the connection behaves when its link drops.
struct reconnect_options {
  /// false: a lost link closes the connection (on_closed), as close() does.
  bool enabled = true;
  /// Failed attempts in a row (over every server) before giving up; -1 = forever.
  int max_attempts = -1;
  /// First wait between two rounds over the server list; doubles per round.
  std::chrono::milliseconds initial_wait{100};
  /// Ceiling of the wait.
  std::chrono::milliseconds max_wait{2000};
  /// Each wait is drawn uniformly from [wait × (1 − jitter), wait].
  double jitter = 0.5;
  /// Bytes of publishes (encoded) held while disconnected.
  std::size_t buffer_bytes = 8u << 20;
};

struct connect_options {
  /// Shown in the server's logs and /status.
  std::string client_name = "keyway-client";
  /// Empty = no token.
  std::string auth_token;
  /// Connect and hello/welcome handshake, together, per server tried.
  std::chrono::milliseconds connect_timeout{5000};
  /// Deadline of acks (publish_ack, subscribe, unsubscribe), flush, drain and
  /// of the graceful part of close().
  std::chrono::milliseconds op_timeout{10000};
  /// Outbound bytes queued before publish() blocks (see Backpressure above).
  std::size_t max_pending_bytes = 8u << 20;
  reconnect_options reconnect;

  /// Asynchronous errors, on the IO thread: a server error frame that answers
  /// no pending call (e.g. a fire-and-forget publish the server refused), a
  /// handler that threw, a synchronous subscription that overflowed.
  std::function<void(const error&)> on_error;
  /// The link dropped (why); the connection is reconnecting.
  std::function<void(const error&)> on_disconnected;
  /// The link is back (to info().url) and every subscription is re-established.
  std::function<void()> on_reconnected;
  /// The server said it is shutting down (lame duck); the connection moves on.
  std::function<void()> on_lame_duck;
  /// The connection is closed for good (why): close(), drain(), the end of
  /// reconnect attempts, or a lost link with reconnect disabled. Called once.
  std::function<void(const error&)> on_closed;
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
  /// Unsubscribe by itself after this many deliveries (0 = never).
  std::uint64_t max_messages = 0;
  /// Synchronous subscriptions: messages held for next_message() before
  /// further ones are dropped (and reported to on_error as slow_consumer).
  std::size_t max_queued = 65536;
};

struct request_options {
  std::string_view key;
  std::span<const header> headers;
};

/// The server's limits, as it announced them (client defaults where it did not).
struct server_limits {
  std::uint32_t max_payload = 0;
  std::uint32_t max_frame = 0;
  std::uint32_t max_subject = 0;
  std::uint32_t max_key = 0;
  std::uint32_t max_headers = 0;
  std::uint32_t max_header_bytes = 0;
  std::uint32_t max_segments = 0;
};

/// What the server said in its welcome frame.
struct server_info {
  std::string url;  // the server this connection is (or was last) connected to
  std::string server_id;
  std::string server_version;
  std::uint32_t protocol_version = 0;
  std::uint32_t worker_count = 0;  // message.owner_core is in [0, worker_count) on a single node
                                   // (in a cluster: node tag * 256 + core, docs/cluster.md)
  server_limits limits;
  std::uint32_t max_subscriptions = 0;  // 0 = not announced
  std::uint64_t max_pending_bytes = 0;  // 0 = not announced
  /// Other servers' client URLs the server announced (a cluster's nodes).
  std::vector<std::string> connect_urls;
};

/// A subscription handle: the sid the server stamps on its deliveries.
struct subscription {
  std::uint32_t sid = 0;
};

enum class connection_status { connected, reconnecting, draining, closed };

/// Counters of one connection, over its whole life (reconnects included).
struct statistics {
  std::uint64_t in_msgs = 0;    // deliveries handed to handlers or queues
  std::uint64_t in_bytes = 0;   // their payload bytes
  std::uint64_t out_msgs = 0;   // publishes queued (requests and responds included)
  std::uint64_t out_bytes = 0;  // their payload bytes
  std::uint64_t reconnects = 0;
  std::uint64_t buffered_publishes = 0;  // publishes made while disconnected
  std::uint64_t lost_publishes = 0;      // fire-and-forget publishes written to a link that dropped
  std::uint64_t dropped_msgs = 0;        // deliveries a full synchronous subscription dropped
};

class connection_impl;

class KEYWAY_API connection {
 public:
  using clock = std::chrono::steady_clock;
  using message_handler = std::function<void(const message&)>;
  using ack_handler = std::function<void(outcome<std::uint32_t>)>;
  using reply_handler = std::function<void(outcome<message>)>;
  using subscribe_handler = std::function<void(outcome<subscription>)>;
  using done_handler = std::function<void(outcome<void>)>;

  /// Connects to the first server of `urls` that answers — a URL, or several
  /// separated by commas ("tcp://a:7400,tcp://b:7400") — sends hello and waits
  /// for welcome (connect_timeout per server). Errors: invalid_url,
  /// connect_failed (e.g. connection refused), timeout, or the server's error
  /// code (auth_failed, shutting_down, ...); with several servers, the last
  /// server's error, naming every server tried.
  static outcome<std::unique_ptr<connection>> connect(std::string_view urls,
                                                      connect_options options = {});

  /// close(), then joins the IO thread.
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// The welcome of the server currently (or last) connected to.
  server_info info() const;
  connection_status status() const noexcept;
  /// False once the connection is closed, or closing; true while reconnecting.
  bool is_open() const noexcept;
  statistics stats() const;

  /// Fire-and-forget. Returns once the frame is queued (it may block for
  /// backpressure). Errors: closed, buffer_full, or a local check with the
  /// server's limits (invalid_subject, invalid_key, payload_too_large,
  /// protocol). A refusal by the server later goes to on_error.
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
  /// A synchronous subscription: deliveries wait in a queue (max_queued) for
  /// next_message().
  outcome<subscription> subscribe_sync(std::string_view pattern,
                                       const subscribe_options& options = {});
  /// The next message of a synchronous subscription, waiting up to `timeout`.
  /// Errors: timeout, invalid_argument (not a synchronous subscription of this
  /// connection), closed (and nothing left in its queue).
  outcome<message> next_message(subscription sub, std::chrono::milliseconds timeout);
  /// Unsubscribes once `max_messages` deliveries in total reached the
  /// subscription (at once if that many already did).
  outcome<void> auto_unsubscribe(subscription sub, std::uint64_t max_messages);
  /// Stops calling the handler at once, then waits for the server's ack.
  outcome<void> unsubscribe(subscription sub);
  void unsubscribe_async(subscription sub, done_handler done);

  /// Publishes `payload` to `subject` with a reply_to in this connection's
  /// inbox and waits for the first reply. Errors: timeout (after `timeout`),
  /// no_responders (from the server: nobody subscribes to `subject`), closed,
  /// connection_lost.
  outcome<message> request(std::string_view subject, std::string_view payload,
                           std::chrono::milliseconds timeout, const request_options& options = {});
  void request_async(std::string_view subject, std::string_view payload,
                     std::chrono::milliseconds timeout, const request_options& options,
                     reply_handler done);
  /// Answers a received request: publishes `payload` to request.reply_to.
  /// Error: no_reply_to when the message is not a request.
  outcome<void> respond(const message& request, std::string_view payload,
                        const publish_options& options = {});

  /// Returns once everything published before the call has been routed by
  /// the server — every publish reached its key's owner core, which sent its
  /// deliveries on — and this connection has read everything the server sent
  /// before its answer. A flush after publishing to one's own subscription
  /// finds every message delivered. Timeout: op_timeout.
  outcome<void> flush();
  void flush_async(done_handler done);

  /// Graceful end: unsubscribes everything (no new deliveries), lets the
  /// deliveries already on their way reach their handlers, flushes what was
  /// published, then closes. Within op_timeout; returns the first failure.
  outcome<void> drain();

  /// Writes what is queued, half-closes, waits (up to op_timeout) for the
  /// server to finish reading, then closes. Pending calls fail with
  /// errc::closed. Joins the IO thread unless called on it. Idempotent.
  void close();

 private:
  explicit connection(std::shared_ptr<connection_impl> impl);
  std::shared_ptr<connection_impl> impl_;
};

/// The same as connection::connect.
KEYWAY_API outcome<std::unique_ptr<connection>> connect(std::string_view urls,
                                                        connect_options options = {});

}  // namespace keyway::client
