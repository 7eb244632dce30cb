// http_get: a blocking HTTP/1.1 GET for tests (the admin endpoints, the
// Prometheus query API). Connection: close; reads until EOF. Header only.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <string>

namespace keyway::test {

struct http_response {
  int status = 0;
  std::string headers;  // the status line and headers, CRLF separated
  std::string body;
  /// The value of header `name` (case-sensitive match on the name), or "".
  std::string header(const std::string& name) const {
    const auto p = headers.find("\r\n" + name + ": ");
    if (p == std::string::npos) return {};
    const auto b = p + 4 + name.size();
    return headers.substr(b, headers.find("\r\n", b) - b);
  }
};

/// GET http://127.0.0.1:port/target (IPv4 loopback). Throws on a socket
/// error or when nothing complete arrives within `timeout`.
inline http_response http_get(std::uint16_t port, const std::string& target,
                              std::chrono::milliseconds timeout = std::chrono::seconds(10),
                              const std::string& method = "GET") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
  }
  const std::string req =
      method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    throw std::runtime_error("send failed");
  }
  std::string all;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      all.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    ::close(fd);
    if (n < 0)
      throw std::runtime_error("no complete HTTP response for " + target + " within the timeout");
    break;
  }
  const auto end = all.find("\r\n\r\n");
  if (end == std::string::npos || all.compare(0, 5, "HTTP/") != 0)
    throw std::runtime_error("not an HTTP response: " + all.substr(0, 200));
  http_response r;
  r.headers = all.substr(0, end + 2);
  r.body = all.substr(end + 4);
  r.status = std::stoi(all.substr(all.find(' ') + 1, 3));
  return r;
}

}  // namespace keyway::test
