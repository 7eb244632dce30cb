// keywayd_process: starts the real keywayd binary for a test, on loopback port
// 0 and/or a temporary Unix path, reads the bound addresses from its log, and
// stops it (SIGTERM, then SIGKILL after a deadline) when destroyed.
// Test-only; create and use it on the thread that runs the test: the daemon
// is killed (SIGKILL) when the thread that started it ends, so that a crashed
// test never leaves a daemon behind. A helper thread keeps draining the
// daemon's stdout and stderr into log(), so a chatty daemon never blocks on a
// full pipe (a blocked log write would stall the worker thread that logs).
// Header only.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/support/temp_dir.hpp"

extern char** environ;

namespace keyway::test {

/// Extra environment (NAME=VALUE, added to this process's) and, for socket
/// activation, a listening socket passed as fd 3 with LISTEN_FDS=1 and
/// LISTEN_PID set to the daemon's own pid.
struct spawn_options {
  std::vector<std::string> env;
  int listen_fd = -1;
};

class keywayd_process {
 public:
  /// args: extra command-line flags. Listens on tcp://127.0.0.1:0 unless args
  /// contain a --listen of their own. Throws if the daemon does not report a
  /// bound address within `startup`.
  /// Also passes --admin 127.0.0.1:0 unless args name --admin or --config.
  explicit keywayd_process(std::vector<std::string> args = {},
                           std::chrono::milliseconds startup = std::chrono::seconds(10),
                           spawn_options spawn = {}) {
    bool has_listen = false, has_admin = false;
    for (const auto& a : args) {
      has_listen = has_listen || a == "--listen" || a == "--config";
      has_admin = has_admin || a == "--admin" || a == "--config";
    }
    std::vector<std::string> argv{KEYWAYD_PATH};
    if (!has_listen && spawn.listen_fd < 0)
      argv.insert(argv.end(), {"--listen", "tcp://127.0.0.1:0"});
    if (!has_admin) argv.insert(argv.end(), {"--admin", "127.0.0.1:0"});
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::vector<std::string> envs;
    for (char** e = environ; *e != nullptr; ++e) envs.emplace_back(*e);
    envs.insert(envs.end(), spawn.env.begin(), spawn.env.end());
    if (spawn.listen_fd >= 0) {
      envs.emplace_back("LISTEN_FDS=1");
      envs.emplace_back("LISTEN_PID=" + std::string(20, ' '));  // filled in by the child
    }
    std::vector<char*> cenv;
    for (auto& e : envs) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    char* listen_pid = spawn.listen_fd >= 0 ? cenv[cenv.size() - 2] + 11 : nullptr;

    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    // fork + exec rather than posix_spawn, for PR_SET_PDEATHSIG: if the test
    // process dies (a crash, an abort from a sanitizer, a ctest timeout), the
    // daemon dies with it instead of living on as an orphan that also holds
    // ctest's output pipe open, which makes ctest wait for ever.
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // The child of a possibly multi-threaded parent: async-signal-safe
      // calls only, until exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(fds[1], STDOUT_FILENO);
      ::dup2(fds[1], STDERR_FILENO);
      if (listen_pid != nullptr) {
        if (spawn.listen_fd != 3) {
          ::dup2(spawn.listen_fd, 3);  // dup2 clears FD_CLOEXEC on the copy
        } else {
          ::fcntl(3, F_SETFD, 0);
        }
        // Write our pid into "LISTEN_PID=" by hand: no allocation after fork.
        char digits[20];
        int n = 0;
        for (pid_t p = ::getpid(); p > 0; p /= 10) digits[n++] = static_cast<char>('0' + p % 10);
        for (int i = 0; i < n; ++i) listen_pid[i] = digits[n - 1 - i];
        listen_pid[n] = '\0';
      }
      ::execve(cargv[0], cargv.data(), cenv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    log_fd_ = fds[0];
    if (pid_ < 0) {
      ::close(log_fd_);
      log_fd_ = -1;
      throw std::runtime_error("cannot start " + argv[0] + ": fork failed");
    }
    ::fcntl(log_fd_, F_SETFL, O_NONBLOCK);
    reader_ = std::thread([this] { drain_log(); });
    const auto deadline = std::chrono::steady_clock::now() + startup;
    while (std::chrono::steady_clock::now() < deadline) {
      if (wait_log(" started: ", std::chrono::milliseconds(50))) break;
      if (exited()) break;
    }
    parse_addresses();
    if (addresses_.empty()) {
      // The destructor does not run for a constructor that throws: do not
      // leave the daemon (or the log thread) behind.
      const std::string why = "keywayd did not start; its log:\n" + log();
      shut_down();
      throw std::runtime_error(why);
    }
  }

  keywayd_process(const keywayd_process&) = delete;
  keywayd_process& operator=(const keywayd_process&) = delete;

  ~keywayd_process() { shut_down(); }

  /// The first TCP address, e.g. "tcp://127.0.0.1:41234".
  std::string url() const {
    for (const auto& a : addresses_)
      if (a.rfind("tcp://", 0) == 0) return a;
    return addresses_.front();
  }
  const std::vector<std::string>& addresses() const { return addresses_; }
  std::uint16_t port() const {
    const std::string u = url();
    return static_cast<std::uint16_t>(std::stoi(u.substr(u.rfind(':') + 1)));
  }
  pid_t pid() const { return pid_; }
  /// The admin listener, e.g. "http://127.0.0.1:41235"; empty if none.
  const std::string& admin_url() const { return admin_url_; }
  std::uint16_t admin_port() const {
    return static_cast<std::uint16_t>(std::stoi(admin_url_.substr(admin_url_.rfind(':') + 1)));
  }

  /// Sends `sig`; with SIGTERM/SIGINT, waits for the exit and returns the exit
  /// code (or 128 + signal), or nullopt if it did not exit within `limit`.
  std::optional<int> stop(int sig = SIGTERM,
                          std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    if (exited()) {  // already reaped: its pid may belong to another process now
      wait_log_eof(std::chrono::milliseconds(500));  // its last lines, as wait_exit() does
      return exit_code();
    }
    ::kill(pid_, sig);
    if (!wait_exit(limit)) return std::nullopt;
    return exit_code();
  }
  std::optional<int> exit_code() const {
    if (!status_) return std::nullopt;
    if (WIFEXITED(*status_)) return WEXITSTATUS(*status_);
    return 128 + WTERMSIG(*status_);
  }

  /// Everything the daemon logged so far (a copy: the log thread appends).
  std::string log() const {
    std::lock_guard lock(log_mutex_);
    return log_;
  }
  /// Waits until the log contains `needle`.
  bool wait_log(std::string_view needle,
                std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    std::unique_lock lock(log_mutex_);
    return log_changed_.wait_for(lock, limit,
                                 [&] { return log_.find(needle) != std::string::npos; });
  }

 private:
  /// The log thread: appends the daemon's stderr to log_ until EOF (the
  /// daemon exited) or, once shut_down() asks, until the pipe is quiet.
  void drain_log() {
    char buf[4096];
    for (;;) {
      pollfd p{log_fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, 50);
      if (ready > 0) {
        const ssize_t n = ::read(log_fd_, buf, sizeof buf);
        if (n > 0) {
          std::lock_guard lock(log_mutex_);
          log_.append(buf, static_cast<std::size_t>(n));
          log_changed_.notify_all();
          continue;
        }
        if (n == 0) break;
        if (errno != EINTR && errno != EAGAIN) break;
      }
      if (ready == 0 && stop_reader_.load()) break;
    }
    std::lock_guard lock(log_mutex_);
    log_eof_ = true;
    log_changed_.notify_all();
  }
  /// Stops the daemon if it still runs (SIGTERM, then SIGKILL), reaps it, and
  /// ends the log thread. Idempotent.
  void shut_down() {
    if (pid_ > 0 && !exited()) {
      ::kill(pid_, SIGTERM);
      if (!wait_exit(std::chrono::seconds(15))) {
        ::kill(pid_, SIGKILL);
        wait_exit(std::chrono::seconds(5));
      }
    }
    stop_reader_.store(true);
    if (reader_.joinable()) reader_.join();
    if (log_fd_ >= 0) ::close(log_fd_);
    log_fd_ = -1;
  }
  bool exited() {
    if (status_) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    return status_.has_value();
  }
  bool wait_exit(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!exited()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // Let the log thread catch up with the daemon's last lines: its EOF, or
    // a short wait (a surviving child of the daemon could keep the pipe open).
    wait_log_eof(std::chrono::milliseconds(500));
    return true;
  }
  void wait_log_eof(std::chrono::milliseconds limit) {
    std::unique_lock lock(log_mutex_);
    log_changed_.wait_for(lock, limit, [&] { return log_eof_; });
  }
  void parse_addresses() {
    const std::string text = log();
    std::size_t pos = 0;
    const std::string tag = "listening on ";
    while ((pos = text.find(tag, pos)) != std::string::npos) {
      pos += tag.size();
      const std::size_t end = text.find('\n', pos);
      std::string a = text.substr(pos, end - pos);
      if (const auto sp = a.find(' '); sp != std::string::npos) a.resize(sp);  // "(from systemd)"
      if (a.rfind("http://", 0) == 0)
        admin_url_ = a;
      else
        addresses_.push_back(a);
    }
  }

  pid_t pid_ = -1;
  int log_fd_ = -1;
  std::thread reader_;
  std::atomic<bool> stop_reader_{false};
  mutable std::mutex log_mutex_;
  std::condition_variable log_changed_;
  std::string log_;
  bool log_eof_ = false;  // the log thread saw EOF (or stopped)
  std::vector<std::string> addresses_;
  std::string admin_url_;
  std::optional<int> status_;
};

}  // namespace keyway::test
