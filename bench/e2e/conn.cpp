#include "bench/e2e/conn.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace keyway::bench::e2e {

std::string_view to_string(system_kind s) noexcept {
  switch (s) {
    case system_kind::keyway:
      return "keyway";
    case system_kind::nats:
      return "nats";
    case system_kind::redis:
      return "redis";
    case system_kind::nats_raw:
      return "nats-raw";
    case system_kind::redis_raw:
      return "redis-raw";
  }
  return "?";
}

conn::~conn() = default;

socket_conn::~socket_conn() {
  if (fd_ >= 0) ::close(fd_);
}

void socket_conn::sync(clock::time_point deadline) {
  queue_ping();
  const std::uint64_t want = ++pings_sent_;
  wait_until([&] { return pongs_received_ >= want; }, deadline, "ping/pong round trip");
}

bool socket_conn::write_some() noexcept {
  while (!failed() && out_size() > 0) {
    const auto front = out_front();
    const ssize_t n = ::send(fd_, front.data(), front.size(), MSG_NOSIGNAL);
    if (n > 0) {
      out_consume(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    fail(std::string("send: ") + std::strerror(errno));
  }
  return !failed();
}

std::size_t socket_conn::read_some() noexcept {
  if (failed()) return 0;
  for (;;) {
    auto space = in_space();
    if (space.size() > read_limit_) space = space.first(read_limit_);
    const ssize_t n = ::recv(fd_, space.data(), space.size(), 0);
    if (n > 0) {
      try {
        in_commit(static_cast<std::size_t>(n), now_ns());
      } catch (const std::exception& e) {  // a parser or sink refused: this connection is done
        fail(std::string("while handling input: ") + e.what());
      }
      return static_cast<std::size_t>(n);
    }
    if (n == 0) {
      fail("the server closed the connection");
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    fail(std::string("recv: ") + std::strerror(errno));
    return 0;
  }
}

void socket_conn::wait(nanoseconds timeout) noexcept {
  if (failed()) return;
  pollfd p{fd_, static_cast<short>(POLLIN | (out_size() > 0 ? POLLOUT : 0)), 0};
  timespec ts{};
  if (timeout.count() > 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  }
  ::ppoll(&p, 1, &ts, nullptr);
}

bool conn::flush(clock::time_point deadline) noexcept {
  while (out_size() > 0) {
    if (!write_some()) return false;
    if (out_size() == 0) break;
    read_some();  // a peer that answers every publish (Redis) must not block us
    if (clock::now() >= deadline) return false;
    wait(std::chrono::milliseconds(20));
  }
  return !failed();
}

int take_socket(std::unique_ptr<conn> c) {
  auto* s = dynamic_cast<socket_conn*>(c.get());
  if (s == nullptr) throw bench_error("this client owns its socket; capacity mode needs a raw one");
  return s->release_fd();
}

int tcp_connect(const std::string& host, int port, clock::time_point deadline) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1)
    throw bench_error("bad IPv4 address " + host);
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw bench_error(std::string("socket: ") + std::strerror(errno));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      return fd;
    }
    const int err = errno;
    ::close(fd);
    if (clock::now() >= deadline)
      throw bench_error("connect to " + host + ":" + std::to_string(port) + ": " +
                        std::strerror(err));
    ::usleep(20'000);
  }
}

std::unique_ptr<conn> make_conn(system_kind kind, const std::string& host, int port,
                                std::string_view name, clock::time_point deadline, bool send_asap) {
  std::unique_ptr<conn> c;
  switch (kind) {
    case system_kind::keyway:
      c = make_keyway_conn(tcp_connect(host, port, deadline));
      break;
    case system_kind::nats_raw:
      c = make_nats_conn(tcp_connect(host, port, deadline));
      break;
    case system_kind::redis_raw:
      c = make_redis_conn(tcp_connect(host, port, deadline));
      break;
    case system_kind::nats:
      c = make_natsc_conn(host, port, send_asap);
      break;
    case system_kind::redis:
      c = make_hiredis_conn(host, port, deadline);
      break;
  }
  c->handshake(name, deadline);
  return c;
}

}  // namespace keyway::bench::e2e
