// peer_link: the TCP links between cluster nodes (cluster/peer.capnp): the
// handshake, the heartbeat and the redial. A dialling node opens one link per
// (worker, peer node), sends `hello` (cluster, node id, incarnation, epoch,
// worker); the listening node admits it with `welcome` or answers `refused`
// and closes. Then the dialler pings every heartbeat; either side declares
// the link dead after three heartbeats without a frame (judged only on a
// timer that fired on time: a process that was not running may have the
// peer's frames unread in its socket), and the dialler
// dials again with jittered exponential backoff (reset once a link comes up).
//
// Data flows from the dialler to the listener only (peer.capnp): forwarded
// publishes, deliveries, interest and replies, queued by send() and written
// back to back, as many frames per write as are queued.
//
// Threads: a peer_listener or peer_dialer, and every callback it makes, run
// on the io_context it was given (one thread). state(), links_up() and
// port() may be read from any thread.
// Cost: one small frame per heartbeat per link. A batch of data is encoded
// into a fresh Cap'n Proto message and appended to the link's output (one
// copy of each payload); the other side reads it in place (no copy).
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <keyway/result.hpp>

namespace keyway::cluster {

struct peer_hello {
  std::string cluster;
  std::string node_id;
  std::int64_t incarnation = 0;
  std::int64_t epoch = 0;
  std::uint32_t worker = 0;
  std::uint32_t protocol_version = 0;  // filled by the codec
};

struct peer_welcome {
  std::string node_id;
  std::int64_t incarnation = 0;
  std::int64_t epoch = 0;
  std::uint32_t workers = 0;
};

struct peer_refused {
  std::string reason;
};
struct peer_ping {
  std::uint64_t id = 0;
};
struct peer_pong {
  std::uint64_t id = 0;
};

/// A message as it crosses a link: views of bytes someone else owns. When
/// encoding, the sender's; when decoded by peer_frame_reader, the reader's
/// buffer, valid until the reader is next appended to.
struct peer_message_view {
  std::string_view subject;
  std::span<const std::byte> key;
  std::span<const std::byte> payload;
  std::string_view reply_to;
  std::vector<std::pair<std::string_view, std::span<const std::byte>>> headers;
};
struct peer_forward {
  peer_message_view msg;
  std::uint64_t conn = 0;
  std::uint64_t ack_id = 0;
  std::int64_t epoch = 0;  // the ring epoch the sender routed it by
};
struct peer_target {
  std::uint64_t conn = 0;
  std::uint32_t sid = 0;
};
struct peer_deliver {
  peer_message_view msg;
  std::uint64_t seq = 0;
  std::uint32_t owner_core = 0;
  std::int64_t epoch = 0;
  std::span<const peer_target> targets;
};
/// Forwarded publishes in one frame, in order.
struct peer_forwards {
  std::vector<peer_forward> items;
  std::int64_t newest_epoch = 0;  // decoded: the largest of the items' epochs
};
/// Deliveries in one frame, in order; their targets point into `targets`.
/// Move-only, so that no copy points into another's targets.
struct peer_delivers {
  std::vector<peer_deliver> items;
  std::vector<peer_target> targets;
  std::int64_t newest_epoch = 0;  // decoded: the largest of the items' epochs
  peer_delivers() = default;
  peer_delivers(peer_delivers&&) = default;
  peer_delivers& operator=(peer_delivers&&) = default;
  peer_delivers(const peer_delivers&) = delete;
  peer_delivers& operator=(const peer_delivers&) = delete;
};
struct peer_interest_change {
  bool add = true;
  std::string pattern;
  std::string group;
  std::uint32_t uid = 0;
  std::uint64_t conn = 0;
  std::uint32_t sid = 0;
  std::uint64_t request_id = 0;
};
struct peer_interest {
  std::vector<peer_interest_change> changes;
  bool snapshot_done = false;
};
struct peer_interest_applied {
  std::uint64_t conn = 0;
  std::uint64_t request_id = 0;
  std::uint32_t sid = 0;
  std::uint32_t uid = 0;
  std::string refused;
};
struct peer_reply {
  std::uint64_t conn = 0;
  std::uint64_t ack_id = 0;
  std::uint32_t delivered = 0;
  std::string subject;
  std::string reply_to;
  std::string refused;  // non-empty: not ordered, and why
};
enum class fence_stage : std::uint8_t { ingress, ordered, drained };
struct peer_fence {
  fence_stage stage = fence_stage::ingress;
  std::int64_t epoch = 0;
  std::uint32_t worker = 0;
};
struct peer_barrier {
  std::uint64_t conn = 0;
  std::uint64_t round = 0;
  bool answer = false;
};
using peer_frame = std::variant<peer_hello, peer_welcome, peer_refused, peer_ping, peer_pong,
                                peer_forwards, peer_delivers, peer_interest, peer_interest_applied,
                                peer_reply, peer_fence, peer_barrier>;

/// The peer protocol this build speaks (peer.capnp's peerProtocolVersion);
/// a link between nodes of different versions is refused.
std::uint32_t peer_protocol_version() noexcept;
/// One PeerFrame per Cap'n Proto framed message.
std::string encode_peer_frame(const peer_frame& f);
/// Batches of data frames from borrowed bytes, appended to `out` as one
/// frame each.
void encode_forwards(std::string& out, std::span<const peer_forward> items);
void encode_delivers(std::string& out, std::span<const peer_deliver> items);
/// The bytes a message adds to a data frame, near enough to size batches.
std::size_t encoded_size(const peer_message_view& m);

/// Splits a byte stream into peer frames. A frame larger than `max_frame`
/// bytes, or one that does not parse, is an error naming what was wrong.
class peer_frame_reader {
 public:
  explicit peer_frame_reader(std::size_t max_frame) : max_frame_(max_frame) {}
  void append(const char* data, std::size_t n) {
    // What next() consumed goes once per append, not once per frame.
    if (consumed_ != 0) {
      buffer_.erase(0, consumed_);
      consumed_ = 0;
    }
    buffer_.append(data, n);
  }
  /// The next complete frame, nothing yet, or why the stream is unusable.
  /// Frames are read in place (a frame is whole words, so every frame
  /// starts word-aligned in the buffer); a data frame's messages are views
  /// of the buffer, valid until the next append().
  result<std::optional<peer_frame>, std::string> next();

