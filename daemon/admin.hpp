// admin_service: keywayd's admin HTTP listener and health clock, on a thread
// of its own ("keyway-admin"), so that it answers while the main thread
// drains and whatever the workers do.
//
//   GET /metrics   Prometheus text 0.0.4 (metrics_collector)
//   GET /livez     200 while this thread serves
//   GET /readyz    200 when serving with every listener bound and no worker
//                  stalled (stalled: did not run the health probe posted to
//                  its event loop within the last check interval); 503
//                  while starting, draining or stalled.
//                  ?verbose lists each check. /healthz is an alias.
//   GET /status    JSON: version, uptime, phase, workers, connections,
//                  subscriptions, queue depths, listeners
//
// HTTP/1.1 with Connection: close, GET and HEAD only; the request head is
// parsed by parse_request() (daemon/http_request.hpp): over 16 KiB it gets
// 431, anything else malformed 400. A connection gets 10 s in all to send its
// request and read the answer. A client that half-closes (EOF) after a whole
// request is answered; after part of one, or nothing, it is closed at once.
//
// At most `max_connections` (admin.max_connections, default 64) admin
// connections are open at once. One more is answered at once with
//   503 "too many admin connections (admin.max_connections is 64)"
// (best effort: written without waiting, the request is not looked at) and
// closed; the log says so at most every 10 s. A failed accept (out
// of file descriptors or memory) backs off, 10 ms doubling to 1 s, with one
// log line per episode (daemon/accept_backoff.hpp).
//
// Every second the thread runs server::check_progress() and, when systemd's
// watchdog is on, sends WATCHDOG=1 every half period while no worker is
// stalled.
//
// Threads: construct, start() and stop() on the main thread. Cost: one
// thread; per connection a socket, a timer and its request (up to 16 KiB).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "config/options.hpp"

namespace keyway::daemon {

class server;

class admin_service {
 public:
  static constexpr std::size_t default_max_connections = 64;

  /// `listen` unset: no HTTP listener, only the health clock.
  /// `max_connections`: admin connections open at once, at least 1.
  admin_service(server& srv, std::optional<listen_address> listen,
                std::size_t max_connections = default_max_connections);
  ~admin_service();
  admin_service(const admin_service&) = delete;
  admin_service& operator=(const admin_service&) = delete;

  /// Binds the listener (throws std::runtime_error naming the address) and
  /// starts the thread.
  void start();
  void stop();
  /// http://HOST:PORT with the port resolved; empty without a listener.
  const std::string& url() const noexcept;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

/// The body of /status (JSON) and of /readyz?verbose, exposed for tests.
std::string status_json(const server& srv, const std::string& admin_url);
std::string readiness_report(const server& srv, bool& ready);

}  // namespace keyway::daemon
