// connection_impl: what stands behind keyway::client::connection
// (<keyway/client.hpp>, whose comment states the threading model and the
// reconnect contract). Not installed: it includes asio and the codec.
//
// Two halves: client.cpp runs on the calling threads (argument checks,
// encoding under mu_, pending-call bookkeeping, the blocking wrappers);
// client_io.cpp runs on the IO thread (connect and handshake, reconnect,
// read loop and dispatch, write loop, deadlines, close).
//
// Links. The connection outlives its links: when one drops and reconnect is
// on, state_ goes to `reconnecting`, publishes keep being encoded into out_
// (up to reconnect.buffer_bytes), and the IO thread tries the servers of
// servers_ with backoff. A new link first carries a subscribe for every entry
// of subs_ (restoring_); once the server acknowledged them all, what out_
// held that still makes sense on a new link (publishes, batches and pings;
// not the old link's subscribes, unsubscribes and pongs) goes out, then what
// was published meanwhile, and state_ is `open` again.
//
// Which calls fail with connection_lost: every frame is encoded into out_,
// whose generation (out_gen_) is stamped on the pending call; the writer takes
// out_ whole and bumps the generation. A pending call of an older generation
// was handed to the lost socket (its fate is unknown); one of the current
// generation is still in out_ and is sent on the next link.
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

#include <deque>
#include <random>

#include <keyway/client.hpp>

#include "client/url.hpp"
#include "core/stats.hpp"
#include "proto/decoder.hpp"
#include "proto/encoder.hpp"
#include "proto/limits.hpp"
#include "proto/out_buffer.hpp"

namespace keyway::client {

class connection_impl {
 public:
  using clock = std::chrono::steady_clock;
  using message_handler = connection::message_handler;
  using ack_handler = connection::ack_handler;
  using reply_handler = connection::reply_handler;
  using subscribe_handler = connection::subscribe_handler;
  using done_handler = connection::done_handler;

  /// Connects to the first server of `urls` that answers (see connection::connect).
  static outcome<std::shared_ptr<connection_impl>> connect(std::string_view urls,
                                                           connect_options options);

  connection_impl(std::vector<server_url> servers, connect_options options);
  /// close(), then joins the IO thread.
  ~connection_impl();
  connection_impl(const connection_impl&) = delete;
  connection_impl& operator=(const connection_impl&) = delete;

  server_info info() const;
  connection_status status() const noexcept;
  bool is_open() const noexcept { return open_.load(std::memory_order_acquire); }
  statistics stats() const;

  outcome<void> publish(std::string_view subject, std::string_view payload,
                        const publish_options& options);
  outcome<std::uint32_t> publish_ack(std::string_view subject, std::string_view payload,
                                     const publish_options& options);
  void publish_ack_async(std::string_view subject, std::string_view payload,
                         const publish_options& options, ack_handler done);
  outcome<subscription> subscribe(std::string_view pattern, message_handler handler,
                                  const subscribe_options& options);
  void subscribe_async(std::string_view pattern, message_handler handler,
                       const subscribe_options& options, subscribe_handler done);
  outcome<subscription> subscribe_sync(std::string_view pattern, const subscribe_options& options);
  outcome<message> next_message(subscription sub, std::chrono::milliseconds timeout);
  outcome<void> auto_unsubscribe(subscription sub, std::uint64_t max_messages);
  outcome<void> unsubscribe(subscription sub);
  void unsubscribe_async(subscription sub, done_handler done);
  outcome<message> request(std::string_view subject, std::string_view payload,
                           std::chrono::milliseconds timeout, const request_options& options);
  void request_async(std::string_view subject, std::string_view payload,
                     std::chrono::milliseconds timeout, const request_options& options,
                     reply_handler done);
  outcome<void> respond(const message& request, std::string_view payload,
                        const publish_options& options);
  outcome<void> flush();
  void flush_async(done_handler done);
  outcome<void> drain();
  void close();

