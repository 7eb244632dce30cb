// peer_link: the TCP links between cluster nodes (cluster/peer.capnp): the
// handshake, the heartbeat and the redial. A dialling node opens one link per
// (worker, peer node), sends `hello` (cluster, node id, incarnation, epoch,
// worker); the listening node admits it with `welcome` or answers `refused`
// and closes. Then the dialler pings every heartbeat; either side declares
// the link dead after three heartbeats without a frame, and the dialler
// dials again with jittered exponential backoff (reset once a link comes up).
//
// Not built yet: the frames that carry messages over these links (forwarded
// publishes, deliveries, interest); keywayd does not open peer links yet
// (docs/cluster.md).
//
// Threads: a peer_listener or peer_dialer, and every callback it makes, run
// on the io_context it was given (one thread). state(), links_up() and
// port() may be read from any thread.
// Cost: one small frame per heartbeat per link; frames are encoded into a
// fresh buffer (control traffic only).
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
#include <string>
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
using peer_frame = std::variant<peer_hello, peer_welcome, peer_refused, peer_ping, peer_pong>;

/// One PeerFrame per Cap'n Proto framed message.
std::string encode_peer_frame(const peer_frame& f);

/// Splits a byte stream into peer frames. A frame larger than `max_frame`
/// bytes, or one that does not parse, is an error naming what was wrong.
class peer_frame_reader {
 public:
  explicit peer_frame_reader(std::size_t max_frame) : max_frame_(max_frame) {}
  void append(const char* data, std::size_t n) { buffer_.append(data, n); }
  /// The next complete frame, nothing yet, or why the stream is unusable.
  result<std::optional<peer_frame>, std::string> next();

 private:
  std::size_t max_frame_;
  std::string buffer_;
};

struct peer_link_options {
  std::chrono::milliseconds handshake_timeout{2000};
  /// The dialler pings this often; three heartbeats without a frame: dead.
  std::chrono::milliseconds heartbeat{500};
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{2000};
  std::size_t max_frame = 1 << 20;
};

/// The listening side: accepts links and admits each by its hello.
class peer_listener {
 public:
  /// The welcome to send, or why the link is refused.
  using admit_fn = std::function<result<peer_welcome, std::string>(const peer_hello&)>;

  /// Binds `at` (port 0: any free port) and accepts until close().
  peer_listener(asio::io_context& io, const asio::ip::tcp::endpoint& at, admit_fn admit,
                peer_link_options opt = {});
  ~peer_listener();
  peer_listener(const peer_listener&) = delete;
  peer_listener& operator=(const peer_listener&) = delete;

  std::uint16_t port() const noexcept { return port_; }
  /// Links past the handshake and not dead yet.
  std::size_t links_up() const noexcept { return up_.load(std::memory_order_relaxed); }
  /// Stops accepting and closes every link (on the io_context's thread).
  void close();

  struct session;

 private:
  void accept_next();

  asio::io_context& io_;
  asio::ip::tcp::acceptor acceptor_;
  admit_fn admit_;
  peer_link_options opt_;
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

  peer_dialer(asio::io_context& io, asio::ip::tcp::endpoint peer, peer_hello hello, events ev,
              peer_link_options opt);

 private:
  void dial();
  void fail(std::uint64_t attempt, const std::string& why);
  void read_more(std::uint64_t attempt);
  void on_frame(std::uint64_t attempt, peer_frame& f);
  void send(std::string bytes);
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
  std::deque<std::string> out_;
  bool writing_ = false;
  std::uint64_t attempt_ = 0;  // handlers of an older attempt do nothing
  std::uint64_t next_ping_ = 1;
  std::chrono::steady_clock::time_point last_rx_{};
  std::chrono::milliseconds backoff_;
  std::minstd_rand jitter_{std::random_device{}()};
  std::atomic<link_state> state_{link_state::connecting};
};

}  // namespace keyway::cluster
