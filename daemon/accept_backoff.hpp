// accept_backoff: what an acceptor does after a failed accept. Out of file
// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the connection
// stays queued, so accepting again at once fails again at once: a busy loop
// that burns a core and floods the log. Instead the acceptor waits, 10 ms
// after the first failure and twice as long after each next one, up to 1 s;
// a successful accept resets the wait. An episode (failures until the next
// success) logs one line at its first failure, naming the error and the
// wait, and one when accepting works again; under descriptor pressure that
// comes and goes, at most one episode in 10 s is logged, and the next logged
// one says how many were not.
//
// Threads: one per acceptor, used by the thread that runs its accepts.
// Cost: nothing on a successful accept but a compare; header only.
#pragma once

#include <spdlog/spdlog.h>

#include <algorithm>
#include <asio/error.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>

namespace keyway::daemon {

class accept_backoff {
 public:
  static constexpr std::chrono::milliseconds first_wait{10};
  static constexpr std::chrono::milliseconds max_wait{1000};
  static constexpr std::chrono::seconds log_interval{10};

  /// `what` names the listener in the log: "admin", "listen".
  explicit accept_backoff(std::string what) : what_(std::move(what)) {}

  /// After a failed accept: how long to wait before the next one. Logs the
  /// first failure of an episode only.
  std::chrono::milliseconds failed(const std::error_code& ec) {
    wait_ = failures_ == 0 ? first_wait : std::min(wait_ * 2, max_wait);
    if (failures_++ == 0) {
      since_ = std::chrono::steady_clock::now();
      logged_ = since_ >= next_log_;
      if (!logged_) {
        ++unlogged_;
        return wait_;
      }
      next_log_ = since_ + log_interval;
      spdlog::warn(
          "{}: accept failed: {}; retrying in {} ms, then backing off up to {} ms (logged once "
          "until an accept "
          "succeeds{}; out of file descriptors: raise LimitNOFILE / ulimit -n or lower the "
          "connection limits)",
          what_, describe(ec), wait_.count(), max_wait.count(),
          unlogged_ == 0 ? std::string()
                         : "; " + std::to_string(unlogged_) + " earlier episodes not logged");
      unlogged_ = 0;
    }
    return wait_;
  }

  /// After a successful accept: ends an episode of failures, if any.
  void succeeded() {
    if (failures_ == 0) return;
    if (logged_) {
      const auto lasted = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - since_);
      spdlog::info("{}: accepting again after {} failed accepts over {} ms", what_, failures_,
                   lasted.count());
    }
    failures_ = 0;
  }

  /// Failed accepts in the current episode (0: accepting works).
  std::uint64_t failures() const noexcept { return failures_; }

  /// "Too many open files (EMFILE)": the message, and the errno name when there is one.
  static std::string describe(const std::error_code& ec) {
    std::string out = ec.message();
    if (ec.category() == asio::error::get_system_category() ||
        ec.category() == std::system_category() || ec.category() == std::generic_category()) {
      if (const char* name = ::strerrorname_np(ec.value())) out += std::string(" (") + name + ")";
    }
    return out;
  }

 private:
  std::string what_;
  std::uint64_t failures_ = 0;
  std::chrono::milliseconds wait_{0};
  std::chrono::steady_clock::time_point since_{};     // the current episode's first failure
  std::chrono::steady_clock::time_point next_log_{};  // no episode logged before this
  bool logged_ = false;                               // the current episode was logged
  std::uint64_t unlogged_ = 0;  // episodes not logged since the last one that was
};

}  // namespace keyway::daemon