 private:
  std::size_t max_frame_;
  std::string buffer_;
  std::size_t consumed_ = 0;  // bytes of buffer_ already returned as frames
};

struct peer_link_options {
  std::chrono::milliseconds handshake_timeout{2000};
  /// The dialler pings this often; three heartbeats without a frame: dead.
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{2000};
  std::size_t max_frame = 1 << 20;
  /// How often the listening side offers again a frame its owner took `later`.
  std::chrono::milliseconds retry{1};
};

/// The listening side: accepts links and admits each by its hello.
class peer_listener {
 public:
  /// What the listening side makes of a hello: the welcome to send, and a
  /// tag of its own (e.g. which node this is) handed back with every data
  /// frame of the link, so that nothing is looked up per frame.
  struct admission {
    peer_welcome welcome;
    std::uint32_t tag = 0;
  };
  /// The admission, or why the link is refused.
  using admit_fn = std::function<result<admission, std::string>(const peer_hello&)>;
  /// What became of a data frame handed to data_fn.
  enum class taken : std::uint8_t {
    yes,    // handled
    later,  // not yet: offered again shortly (every `retry`); nothing behind it on the link is
            // read meanwhile, so the link's order holds
    close,  // the owner gave up on the link: it is closed
  };
  /// A data frame on an admitted link, with the hello that opened it and the
  /// admission's tag. Frames of one link arrive in the order they were sent.
  using data_fn = std::function<taken(const peer_hello&, std::uint32_t tag, peer_frame&)>;

  /// Binds `at` (port 0: any free port) and accepts until close().
  peer_listener(asio::io_context& io, const asio::ip::tcp::endpoint& at, admit_fn admit,
                peer_link_options opt = {}, data_fn on_data = {});
  /// Accepts on `bound`, a listening acceptor of `io`.
  peer_listener(asio::io_context& io, asio::ip::tcp::acceptor bound, admit_fn admit,
                peer_link_options opt = {}, data_fn on_data = {});
  ~peer_listener();
  peer_listener(const peer_listener&) = delete;
  peer_listener& operator=(const peer_listener&) = delete;

