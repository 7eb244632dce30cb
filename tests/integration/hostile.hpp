// Shared helpers of the hostile-client tests (hostile_*_test.cpp). Each of
// those tests runs the real keywayd against an attacker that stays within the
// protocol, or nearly, but makes the daemon do or hold far more than it sends,
// and checks that the daemon refuses or paces the attacker with the error that
// names the limit, keeps its memory and CPU bounded
// (tests/support/proc_stats.hpp), and keeps serving a well-behaved client on
// another connection: the median publish → ack + delivery round trip of that
// client during (or after) the attack stays within latency_slack of the median
// measured before it.
//
// Here: frames as bytes, flood_conn (a socket for floods), latency_probe (the
// well-behaved client) and its checks, and the daemon's log for failure
// messages.
//
// Threading: a flood_conn or latency_probe belongs to one thread at a time;
// background_probe runs a latency_probe on a thread of its own. The check_
// and require_ functions use doctest assertions: call them from the test's
// thread. Cost: test code.
#pragma once

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/proc_stats.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define KEYWAY_HOSTILE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYWAY_HOSTILE_TEST_ASAN 1
#endif
#endif

namespace keyway::itest {

using us = std::chrono::microseconds;
using test::rss_watch;

inline constexpr std::uint64_t mib = 1 << 20;
/// Added to every RSS bound under AddressSanitizer, which keeps freed memory
/// in quarantine (256 MiB by default): there RSS grows with the allocations
/// an attack causes, even when the daemon keeps none of them.
#ifdef KEYWAY_HOSTILE_TEST_ASAN
inline constexpr std::uint64_t asan_rss_slack = 64 * mib;
#else
inline constexpr std::uint64_t asan_rss_slack = 0;
#endif
/// How much slower than before the attack the good client may get.
inline constexpr auto latency_slack = 100ms;
inline constexpr int baseline_round_trips = 20;

// ---- frames as bytes ------------------------------------------------------------

/// The wire bytes of one frame, from an encoder of this thread.
template <class Encode>
std::vector<std::byte> frame_bytes(Encode&& encode) {
  thread_local proto::encoder enc;
  proto::out_buffer out;
  const auto r = encode(enc, out);
  if (!r) throw io_error("encoding failed: " + r.error().message());
  std::vector<std::byte> v;
  out.drain_to(v);
  return v;
}

std::vector<std::byte> hello_bytes(std::string_view name);
std::vector<std::byte> publish_bytes(std::string_view subject, std::string_view key,
                                     std::string_view payload, std::uint64_t ack_id = 0);
std::vector<std::byte> ping_bytes(std::uint64_t id);

/// "key-17" from ("key-", 17).
std::string numbered(std::string_view prefix, std::uint64_t n);

// ---- a socket for floods --------------------------------------------------------

/// A TCP client for floods. raw_client::send_raw gives up mid-frame when the
/// server stops reading; this one keeps its place in what it queued, so a
/// flood can wait for the server and carry on. It reads only when asked to,
/// and then drops what it reads without decoding it (its hello's welcome
/// included): a cheap sink for deliveries.
class flood_conn {
 public:
  /// rcvbuf/sndbuf > 0 set SO_RCVBUF/SO_SNDBUF before connecting (a small
  /// buffer keeps the kernel from absorbing much of a flood). Throws io_error.
  explicit flood_conn(std::uint16_t port, int rcvbuf = 0, int sndbuf = 0);
  flood_conn(const flood_conn&) = delete;
  flood_conn& operator=(const flood_conn&) = delete;
  ~flood_conn();

  void queue(std::span<const std::byte> bytes);
  std::size_t queued() const noexcept { return out_.size() - off_; }
  std::uint64_t written() const noexcept { return written_; }
  std::uint64_t discarded() const noexcept { return discarded_; }
  /// The server closed or reset the connection.
  bool gone() const noexcept { return gone_; }

  /// Writes queued bytes until none is left or `deadline` passes. False once
  /// the peer is gone.
  bool write_until(steady::time_point deadline);

