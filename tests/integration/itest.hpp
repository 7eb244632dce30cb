// Shared helpers of the integration tests: start keywayd, check that a daemon
// still serves clients after an attack, read a process's RSS. Test-only, the
// test's main thread (they use doctest assertions).
#pragma once

#include <doctest/doctest.h>

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/keywayd_process.hpp"
#include "tests/support/raw_client.hpp"

namespace keyway::itest {

using test::keywayd_process;
using test::temp_dir;

/// VmRSS of `pid` in bytes (0 if it cannot be read).
inline std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6)) * 1024;  // "VmRSS:   1234 kB"
  }
  return 0;
}

/// Sockets `pid` has open (its connections and listeners), from /proc/<pid>/fd.
inline std::size_t socket_count(pid_t pid) {
  std::size_t n = 0;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code link_ec;
    const auto target = std::filesystem::read_symlink(e.path(), link_ec);
    if (!link_ec && target.string().rfind("socket:", 0) == 0) ++n;
  }
  return n;
}

/// `sub` subscribes to a fresh subject, `pub` publishes one acknowledged
/// message to it: the ack must count one subscriber and `sub` must get it.
inline void check_round_trip(raw_client& sub, raw_client& pub) {
  static std::atomic<std::uint32_t> counter{0};
  const std::uint32_t n = ++counter;
  const std::uint32_t sid = 900'000 + n;
  const std::string subject = "health.check." + std::to_string(n);
  const std::string payload = "round trip " + std::to_string(n);
  sub.subscribe(sid, subject);
  const ack_frame ack = pub.publish_acked(subject, "health-key", payload);
  CHECK(ack.delivered == 1);
  const auto got = sub.collect(1, default_timeout);
  REQUIRE(got.size() == 1);
  CHECK(got[0].sid == sid);
  CHECK(got[0].subject == subject);
  CHECK(got[0].payload == payload);
  sub.unsubscribe(sid);
}

/// The daemon still serves: `established` (connected before the trouble) and
/// a brand-new client exchange messages both ways.
inline void check_daemon_serves(keywayd_process& d, raw_client& established) {
  INFO("daemon log:\n" << d.log());
  raw_client fresh = open_client(d.url(), "fresh");
  check_round_trip(established, fresh);
  check_round_trip(fresh, established);
}

/// Expects `c` to receive a fatal error with `code` and then be closed by the
/// daemon. Returns the error frame.
inline error_frame expect_fatal_then_close(raw_client& c, proto::errc code,
                                           ms timeout = default_timeout) {
  std::vector<server_frame> seen;
  const bool closed = c.wait_closed(timeout, &seen);
  CHECK_MESSAGE(closed, "the daemon did not close the connection");
  error_frame found;
  int errors = 0;
  for (const auto& f : seen) {
    if (const auto* e = std::get_if<error_frame>(&f)) {
      found = *e;
      ++errors;
    } else {
      FAIL_CHECK("unexpected frame before the close: " << describe(f));
    }
  }
  REQUIRE_MESSAGE(errors == 1, "expected exactly one error frame, got " << errors);
  CHECK_MESSAGE(found.code == code,
                "got " << proto::to_string(found.code) << ": " << found.message);
  CHECK(found.fatal);
  CHECK_FALSE(found.message.empty());
  return found;
}

/// Sum of every sample of `name` (any labels) in Prometheus text output.
inline double metric_sum(const std::string& text, const std::string& name) {
  double sum = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, name.size(), name) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

/// Little-endian 64-bit words, for hand-made frames.
inline std::vector<std::byte> words(std::initializer_list<std::uint64_t> ws) {
  std::vector<std::byte> v(ws.size() * 8);
  std::size_t i = 0;
  for (const std::uint64_t w : ws) {
    for (int b = 0; b < 8; ++b)
      v[8 * i + static_cast<std::size_t>(b)] = static_cast<std::byte>(w >> (8 * b));
    ++i;
  }
  return v;
}

/// The first word of a segment table: segment count - 1, then the size in
/// words of segment 0.
constexpr std::uint64_t seg_table(std::uint32_t count_minus_one, std::uint32_t first_words) {
  return std::uint64_t{count_minus_one} | (std::uint64_t{first_words} << 32);
}

}  // namespace keyway::itest
