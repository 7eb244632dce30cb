// fd_limit: limits.max_connections derived from the descriptors keywayd has.
#include "daemon/fd_limit.hpp"

#include <doctest/doctest.h>

using keyway::daemon::effective_max_connections;
using keyway::daemon::fd_limit;
using keyway::daemon::reserved_fds;
using keyway::daemon::server_options;

TEST_CASE("fd_limit: max_connections 0 takes what the descriptors leave after the reserve") {
  server_options o;  // one listener, admin on with 64 connections
  REQUIRE(o.max_connections == 0);
  CHECK(reserved_fds(o, 2) == 64 + 1 + 65 + 4);
  std::string why;
  CHECK(effective_max_connections(o, 2, fd_limit{1024, 4096, 1024}, why) == 1024 - 134);
  CHECK(why.find("limits.max_connections = 890 (derived: RLIMIT_NOFILE is 1024 (hard 4096)") == 0);
  // Plenty of descriptors: the default cap.
  CHECK(effective_max_connections(o, 2, fd_limit{1u << 20, 1u << 20, 1024}, why) == 65536);
  // Fewer descriptors than the reserve: one connection, never zero.
  CHECK(effective_max_connections(o, 2, fd_limit{100, 100, 100}, why) == 1);
}

TEST_CASE(
    "fd_limit: a configured max_connections is kept, with a warning when the descriptors cannot "
    "hold it") {
  server_options o;
  o.max_connections = 5000;
  std::string why;
  CHECK(effective_max_connections(o, 2, fd_limit{1024, 1024, 1024}, why) == 5000);
  CHECK(
      why.find(
          "limits.max_connections = 5000 exceeds the 890 connections the file descriptors allow") ==
      0);
  CHECK(effective_max_connections(o, 2, fd_limit{65536, 65536, 1024}, why) == 5000);
  CHECK(why.empty());
}