  /// Waits up to `wait` for input, then reads and drops what arrived (at
  /// most 16 MiB, so that a caller gets control back). False once the peer
  /// is gone.
  bool discard_input(ms wait);

 private:
  int fd_ = -1;
  std::vector<std::byte> out_;
  std::size_t off_ = 0;
  std::uint64_t written_ = 0;
  std::uint64_t discarded_ = 0;
  std::vector<std::byte> scratch_;
  bool gone_ = false;
};

struct flood_outcome {
  std::uint64_t written = 0;
  bool peer_closed = false;
  std::string error;  // an exception in the flood thread
};

/// Connects with a 4 KiB receive buffer, says hello, then writes `unit` over
/// and over without ever reading, until `max_bytes` are written or
/// `duration` passes, and holds the connection (unread) until then. For a
/// thread of its own.
flood_outcome flood_unread(std::uint16_t port, const std::vector<std::byte>& unit,
                           std::uint64_t max_bytes, ms duration);

// ---- the well-behaved client --------------------------------------------------

struct latency_samples {
  std::vector<us> round_trips;  // a failed one counts as its timeout
  int failures = 0;
  std::string last_failure;
};

/// The well-behaved client: on its own connection, subscribed to a subject
/// of its own, it publishes with an ack and times the round trip until both
/// the ack and the delivery are in.
class latency_probe {
 public:
  explicit latency_probe(const std::string& url);

  raw_client& client() noexcept { return c_; }

  /// One round trip, or nullopt if the ack or the delivery did not come
  /// within `timeout` (the reason goes to latency_samples::last_failure).
  std::optional<us> once(ms timeout = 5s);

  /// `n` round trips in a row.
  latency_samples sample(int n, ms timeout = 5s);
  /// Round trips `pause` apart until `done()` (asked before each), at least one.
  template <class Done>
  latency_samples sample_until(Done&& done, ms pause, ms timeout = 5s) {
    latency_samples s;
    do {
      add(s, timeout);
      std::this_thread::sleep_for(pause);
    } while (!done());
    return s;
  }

  /// Reads away whatever is left (late deliveries of failed round trips), so
  /// that the connection can be used by other helpers. The barrier is one
  /// more round trip: its delivery comes after those of every earlier one
  /// (one key, one publisher), which it skips. A ping would not do: its pong
  /// does not wait for deliveries routed through another worker.
  void settle();

  static constexpr std::uint32_t sid = 4242;
  static constexpr const char* subject = "good.client.latency";

 private:
  void add(latency_samples& s, ms timeout);

  raw_client c_;
  std::uint64_t count_ = 0;
  std::string why_;
};

/// Runs the good client's round trips, `pause` apart, on a thread of its
/// own until finish(), which returns them: the test's thread stays free to
/// watch the attack. The probe must not be used elsewhere meanwhile.
class background_probe {
 public:
  background_probe(latency_probe& good, ms pause);
  background_probe(const background_probe&) = delete;
  background_probe& operator=(const background_probe&) = delete;
  ~background_probe() { (void)finish(); }

  latency_samples finish();

 private:
  std::atomic<bool> stop_{false};
  latency_samples samples_;
  std::thread thread_;  // last: it starts once the rest is built
};

/// The good client's median `phase` stays within latency_slack of `baseline`.
void check_latency(const std::string& phase, us baseline, const latency_samples& s);

/// The median of `baseline_round_trips` round trips of the good client,
/// before any attack (which must all succeed).
us baseline_of(latency_probe& good);

// ---- the daemon ---------------------------------------------------------------------

/// The end of keywayd's log, for failure messages (a daemon in trouble may
/// log a lot).
std::string log_tail(const keywayd_process& d, std::size_t bytes = 6000);

/// keywayd survived the attack (a crash shows here, with its log, rather
/// than as a failed read later).
void require_running(const keywayd_process& d);

}  // namespace keyway::itest
