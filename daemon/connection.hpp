// connection: one client socket (TCP or Unix) on one worker, for its whole
// life. It reads into its decoder, handles each frame, and queues outbound
// frames in a buffer that the router writes once per loop turn.
//
// States: handshake (only hello allowed, under handshake_timeout) → open →
// closing (an error or drain: stop reading, write what is queued, close) →
// closed. A fatal error answers an error frame, then closes this connection
// only.
//
// Every byte queued for the peer (deliveries, acks, pongs, error frames)
// counts in pending_bytes(). Reading stops while any of these holds, and
// resumes when none does:
//  - credit: the key owner's ring is full; the publish waits in `blocked_`
//    and the router calls resume() when credit returns;
//  - own output: pending_bytes() reached half of limits.max_pending_bytes
//    (replies this peer does not read); reading resumes at a quarter;
//  - throttled: a subscriber this connection publishes to is congested
//    (over half of its max_pending_bytes); its worker sends throttle on/off;
//  - pings: max_pending_pings pings wait for their barriers (below).
// Ping means flush: its pong leaves only once every publish this connection
// sent before it was routed by its owner, and the deliveries and acks that
// routing produced for this worker were queued (ahead of the pong). Publishes to this
// worker are routed inline; for the other owners published to since the last
// ping, a barrier (route.hpp) goes out behind those publishes and comes back
// behind what routing them produced here (FIFO rings both ways). Pongs leave
// in ping order.
// Slow consumers: a congested connection whose socket takes nothing for
// limits.slow_consumer_grace gets the configured policy: disconnect after a
// slowConsumer error, or drop (its publishers are released, and what does
// not fit in max_pending_bytes is dropped for it alone until it drains to a
// quarter). Deliveries in flight when its publishers were paused may take it
// past max_pending_bytes: under drop they are dropped, under disconnect
// queued up to hard_limit(), where it is disconnected at once.
//
// Threads: the owning worker's only (asserted). Completion handlers hold a
// shared_ptr so the object outlives its pending socket operations.
#pragma once

#include <asio/generic/stream_protocol.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <bitset>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/route.hpp"
#include "proto/decoder.hpp"
#include "proto/encoder.hpp"

namespace keyway::daemon {

class worker_services;

class connection : public std::enable_shared_from_this<connection> {
 public:
  using socket_type = asio::generic::stream_protocol::socket;

  connection(worker_services& w, socket_type socket, std::uint64_t id, bool unix_socket);
  ~connection();

  std::uint64_t id() const noexcept { return id_; }
  bool unix_socket() const noexcept { return unix_; }
  bool closed() const noexcept { return state_ == state::closed; }
  std::size_t pending_bytes() const noexcept { return out_.size() + writing_.size(); }

  void start();
  /// Queue one delivery. Applies the slow-consumer policy.
  /// `publisher`: the connection that published it, paused while this one
  /// is congested.
  void deliver(const shared_message& m, std::uint32_t sid, std::uint32_t core, std::uint64_t seq,
               std::uint64_t publisher);
  void send_ack(std::uint64_t request_id, std::uint32_t delivered);
  /// The answer to a request (a publish with reply_to) that matched no subscriber.
  void send_no_responders(std::string_view subject, std::string_view reply_to,
                          std::uint64_t ack_id);
  void send_error(proto::errc code, std::string_view message, std::uint64_t request_id, bool fatal,
                  std::string_view reply_to = {});
  /// Router: one worker applied (or, `refused` set, refused) a subscription
  /// change this connection asked for.
  void sub_applied(const sub_applied_op& op);
  /// Router: a congested subscriber pauses (on) or resumes (off) reading from
  /// this connection, one call each way per congestion episode.
  void throttle(bool on);
  /// Router: an owner answered this connection's barrier of round `round`.
  void barrier_done(std::uint64_t round);
  /// Router, lame duck: tells the client the server is shutting down (a
  /// `draining` frame), once, if the handshake is done; else after the welcome.
  void send_draining();
  /// Router: credit came back. Returns false if the held publish still has
  /// no credit: the caller keeps the connection on its paused list. A publish
  /// further on that pauses it again puts it back there itself (resume_later),
  /// and resume() returns true.
  bool resume();
  /// Router, end of turn: start a socket write of everything queued.
  void flush();
  /// Close now (socket error, shutdown). Idempotent.
  void abort();

 private:
  enum class state { handshake, open, closing, closed };
  /// How long a connection closing after a fatal error may go without
  /// reading anything before it is closed (each write that makes progress
  /// starts it again, so a peer that reads gets everything up to the error).
  static constexpr std::chrono::seconds close_grace{2};

