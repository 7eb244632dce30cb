// Test fixtures for the client suites: start the real keywayd on
// tcp://127.0.0.1:0 with --workers 2 (plus extra flags), stop it and check it
// exits 0, and restart it on the port it had (for reconnect tests). Needs
// KEYWAYD_PATH (set in tests/unit/client/CMakeLists.txt) and doctest. Test
// thread only.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/keywayd_process.hpp"

namespace keyway::test {

inline std::unique_ptr<keywayd_process> start_daemon(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"--listen", "tcp://127.0.0.1:0", "--workers", "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto d = std::make_unique<keywayd_process>(args);
  REQUIRE_FALSE(d->addresses().empty());
  return d;
}

inline void stop_daemon(keywayd_process& d) {
  const auto rc = d.stop();
  INFO("keywayd log:\n" << d.log());
  CHECK(rc == 0);
}

/// Starts keywayd (--workers 2, plus extra flags) on tcp://127.0.0.1:`port`,
/// a port an earlier daemon of the test had: retries for about 5 s while the
/// port is not free yet, then lets the last failure (an exception) fail the test.
inline std::unique_ptr<keywayd_process> start_daemon_on_port(
    std::uint16_t port, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"--listen", "tcp://127.0.0.1:" + std::to_string(port), "--workers",
                                "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  for (int attempt = 1;; ++attempt) {
    try {
      return std::make_unique<keywayd_process>(args);
    } catch (const std::runtime_error&) {
      if (attempt == 20) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
}

/// Stops `d` (SIGTERM; checks it exits 0) and starts a new keywayd on the
/// same TCP port in its place, so that clients can reconnect to the same URL.
inline void restart_daemon(std::unique_ptr<keywayd_process>& d,
                           const std::vector<std::string>& extra = {}) {
  const std::uint16_t port = d->port();
  stop_daemon(*d);
  d.reset();
  d = start_daemon_on_port(port, extra);
}

}  // namespace keyway::test
