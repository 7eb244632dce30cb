// server: keywayd's top level. Binds the listeners, builds the mesh and the
// worker pool with one router per worker, and runs the drain on shutdown.
//
// Threads: constructed, started and stopped by the main thread. Workers only
// read the server_context it owns (plus their own stats blocks).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/options.hpp"
#include "core/progress_monitor.hpp"
#include "core/worker_pool.hpp"
#include "daemon/cluster_node.hpp"
#include "daemon/fd_limit.hpp"
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
  /// Lame duck first: every client gets a `draining` frame and the server
  /// serves on for lame_duck_grace (less once no client is left). Then it
  /// stops accepting and reading, waits until everything accepted has been
  /// routed and written (or drain_timeout passes), and stops the workers.
  /// Returns true if the drain completed within the timeout.
  bool drain_and_stop();
  const server_context& context() const noexcept { return ctx_; }
  core::worker_pool& pool() noexcept { return *pool_; }
  const core::worker_pool& pool() const noexcept { return *pool_; }

  // ---- health (any thread) ---------------------------------------------------
  enum class phase { starting, serving, draining, stopped };
  phase current_phase() const noexcept { return phase_.load(std::memory_order_acquire); }
  std::chrono::steady_clock::time_point started_at() const noexcept { return started_at_; }
  /// Serving, every listener bound, no worker stalled at the last check,
  /// and in a cluster the node ready (cluster_node::ready()).
  bool ready() const {
    return current_phase() == phase::serving && stalled_workers().empty() &&
           (!cluster_ || cluster_->ready());
  }
  /// This node's cluster membership; null without [cluster].
  const cluster_node* cluster() const noexcept { return cluster_.get(); }
  /// core::progress_monitor::check(); the admin thread calls it every second.
  void check_progress();
  /// Workers found stalled by the last check_progress().
  std::vector<std::uint32_t> stalled_workers() const;

  // ---- reload (main thread) --------------------------------------------------
  /// Applies what may change live (log level, limits, auth tokens) on every
  /// worker. Returns the names of the keys in `next` that differ from the
  /// running options but cannot change live; when there are any, nothing is
  /// applied.
  std::vector<std::string> reload(const server_options& next);

 private:
  /// Subscription ids keep their worker in the top 8 bits (route.hpp).
  static constexpr std::size_t max_workers = daemon::max_workers;

  void bind_listeners();
  /// [cluster]: binds cluster.peer_listen and joins the cluster in etcd.
  void join_cluster();
  /// limits.max_connections = 0 becomes what the fd limit allows; logs how.
  void resolve_connection_limit(server_options& o) const;
  bool adopt_activated_sockets(asio::io_context& io0);
  bool quiescent() const;
  /// Client connections open on every worker (their gauges; any thread).
  std::uint64_t client_connections() const;
  /// drain_and_stop()'s first step: `draining` to every client, then the grace.
  void lame_duck();

  server_context ctx_;
  std::unique_ptr<core::worker_pool> pool_;
  std::vector<std::string> addresses_;
  std::vector<std::string> unix_paths_;
  server_options applied_;        // the options in force, as reloads changed them (main thread)
  std::vector<router*> routers_;  // set by each worker's init; read after start()
  std::atomic<phase> phase_{phase::starting};
  std::chrono::steady_clock::time_point started_at_ = std::chrono::steady_clock::now();
  std::unique_ptr<core::progress_monitor> progress_;
  fd_limit fds_;  // after raising the soft limit at start
  std::unique_ptr<cluster_node> cluster_;
  std::atomic<bool> workers_started_{false};  // cluster_node may wake them
};

/// Opens, binds (SO_REUSEADDR) and listens; throws std::runtime_error naming
/// `what` (e.g. "listen", "admin listen"), the address and the reason.
void open_tcp_acceptor(asio::ip::tcp::acceptor& acc, const listen_address& a,
                       std::string_view what);

/// A random 16-hex-digit id for this process.
std::string make_server_id();

}  // namespace keyway::daemon