  std::uint16_t port() const noexcept { return port_; }
  /// Links past the handshake and not dead yet.
  std::size_t links_up() const noexcept { return up_.load(std::memory_order_relaxed); }
  /// Stops accepting and closes every link (on the io_context's thread).
  void close();
  /// Closes the admitted links whose hello `stale` says no longer belongs
  /// (on the io_context's thread); returns how many.
  std::size_t close_if(const std::function<bool(const peer_hello&)>& stale);

  struct session;

 private:
  void accept_next();

  asio::io_context& io_;
  asio::ip::tcp::acceptor acceptor_;
  admit_fn admit_;
  peer_link_options opt_;
  data_fn on_data_;
  std::uint16_t port_ = 0;
  std::atomic<std::size_t> up_{0};
  std::vector<std::weak_ptr<session>> sessions_;
};

/// The dialling side: keeps one link to one peer up, dialling again after
/// every failure until stop().
class peer_dialer : public std::enable_shared_from_this<peer_dialer> {
 public:
  enum class link_state { connecting, handshaking, up, waiting, stopped };
  struct events {
    std::function<void(const peer_welcome&)> up;
    /// Why the link failed or was refused (each time, also before it was up).
    std::function<void(const std::string&)> down;
  };

  static std::shared_ptr<peer_dialer> start(asio::io_context& io, asio::ip::tcp::endpoint peer,
                                            peer_hello hello, events ev,
                                            peer_link_options opt = {});
  /// On the io_context's thread: closes the link and dials no more.
  void stop();
  link_state state() const noexcept { return state_.load(std::memory_order_relaxed); }
  bool up() const noexcept { return state() == link_state::up; }
  /// On the io_context's thread, while up(): queues encoded frames
  /// (encode_*) behind everything queued before. What is queued when the
  /// link fails is dropped with it (down() says why).
  void send_frames(std::string_view bytes);
  /// Bytes queued and not yet written.
  std::size_t queued_bytes() const noexcept { return pending_.size() + inflight_.size(); }
  /// When the oldest byte queued and not yet written was queued (the link's
  /// lag is now minus this); the epoch when nothing is queued.
  std::chrono::steady_clock::time_point oldest_queued() const noexcept {
    if (!inflight_.empty()) return inflight_since_;
    if (!pending_.empty()) return pending_since_;
    return {};
  }
  /// The peer's welcome, once up() (then until the link fails).
  const peer_welcome& welcome() const noexcept { return welcome_; }

  peer_dialer(asio::io_context& io, asio::ip::tcp::endpoint peer, peer_hello hello, events ev,
              peer_link_options opt);

 private:
  void dial();
  void fail(std::uint64_t attempt, const std::string& why);
  void read_more(std::uint64_t attempt);
  void on_frame(std::uint64_t attempt, peer_frame& f);
  void send(std::string_view bytes);
  void write_next();
  void heartbeat(std::uint64_t attempt);

  asio::io_context& io_;
  asio::ip::tcp::endpoint peer_;
  peer_hello hello_;
  events ev_;
  peer_link_options opt_;
  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;  // connect/handshake deadline, then the heartbeat
  peer_frame_reader reader_;
  std::array<char, 4096> read_buf_{};
  std::string pending_;                                    // queued, written once inflight_ is
  std::string inflight_;                                   // being written
  std::chrono::steady_clock::time_point pending_since_{};  // when pending_ last became non-empty
  std::chrono::steady_clock::time_point
      inflight_since_{};  // pending_since_ of what inflight_ holds
  bool writing_ = false;
  peer_welcome welcome_;
  std::uint64_t attempt_ = 0;  // handlers of an older attempt do nothing
  std::uint64_t next_ping_ = 1;
  std::chrono::steady_clock::time_point last_rx_{};
  std::chrono::milliseconds backoff_;
  std::minstd_rand jitter_{std::random_device{}()};
  std::atomic<link_state> state_{link_state::connecting};
};

}  // namespace keyway::cluster