 private:
  enum class state { connecting, open, reconnecting, closing, closed };
  enum class op_kind : std::uint8_t {
    publish_ack,
    subscribe,
    unsubscribe,
    inbox,
    request,
    ping,
    resubscribe
  };
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
    std::uint64_t gen = 0;  // out_gen_ when its frame was encoded
  };
  /// A request held until the inbox subscription is acknowledged.
  struct deferred_request {
    std::uint64_t id = 0;
    std::string subject, payload, key;
    std::vector<received_header> headers;
  };
  /// The messages of a synchronous subscription, waiting for next_message().
  struct sync_queue {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<message> messages;
    std::size_t max = 0;
    bool done = false;  // unsubscribed or closed: no more will come
  };
  /// A live subscription, as the IO thread keeps it to subscribe it again on
  /// a new link.
  struct sub_entry {
    std::string pattern;
    std::string group;
    message_handler handler;
    std::uint64_t max_messages = 0;  // 0 = no auto-unsubscribe
    std::uint64_t delivered = 0;
    std::uint64_t pending_op = 0;       // the subscribe call awaiting its ack, 0 once acked
    std::shared_ptr<sync_queue> queue;  // synchronous subscriptions
  };
  /// A server the connection may use, and where it came from.
  struct server_entry {
    server_url url;
    bool announced = false;  // from a welcome's connectUrls, not from connect()
    bool draining = false;   // it announced lame duck: tried last
  };

  // ---- any thread (client.cpp) ---------------------------------------------
  bool on_io_thread() const noexcept { return std::this_thread::get_id() == io_thread_id_.load(); }
  error closed_error() const;
  error closed_error_locked() const;
  /// The server's limits, checked locally (mu_ held: a reconnect may change them).
  outcome<void> check_publish_locked(std::string_view subject, std::string_view key,
                                     std::string_view payload, std::span<const header> headers,
                                     std::string_view reply_to) const;
  /// wait_room_locked(), then check_publish_locked().
  outcome<void> admit_publish_locked(std::unique_lock<std::mutex>& lock, std::string_view subject,
                                     std::string_view key, std::string_view payload,
                                     std::span<const header> headers, std::string_view reply_to);
  /// Waits (mu_ held through `lock`) until out_ has room, unless on the IO
  /// thread; while reconnecting, fails at once when the reconnect buffer is
  /// full. An error if the connection cannot take the frame.
  outcome<void> wait_room_locked(std::unique_lock<std::mutex>& lock, std::size_t bytes);
  bool accepting_locked() const noexcept {
    return state_ == state::open || state_ == state::reconnecting;
  }
  /// out_, after encoding the publishes staged for a publishBatch (mu_ held):
  /// every frame goes in through it, so the batch keeps its place in order.
  proto::out_buffer& out_locked();
  bool stage_publish_locked(std::string_view subject, std::string_view key,
                            std::string_view payload);
  std::size_t queued_locked() const noexcept { return out_.size() + batch_entries_.size(); }
  outcome<void> encode_publish_locked(std::string_view subject, std::string_view key,
                                      std::string_view payload, std::span<const header> headers,
                                      std::string_view reply_to, std::uint64_t ack_id);
  std::uint64_t add_pending_locked(pending_op op);
  std::optional<pending_op> take_pending_locked(std::uint64_t id);
  void kick_locked();
  std::string inbox_reply_to(std::uint64_t id) const;
  /// Runs `fn` on the IO thread and waits for its outcome (inline when
  /// called on the IO thread).
  template <class T, class Fn>
  outcome<T> on_io(Fn&& fn, std::string_view what);

  // ---- IO thread (client_io.cpp) --------------------------------------------
  void run_io();
  /// Tries servers_ from `next_server_` on, one after the other, once each.
  void try_servers(std::size_t left, std::string failures);
  void start_link(const server_url& url, std::function<void(outcome<void>)> done);
  void on_connected(std::error_code ec);
  bool retry_with_version_1(std::string_view refusal);
  void send_hello();
  void read_handshake_frame(std::size_t have, std::size_t need);
  void on_handshake_frame();
  void finish_handshake(outcome<void> result);
  /// A handshake succeeded: the connection is (again) open on this link.
  void link_up();
  /// Every server of a round failed (`why` names them): give up or back off.
  void link_failed(error why);
  /// A new link: subscribe subs_ again; what out_ holds waits in held_ for
  /// the acks (mu_ held).
  void restore_link_locked(const proto::limits& encoded_with);
  /// Every subscription is back: held_, then what came since, go out.
  void finish_restore();
  /// held_ back in front of out_ (mu_ held).
  void unhold_locked();
  void start_read();
  void on_read(std::error_code ec, std::size_t n);
  void dispatch(const proto::frame& f);
  void on_message(const proto::delivery_view& m);
  void on_inbox_reply();
  void on_ack(std::uint64_t id, std::uint32_t delivered);
  void on_error_frame(proto::wire::Error::Reader e);
  void on_draining(std::string_view reason);
  void complete(pending_op& op, std::uint64_t id, outcome<std::uint32_t> result);
  void complete_inbox(outcome<std::uint32_t> result);
  void start_write();
  void on_write(std::error_code ec, std::size_t n);
  void arm_timer();
  void on_deadline();
  /// The link failed: reconnect, or close for good.
  void link_lost(const error& reason);
  void schedule_reconnect();
  void begin_close();
  void half_close();
  void finish_close();
  /// The connection is gone for good: fail every pending call, tell on_closed.
  void shut_down(const error& reason);
  void remove_sub(std::uint32_t sid);
  void report(const error& e);
  template <class... A, class F>
  void call(const F& callback, A&&... args);

