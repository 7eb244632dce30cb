// proc_stats: what /proc says about another process (keywayd), for tests that
// bound its memory, CPU and descriptor use: VmRSS and VmHWM from
// /proc/PID/status, whether it still runs and its user + system CPU time from
// /proc/PID/stat, the number of open descriptors from /proc/PID/fd, and
// rss_watch, which follows the peak RSS over an interval.
// Header only. The free functions may be called from any thread; each opens
// and reads one small file (about 10 µs). An rss_watch belongs to the thread
// that made it and runs one sampling thread of its own.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>

namespace keyway::test {

namespace detail {
/// A "Name:   1234 kB" line of /proc/PID/status, in bytes.
inline std::optional<std::uint64_t> status_kib_field(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, name.size(), name) == 0 && line.size() > name.size() &&
        line[name.size()] == ':') {
      try {
        return std::stoull(line.substr(name.size() + 1)) * 1024;
      } catch (const std::exception&) {
        return std::nullopt;
      }
    }
  }
  return std::nullopt;
}
}  // namespace detail

/// Resident set size of `pid` in bytes; nullopt if it cannot be read (the
/// process is gone).
inline std::optional<std::uint64_t> vm_rss_bytes(pid_t pid) {
  return detail::status_kib_field(pid, "VmRSS");
}

/// Peak resident set size of `pid` since it started or since reset_peak_rss.
inline std::optional<std::uint64_t> vm_hwm_bytes(pid_t pid) {
  return detail::status_kib_field(pid, "VmHWM");
}

/// Resets VmHWM to the current RSS (writes 5 to /proc/PID/clear_refs, Linux
/// 4.0+; allowed for one's own processes). False if the kernel refused.
inline bool reset_peak_rss(pid_t pid) {
  std::ofstream out("/proc/" + std::to_string(pid) + "/clear_refs");
  out << "5\n";
  out.flush();
  return static_cast<bool>(out);
}

/// Whether `pid` exists and has not exited (a zombie, exited but not yet
/// reaped, counts as exited).
inline bool is_running(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return false;
  const char state = stat[close + 2];  // field 3, after ") "
  return state != 'Z' && state != 'X' && state != 'x';
}

/// CPU time `pid` has used in all its threads, user + system (utime + stime of
/// /proc/PID/stat, in clock ticks of usually 10 ms); nullopt if unreadable.
inline std::optional<std::chrono::nanoseconds> cpu_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // "PID (comm) S ppid ...": comm may hold spaces and ')', so count fields
  // from the last ')'. The first field after it is field 3 (state); utime is
  // field 14 and stime field 15.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  std::uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    try {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    } catch (const std::exception&) {
      return std::nullopt;
    }
    if (i == 15) {
      const long ticks = ::sysconf(_SC_CLK_TCK);
      if (ticks <= 0) return std::nullopt;
      return std::chrono::nanoseconds((utime + stime) * 1'000'000'000ull /
                                      static_cast<std::uint64_t>(ticks));
    }
  }
  return std::nullopt;
}

/// Descriptors `pid` has open (entries of /proc/PID/fd); 0 if unreadable.
inline std::size_t open_fd_count(pid_t pid) {
  std::size_t n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
       !ec && it != end; it.increment(ec))
    ++n;
  return n;
}

/// Follows the RSS of `pid` from construction on: baseline() is the RSS then,
/// peak() the highest RSS seen since, from a sampling thread (every `period`)
/// and, where the kernel resets it for us, from VmHWM (which also catches a
/// spike shorter than the period).
class rss_watch {
 public:
  explicit rss_watch(pid_t pid, std::chrono::milliseconds period = std::chrono::milliseconds(10))
      : pid_(pid), hwm_reset_(reset_peak_rss(pid)) {
    baseline_ = vm_rss_bytes(pid).value_or(0);
    peak_.store(baseline_);
    sampler_ = std::thread([this, period] {
      while (!stop_.load()) {
        sample();
        std::this_thread::sleep_for(period);
      }
    });
  }
  rss_watch(const rss_watch&) = delete;
  rss_watch& operator=(const rss_watch&) = delete;
  ~rss_watch() {
    stop_.store(true);
    sampler_.join();
  }

  /// 0 if the process could not be read at construction.
  std::uint64_t baseline() const noexcept { return baseline_; }
  /// The highest RSS seen so far (samples one more time first).
  std::uint64_t peak() {
    sample();
    std::uint64_t p = peak_.load();
    if (hwm_reset_) p = std::max(p, vm_hwm_bytes(pid_).value_or(0));
    return p;
  }
  /// peak() - baseline(), or 0 if the RSS only fell.
  std::uint64_t growth() {
    const std::uint64_t p = peak();
    return p > baseline_ ? p - baseline_ : 0;
  }
  bool used_hwm() const noexcept { return hwm_reset_; }

 private:
  void sample() {
    const std::uint64_t now = vm_rss_bytes(pid_).value_or(0);
    std::uint64_t seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
  }

  pid_t pid_;
  bool hwm_reset_;
  std::uint64_t baseline_ = 0;
  std::atomic<std::uint64_t> peak_{0};
  std::atomic<bool> stop_{false};
  std::thread sampler_;
};

}  // namespace keyway::test
