// keyway::client against a server of protocol version 1. Such a server (keywayd
// before protocol version 2, commit 4fce48c) cannot be built from this tree,
// so a stand-in speaks for it here, over loopback on port 0: it answers a
// hello of any version but 1 with the fatal unsupportedVersion error that
// server sent and closes, as it did; it welcomes version 1, answers pings,
// and records every hello's version and the kind of every later frame. Every
// wait has a deadline. The stand-in's thread asserts nothing: a failure there
// shows as a connect() error or missing frames in the test's own checks.
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

#include "client/client.hpp"
#include "proto/codec.hpp"
#include "tests/support/loopback_port.hpp"

using namespace std::chrono_literals;
namespace proto = keyway::proto;
namespace wire = keyway::proto::wire;

namespace {

class version1_server {
 public:
  version1_server() {
    const auto s = keyway::test::bind_loopback();
    listen_fd_ = s.fd;
    port_ = s.port;
    REQUIRE(::listen(listen_fd_, 4) == 0);
    thread_ = std::thread([this] { run(); });
  }
  ~version1_server() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }

  std::string url() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
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
          if (version != 1) {
            const std::string why = "protocol version " + std::to_string(version) +
                                    " is not supported; this server speaks 1";
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

  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<std::uint32_t> hellos_;
  std::vector<std::string> kinds_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("client: against a version-1 server, connect falls back to version 1 and sends no batches") {
  version1_server server;
  keyway::client::connect_options options;
  options.connect_timeout = 5s;
  options.op_timeout = 5s;
  auto c = keyway::client::connect(server.url(), options);
  REQUIRE_MESSAGE(c.has_value(), (c ? std::string() : c.error().to_string()));
  auto& conn = **c;
  CHECK(conn.info().protocol_version == 1);
  CHECK(conn.info().server_version == "0.1.0");
  CHECK(server.hellos() == std::vector<std::uint32_t>{proto::protocol_version, 1});

  // Plain publishes to one subject would go as one publishBatch to a
  // version-2 server; here each is a publish frame, in order, then the
  // flush's ping.
  for (const char* payload : {"m0", "m1", "m2"}) REQUIRE(conn.publish("a.b", payload));
  REQUIRE(conn.flush());
  CHECK(server.kinds() == std::vector<std::string>{"publish", "publish", "publish", "ping"});
  conn.close();
}
