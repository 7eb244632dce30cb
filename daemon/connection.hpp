// connection: one client socket (TCP or Unix) on one worker, for its whole
// life. It reads into its decoder, handles each frame, and queues outbound
// frames in a buffer that the router writes once per loop turn.
//
// States: handshake (only hello allowed, under handshake_timeout) → open →
// closing (an error or drain: stop reading, write what is queued, close) →
// closed. A fatal error answers an error frame, then closes this connection
// only.
//
// Backpressure: when the key owner has no credit, the publish is kept in
// `blocked_`, reading stops, and the router calls resume() when credit
// returns. Slow consumers: outbound bytes over max_pending_bytes trigger the
// configured policy (disconnect after a slow_consumer error, or drop).
//
// Threads: the owning worker's only (asserted). Completion handlers hold a
// shared_ptr so the object outlives its pending socket operations.
#pragma once

#include <asio/generic/stream_protocol.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/route.hpp"
#include "proto/decoder.hpp"
#include "proto/encoder.hpp"

namespace keyway::daemon {

class router;

class connection : public std::enable_shared_from_this<connection> {
 public:
  using socket_type = asio::generic::stream_protocol::socket;

  connection(router& r, socket_type socket, std::uint64_t id, bool unix_socket);
  ~connection();

  std::uint64_t id() const noexcept { return id_; }
  bool unix_socket() const noexcept { return unix_; }
  bool closed() const noexcept { return state_ == state::closed; }
  std::size_t pending_bytes() const noexcept { return out_.size() + writing_.size(); }
  std::size_t subscription_count() const noexcept { return subs_.size(); }

  void start();
  /// Queue one delivery. Applies the slow-consumer policy.
  void deliver(const shared_message& m, std::uint32_t sid, std::uint32_t core, std::uint64_t seq);
  void send_ack(std::uint64_t request_id, std::uint32_t delivered);
  /// The answer to a request (a publish with reply_to) that matched no subscriber.
  void send_no_responders(std::string_view subject, std::string_view reply_to, std::uint64_t ack_id);
  void send_error(proto::errc code, std::string_view message, std::uint64_t request_id, bool fatal,
                  std::string_view reply_to = {});
  /// Router: one worker applied a subscription change this connection asked for.
  void sub_applied(std::uint64_t request_id);
  /// Router: credit came back. Returns false if the held publish still has
  /// no credit: the caller keeps the connection on its paused list. A publish
  /// further on that pauses it again puts it back there itself (mark_paused),
  /// and resume() returns true.
  bool resume();
  /// Router, end of turn: start a socket write of everything queued.
  void flush();
  /// Close now (socket error, shutdown). Idempotent.
  void abort();

 private:
  enum class state { handshake, open, closing, closed };
  /// How long a connection closing after a fatal error may take to read it.
  static constexpr std::chrono::seconds close_grace{2};

  void read_more();
  void arm_idle(std::chrono::steady_clock::duration after);
  void on_read(std::error_code ec, std::size_t n);
  /// Handles buffered frames until none is left, the connection pauses or closes.
  void process();
  /// Returns false if this frame paused the connection.
  bool handle(const proto::frame& f);
  /// A delivery of a message with headers, which are not kept in frame layout
  /// (shared_message.hpp): `f` has every other field.
  result<std::size_t> encode_with_headers(const shared_message& m, proto::delivery_fields& f);
  /// `f` as the next entry of the open messageBatch, or of a new one.
  result<std::size_t> add_to_batch(const proto::delivery_fields& f);
  /// out_ for any frame but a batched delivery: completes the open batch first.
  proto::out_buffer& out() noexcept {
    batch_out_.finish(out_);
    return out_;
  }
  void on_hello(proto::wire::Hello::Reader h);
  /// Counts `count` publishes to `subject`; false (counted as unmatched) when
  /// no subscription matches and none needs its owner (`to_owner`: an ack).
  bool admit(std::string_view subject, std::uint32_t count, bool to_owner);
  bool on_publish(const proto::publish_view& p);
  /// on_publish() past the interest check: copy, pick the owner, hand over;
  /// false if that paused the connection.
  bool route_publish(const proto::publish_view& p);
  /// Publishes the entries of the current publishBatch from batch_at_ on;
  /// false if one paused the connection (batch_at_ then holds the rest).
  bool publish_entries();
  void on_subscribe(proto::wire::Subscribe::Reader s);
  void on_unsubscribe(proto::wire::Unsubscribe::Reader u);
  void fail(const proto::status& st, std::uint64_t request_id);
  void queued();
  void write_some();
  void finish_close();

  router& router_;
  socket_type socket_;
  const std::uint64_t id_;
  const bool unix_;
  state state_ = state::handshake;
  bool reading_ = false;
  bool writing_now_ = false;
  bool dirty_ = false;
  proto::decoder decoder_;
  // Bytes asked of the next read: doubles after a read of at least that
  // much, up to max_read, and halves after one of less than an eighth, as
  // nats-server's read buffer grows and shrinks. A busy publisher pays one
  // read syscall per 64 KiB instead of per 4-16 KiB; read_more() gives the
  // buffer back once reads are small again.
  static constexpr std::size_t min_read = 4096;
  static constexpr std::size_t max_read = 64 * 1024;
  std::size_t read_size_ = min_read;
  // Two buffers: frames are appended to out_ while writing_ is on the wire.
  // Payloads appended by reference are kept alive by the matching refs.
  proto::out_buffer out_;
  proto::out_buffer writing_;
  // Deliveries without headers or replyTo to a version 2 client, for one sid
  // and subject in a row, go as one messageBatch at the end of out_, up to
  // max_message_batch bytes (or limits.max_frame if smaller). Completed by
  // out() and before out_ goes on the wire.
  static constexpr std::size_t max_message_batch = 64 * 1024;
  proto::message_batch_writer batch_out_;
  std::vector<message_ref> out_refs_;
  std::vector<message_ref> writing_refs_;
  static constexpr std::size_t max_iov = 64;
  std::array<asio::const_buffer, max_iov> iov_;
  asio::steady_timer timer_;  // the handshake deadline, then the idle deadline, then the close deadline
  std::chrono::steady_clock::time_point last_read_{};    // stamped per read: the latency start
  std::chrono::steady_clock::time_point last_active_{};  // last read or resume: the idle timer
  std::optional<publish_op> blocked_;  // a publish waiting for credit
  std::uint32_t blocked_owner_ = 0;
  // The publishBatch being published: its subject and the entries not yet
  // routed, into the decoder's current frame (valid until the next frame is
  // decoded, which waits while blocked_ is set).
  std::string_view batch_subject_;
  proto::batch_cursor batch_at_;
  std::uint32_t protocol_version_ = 0;  // agreed in the welcome
  struct subscription {
    std::uint32_t uid;
  };
  std::unordered_map<std::uint32_t, subscription> subs_;        // by sid
  std::unordered_map<std::uint64_t, std::uint32_t> pending_acks_;  // request id → workers left
  std::string client_name_;
  std::vector<header_view> headers_;  // scratch for deliver
  bool slow_logged_ = false;

  friend class router;
};

}  // namespace keyway::daemon
