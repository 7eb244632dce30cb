// Local sockets for tests: TCP on 127.0.0.1 at a port the kernel picks, and
// Unix sockets at a path. Header only.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace keyway::test {

struct loopback_socket {
  int fd = -1;
  std::uint16_t port = 0;
};

/// A TCP socket (close-on-exec) bound to 127.0.0.1 on a port the kernel chose,
/// not yet listening. The caller closes fd. Throws std::runtime_error.
inline loopback_socket bind_loopback() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("binding 127.0.0.1:0: " + why);
  }
  return {fd, ntohs(a.sin_port)};
}

/// A loopback port nothing listens on now: bound, then released.
inline std::uint16_t closed_loopback_port() {
  const loopback_socket s = bind_loopback();
  ::close(s.fd);
  return s.port;
}

/// A Unix socket of `type` (SOCK_STREAM or SOCK_DGRAM, close-on-exec) bound
/// at `path`, not yet listening; a file left at `path` is removed first. The
/// caller closes it. Throws std::runtime_error.
inline int bind_unix(const std::string& path, int type = SOCK_STREAM) {
  sockaddr_un a{};
  if (path.size() >= sizeof a.sun_path)
    throw std::runtime_error("unix socket path of " + std::to_string(path.size()) +
                             " bytes is over the limit of " +
                             std::to_string(sizeof a.sun_path - 1));
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  ::unlink(path.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("binding " + path + ": " + why);
  }
  return fd;
}

}  // namespace keyway::test