  /// Own-output pushback thresholds (see the top of this file).
  std::size_t high_water() const noexcept;
  std::size_t low_water() const noexcept;
  /// Under policy disconnect, the queue that closes the connection at once:
  /// max(2 x max_pending_bytes, max_pending_bytes + in_flight_allowance).
  std::size_t hard_limit() const noexcept;
  /// Deliveries that may be on their way when publishers are paused: their
  /// current reads and what the mesh rings hold (4096 messages per ring).
  static constexpr std::size_t in_flight_allowance = 16u << 20;
  /// Frames handled per process() call before the rest is posted behind the
  /// worker's other handlers.
  static constexpr std::size_t frames_per_call = 64;
  /// Pings whose pongs may wait for barriers before reading stops: pings are
  /// cheap to send, and a pong not yet queued counts in no pending_bytes().
  static constexpr std::size_t max_pending_pings = 1024;
  /// Why reading is stopped now, if it is (credit, own output, throttled,
  /// pings waiting).
  bool reading_paused() const noexcept {
    return blocked_ || out_paused_ || throttles_ != 0 || pings_.size() >= max_pending_pings;
  }
  /// Reading may go on again: handles what is buffered, then reads.
  void continue_reading();
  /// Notes where route() sent a publish, for the next ping's barriers.
  void routed_to(std::uint32_t node, std::uint32_t owner);
  /// After bytes left the outbound queue: resume own-output pushback,
  /// release the publishers this connection throttled, end a slow-consumer
  /// grace period.
  void after_write();
  /// The outbound queue grew with a delivery from `publisher`.
  void on_congestion(std::uint64_t publisher);
  void release_throttled();
  void arm_close_deadline();
  void arm_grace(std::chrono::steady_clock::duration after);
  void apply_slow_consumer_policy();
  /// Counts and logs (once per episode) a slow consumer.
  void note_slow_consumer();
  /// Removes subscription `sid` (present) everywhere; `request_id`: the
  /// unsubscribe being acknowledged, or 0.
  /// Returns how many answers the removal will get (worker_services::broadcast).
  std::uint32_t drop_subscription(std::uint32_t sid, std::uint64_t request_id);
  void drop_all_subscriptions();

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
  /// A ping: its pong now, or once its barriers (and earlier pings') are back.
  void on_ping(std::uint64_t id);
  /// Queues the pongs of the pings at the front whose barriers are all back.
  void answer_pings();
  void fail(const proto::status& st, std::uint64_t request_id);
  void queued();
  void write_some();
  void finish_close();

  worker_services& svc_;  // the worker it lives on (worker_services.hpp)
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
  asio::steady_timer
      timer_;  // the handshake deadline, then the idle deadline, then the close deadline
  std::chrono::steady_clock::time_point last_read_{};    // stamped per read: the latency start
  std::chrono::steady_clock::time_point last_active_{};  // last read or resume: the idle timer
  std::optional<publish_op> blocked_;                    // a publish waiting for credit
  std::uint32_t blocked_owner_ = 0;                      // its owner worker
  // Owners other than this worker that were sent a publish since the last
  // barrier round: the next ping sends each a barrier.
  std::bitset<max_workers> published_to_;
  // Cluster: the other nodes forwarded a publish since the last barrier round.
  std::vector<std::uint32_t> forwarded_to_;
  // Pings not answered yet, in order; the one at the front is barrier round
  // first_round_, the next first_round_ + 1, ... A ping that needed no
  // barrier of its own waits (barriers_left 0) for the pings before it.
  struct pending_ping {
    std::uint64_t id;
    std::uint32_t barriers_left;
  };
  std::deque<pending_ping> pings_;
  std::uint64_t first_round_ = 0;
  bool draining_sent_ = false;
  bool out_paused_ = false;      // stopped reading: own output over high_water()
  bool process_posted_ = false;  // a process() continuation is queued
  std::uint32_t throttles_ = 0;  // congested subscribers pausing this publisher
  // The publishers paused since this connection went over high_water(),
  // each told once, all released when it drains to low_water(). Non-empty
  // exactly while it is congested (the first delivery over starts it).
  std::vector<std::uint64_t> throttled_;
  // Policy drop applied: deliveries over max_pending_bytes are dropped and
  // publishers no longer paused, until the queue drains to low_water().
  bool shedding_ = false;
  // While congested: the last write that made progress, and the timer that
  // applies the slow-consumer policy after limits.slow_consumer_grace
  // without any.
  std::chrono::steady_clock::time_point last_progress_{};
  asio::steady_timer grace_timer_;
  // The publishBatch being published: its subject and the entries not yet
  // routed, into the decoder's current frame (valid until the next frame is
  // decoded, which waits while blocked_ is set).
  std::string_view batch_subject_;
  proto::batch_cursor batch_at_;
  std::uint32_t protocol_version_ = 0;  // agreed in the welcome
  struct subscription {
    std::uint32_t uid;
    std::uint64_t cost;  // index bytes charged, on all workers together
  };
  std::unordered_map<std::uint32_t, subscription> subs_;  // by sid
  std::uint64_t sub_bytes_ = 0;                           // sum of subs_' cost
  struct pending_ack {
    std::uint32_t workers_left;
    bool refused;  // a worker refused it: the error was sent instead
  };
  std::unordered_map<std::uint64_t, pending_ack> pending_acks_;  // by request id
  std::string client_name_;
  std::vector<header_view> headers_;  // scratch for deliver
  bool slow_logged_ = false;
};

}  // namespace keyway::daemon
