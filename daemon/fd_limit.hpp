// fd_limit: the process's file-descriptor budget and what it allows.
// keywayd raises RLIMIT_NOFILE's soft limit to the hard limit at start (as
// nats-server and most daemons do), then sizes limits.max_connections from
// it when the configuration leaves it at 0, keeping a reserve for listeners,
// admin connections, the workers' event loops and files. Any thread; startup
// and reload only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "config/options.hpp"

namespace keyway::daemon {

struct fd_limit {
  std::uint64_t soft = 0;  // after raising
  std::uint64_t hard = 0;
  std::uint64_t was = 0;  // the soft limit keywayd started with
};

/// Raises the soft RLIMIT_NOFILE to the hard limit (best effort) and reports
/// both. RLIM_INFINITY reads as 1 << 20.
fd_limit raise_fd_limit() noexcept;

/// Descriptors kept out of max_connections: listeners, admin connections,
/// two per worker (epoll, eventfd), and 64 for files, logs and systemd.
std::size_t reserved_fds(const server_options& o, std::size_t workers) noexcept;

/// The connection limit to apply: limits.max_connections, or when it is 0
/// what the descriptors left after the reserve allow (at most 65536, at
/// least 1). `why` is set to a log line saying how the value was reached,
/// or that a configured value exceeds what the descriptors allow.
std::size_t effective_max_connections(const server_options& o, std::size_t workers,
                                      const fd_limit& fds, std::string& why);

}  // namespace keyway::daemon
