#include "daemon/fd_limit.hpp"

#include <sys/resource.h>

#include <algorithm>

namespace keyway::daemon {

fd_limit raise_fd_limit() noexcept {
  constexpr std::uint64_t unlimited = 1u << 20;
  auto value = [](rlim_t v) {
    return v == RLIM_INFINITY ? unlimited : static_cast<std::uint64_t>(v);
  };
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return {1024, 1024, 1024};
  fd_limit out{value(rl.rlim_cur), value(rl.rlim_max), value(rl.rlim_cur)};
  if (rl.rlim_cur != rl.rlim_max) {
    rlimit up = rl;
    up.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &up) == 0) out.soft = value(up.rlim_cur);
  }
  return out;
}

std::size_t reserved_fds(const server_options& o, std::size_t workers) noexcept {
  return 64 + o.listen.size() + (o.admin ? o.admin_max_connections + 1 : 0) + 2 * workers;
}

std::size_t effective_max_connections(const server_options& o, std::size_t workers,
                                      const fd_limit& fds, std::string& why) {
  constexpr std::size_t default_cap = 65536;
  const std::size_t reserve = reserved_fds(o, workers);
  const std::size_t room = fds.soft > reserve ? static_cast<std::size_t>(fds.soft) - reserve : 1;
  const std::string basis = "RLIMIT_NOFILE is " + std::to_string(fds.soft) + " (hard " +
                            std::to_string(fds.hard) + "), less " + std::to_string(reserve) +
                            " kept for listeners, admin and files";
  if (o.max_connections == 0) {
    const std::size_t n = std::min(default_cap, room);
    why = "limits.max_connections = " + std::to_string(n) + " (derived: " + basis + ")";
    return n;
  }
  why.clear();
  if (o.max_connections > room)
    why = "limits.max_connections = " + std::to_string(o.max_connections) + " exceeds the " +
          std::to_string(room) + " connections the file descriptors allow (" + basis +
          "); accept will fail and back off past that. Raise LimitNOFILE= or lower the limit";
  return o.max_connections;
}

}  // namespace keyway::daemon
