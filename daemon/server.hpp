// server: keywayd's top level. Binds the listeners, builds the mesh and the
// worker pool with one router per worker, and runs the drain on shutdown.
//
// Threads: constructed, started and stopped by the main thread. Workers only
// read the server_context it owns (plus their own stats blocks).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/worker_pool.hpp"
#include "daemon/options.hpp"
#include "daemon/router.hpp"

namespace keyway::daemon {

class server {
 public:
  explicit server(server_options opt);
  ~server();

  /// Binds every listener and starts the workers. Throws std::runtime_error
  /// with a message naming the address and the reason on failure.
  void start();
  /// The bound addresses, ports resolved (tcp://127.0.0.1:PORT, unix:///p).
  const std::vector<std::string>& addresses() const noexcept { return addresses_; }
  /// Stops accepting and reading, waits until everything accepted has been
  /// routed and written (or drain_timeout passes), then stops the workers.
  /// Returns true if the drain completed within the timeout.
  bool drain_and_stop();
  const server_context& context() const noexcept { return ctx_; }
  core::worker_pool& pool() noexcept { return *pool_; }

 private:
  void bind_listeners();
  bool quiescent() const;

  server_context ctx_;
  std::unique_ptr<core::worker_pool> pool_;
  std::vector<std::string> addresses_;
  std::vector<std::string> unix_paths_;
};

/// A random 16-hex-digit id for this process.
std::string make_server_id();

}  // namespace keyway::daemon