  const connect_options options_;
  std::string inbox_prefix_;  // "_INBOX.<random>." — immutable
  std::atomic<bool> open_{false};
  std::atomic<bool> draining_{false};  // drain() is under way
  std::atomic<std::uint32_t> next_sid_{1};
  std::atomic<std::uint32_t> inbox_sid_{0};
  std::atomic<std::thread::id> io_thread_id_{};

  // One writer at a time (core::counter: a plain store, no locked
  // instruction per message): out_*, buffered and lost under mu_; in_*,
  // dropped and reconnects on the IO thread. stats() reads from any thread.
  struct counters {
    core::counter in_msgs, in_bytes, out_msgs, out_bytes, reconnects, buffered, lost, dropped;
  };
  counters stats_;

  // ---- IO thread only -------------------------------------------------------
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  asio::generic::stream_protocol::socket socket_;
  asio::ip::tcp::resolver resolver_;
  asio::steady_timer connect_timer_;
  asio::steady_timer deadline_timer_;
  asio::steady_timer close_timer_;
  asio::steady_timer reconnect_timer_;
  std::function<void(outcome<void>)> connect_done_;  // the handshake under way
  std::function<void(outcome<void>)> initial_done_;  // connect()'s wait
  std::uint64_t link_id_ = 0;  // bumped per link: late handlers of an old one return
  bool was_up_ = false;        // a link was up once (on_closed is for such connections only)
  server_info welcome_info_;   // the last welcome, until link_up() takes it
  bool restoring_ = false;     // a new link waits for its subscriptions' acks
  std::size_t restore_left_ = 0;
  std::vector<std::byte> held_;  // out_'s frames from before the new link, sent after the acks
  proto::limits welcome_limits_;
  std::vector<std::byte> handshake_bytes_;
  std::uint32_t hello_version_ =
      proto::protocol_version;  // 1 after a version-1 server refused more
  std::string fallback_from_;   // why hello_version_ dropped to 1, for a later connect error
  asio::generic::stream_protocol::endpoint peer_;  // the address the socket connected to
  server_url link_url_;                            // the server of the current (or last) link
  std::size_t next_server_ = 0;                    // where the next try_servers() starts
  int failed_attempts_ = 0;                        // in a row, since the last link was up
  std::uint32_t reconnect_round_ = 0;
  std::minstd_rand rng_;
  std::optional<proto::decoder> decoder_;
  proto::out_buffer writing_;
  std::array<asio::const_buffer, 16> iov_;
  std::unordered_map<std::uint32_t, sub_entry> subs_;
  message rx_;                  // the reused delivery handed to handlers
  std::optional<error> fatal_;  // the server's fatal error frame, if one came
  bool half_closed_ = false;

  // ---- guarded by mu_ -------------------------------------------------------
  mutable std::mutex mu_;
  std::condition_variable room_cv_;  // out_ shrank or the connection closed
  state state_ = state::connecting;
  std::vector<server_entry> servers_;
  server_info info_;
  proto::limits limits_;
  std::optional<proto::encoder> encoder_;
  proto::out_buffer out_;
  std::uint64_t out_gen_ = 1;            // bumped each time the writer takes out_
  std::uint64_t out_publishes_ = 0;      // fire-and-forget publishes in out_
  std::uint64_t writing_publishes_ = 0;  // ... in writing_ (lost if the link drops)
  bool write_scheduled_ = false;         // a start_write is posted or a write is in flight
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, pending_op> pending_;
  deadline_map deadlines_;
  std::optional<clock::time_point> timer_at_;  // what the IO thread's timer is armed for
  inbox_state inbox_ = inbox_state::none;
  std::uint64_t inbox_op_ = 0;
  std::vector<deferred_request> deferred_;
  std::vector<proto::header> header_scratch_;
  std::unordered_map<std::uint32_t, std::shared_ptr<sync_queue>> sync_queues_;
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

}  // namespace keyway::client
