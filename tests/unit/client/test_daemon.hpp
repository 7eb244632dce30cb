// Test fixtures for the client suites: start the real keywayd on
// tcp://127.0.0.1:0 with --workers 2 (plus extra flags), stop it and check it
// exits 0. Needs KEYWAYD_PATH (set in tests/unit/client/CMakeLists.txt) and
// doctest. Test thread only.
#pragma once

#include <doctest/doctest.h>

#include <memory>
#include <string>
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

}  // namespace keyway::test
