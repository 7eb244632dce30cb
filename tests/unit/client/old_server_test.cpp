// keyway::client against a server of protocol version 1. Such a server (keywayd
// before protocol version 2, commit 4fce48c) cannot be built from this tree,
// so a stand-in speaks for it here, on 127.0.0.1:0 or a temporary Unix
// socket: it answers a hello of any version but 1 with the fatal
// unsupportedVersion error that server sent and closes, as it did; it
// welcomes version 1, answers pings, and records every hello's version and
// the kind of every later frame. Set to refuse version 1 as well, it stands
// for a server that no longer speaks it. Every wait has a deadline. The stand-in's thread asserts
// nothing: a failure there shows as a connect() error or missing frames in the test's own checks.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <keyway/client.hpp>
#include "proto/codec.hpp"
#include "tests/support/local_socket.hpp"

using namespace std::chrono_literals;
namespace proto = keyway::proto;
namespace wire = keyway::proto::wire;

namespace {

struct stand_in_options {
  bool welcome_version_1 = true;  // false: refuse every version, 1 too
  std::string unix_path;          // listen there instead of on 127.0.0.1:0
};

class version1_server {
 public:
  explicit version1_server(stand_in_options o = {})
      : welcome_1_(o.welcome_version_1), unix_path_(o.unix_path) {
    if (unix_path_.empty()) {
      const auto s = keyway::test::bind_loopback();
      listen_fd_ = s.fd;
      url_ = "tcp://127.0.0.1:" + std::to_string(s.port);
    } else {
      listen_fd_ = keyway::test::bind_unix(unix_path_);
      url_ = "unix://" + unix_path_;
    }
    const bool listening = ::listen(listen_fd_, 4) == 0;
    if (!listening) ::close(listen_fd_);
    REQUIRE(listening);
    thread_ = std::thread([this] { run(); });
  }
  ~version1_server() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
    if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
  }

  const std::string& url() const { return url_; }
  std::vector<std::uint32_t> hellos() const {
    std::lock_guard lock(mu_);
    return hellos_;
  }
  std::vector<std::string> kinds() const {
    std::lock_guard lock(mu_);
    return kinds_;
  }

 private:
  bool wait_readable(int fd) const {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 50) == 1;
  }

  void run() {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      if (!wait_readable(listen_fd_)) continue;
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      serve(fd, deadline);
      ::close(fd);
    }
  }

  static bool send_all(int fd, proto::out_buffer& out) {
    while (!out.empty()) {
      const auto bytes = out.front();
      const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      out.consume(static_cast<std::size_t>(n));
    }
    return true;
  }

  // One connection, until the client closes it or this server refuses it.
  void serve(int fd, std::chrono::steady_clock::time_point deadline) {
    proto::decoder dec;
    proto::encoder enc;
    proto::out_buffer out;
    bool welcomed = false;
    std::byte buf[4096];
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      if (!wait_readable(fd)) continue;
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return;
      dec.feed(std::span<const std::byte>(buf, static_cast<std::size_t>(n)));
      for (;;) {
        auto next = dec.next();
        if (!next || !next->has_value()) break;
        const proto::frame& f = **next;
        if (!welcomed) {
          if (f.which() != wire::Frame::HELLO) return;
          const std::uint32_t version = f.root().getHello().getProtocolVersion();
          {
            std::lock_guard lock(mu_);
            hellos_.push_back(version);
          }
          if (version != 1 || !welcome_1_) {
            const std::string why = "protocol version " + std::to_string(version) +
                                    (welcome_1_ ? " is not supported; this server speaks 1"
                                                : " is not supported; this server speaks 3 and up");
            proto::error_fields e;
            e.code = proto::errc::unsupported_version;
            e.message = why;
            e.fatal = true;
            if (enc.error(out, e)) send_all(fd, out);
            return;
          }
          proto::welcome_fields w;
          w.server_id = "version-1-stand-in";
          w.server_version = "0.1.0";
          w.protocol_version = 1;
          w.worker_count = 1;
          if (!enc.welcome(out, w)) return;
          welcomed = true;
        } else {
          {
            std::lock_guard lock(mu_);
            kinds_.emplace_back(proto::kind_name(f.which()));
          }
          if (f.which() == wire::Frame::PING && !enc.pong(out, f.root().getPing().getId())) return;
        }
      }
      if (!send_all(fd, out)) return;
    }
  }

  const bool welcome_1_;
  const std::string unix_path_;
  int listen_fd_ = -1;
  std::string url_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<std::uint32_t> hellos_;
  std::vector<std::string> kinds_;
  std::thread thread_;
};

}  // namespace

namespace {

keyway::client::connect_options quick_options() {
  keyway::client::connect_options o;
  o.connect_timeout = 5s;
  o.op_timeout = 5s;
  return o;
}

// connect() falls back to version 1, and plain publishes to one subject, which
// would go as one publishBatch to a version-2 server, go as publish frames, in
// order, then the flush's ping.
void check_fallback(version1_server& server) {
  auto c = keyway::client::connect(server.url(), quick_options());
  REQUIRE_MESSAGE(c.has_value(), (c ? std::string() : c.error().to_string()));
  auto& conn = **c;
  CHECK(conn.info().protocol_version == 1);
  CHECK(conn.info().server_version == "0.1.0");
  CHECK(server.hellos() == std::vector<std::uint32_t>{proto::protocol_version, 1});
  for (const char* payload : {"m0", "m1", "m2"}) REQUIRE(conn.publish("a.b", payload));
  REQUIRE(conn.flush());
  CHECK(server.kinds() == std::vector<std::string>{"publish", "publish", "publish", "ping"});
  conn.close();
}

}  // namespace

TEST_CASE(
    "client: against a version-1 server, connect falls back to version 1 and sends no batches") {
  version1_server server;
  check_fallback(server);
}

TEST_CASE("client: the fallback to version 1 works over a Unix socket too") {
  version1_server server({true, "/tmp/keyway-v1-stand-in-" + std::to_string(::getpid()) + ".sock"});
  check_fallback(server);
}

TEST_CASE(
    "client: a server that refuses version 1 as well fails connect once, saying both refusals") {
  version1_server server({false, ""});
  const auto start = std::chrono::steady_clock::now();
  auto c = keyway::client::connect(server.url(), quick_options());
  REQUIRE_FALSE(c.has_value());
  INFO(c.error().to_string());
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the connect timeout: two refusals
  CHECK((c.error().code == proto::errc::unsupported_version));
  CHECK(
      c.error().message.find("protocol version 1 is not supported; this server speaks 3 and up") !=
      std::string::npos);
  CHECK(c.error().message.find("refused protocol version 2") != std::string::npos);
  CHECK(c.error().message.find("tried again with 1") != std::string::npos);
  CHECK(server.hellos() == std::vector<std::uint32_t>{proto::protocol_version, 1});
}
