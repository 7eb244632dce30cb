// keywayd_process: runs the real keywayd binary for a test. Spawns it with
// posix_spawn, stderr on a pipe that a reader thread drains (so the daemon
// never blocks on its log), waits for its "started" line and collects the
// URLs of its "listening on URL" lines — with --listen tcp://127.0.0.1:0 the
// real port is known only from there. stop() sends SIGTERM and reaps it with
// a deadline (SIGKILL after it).
//
// Header only, for the unit and integration suites. One test thread drives
// an instance; log() may be called from any thread. Every wait has a deadline:
// nothing here can hang a test.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace keyway::test {

class keywayd_process {
 public:
  using clock = std::chrono::steady_clock;

  /// Starts `binary` with `args` and waits up to `timeout` until it logged
  /// "started". Throws std::runtime_error (with the log so far) if it cannot
  /// be spawned, exits early, or does not start in time.
  keywayd_process(const std::string& binary, const std::vector<std::string>& args,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    read_fd_ = fds[0];
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    std::vector<std::string> all{binary};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
      ::close(read_fd_);
      throw std::runtime_error("cannot spawn " + binary + ": " + std::strerror(rc));
    }
    reader_ = std::thread([this] { drain(); });

    const auto deadline = clock::now() + timeout;
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, deadline, [&] { return eof_ || log_.find(" started") != std::string::npos; });
    if (log_.find(" started") == std::string::npos) {
      const std::string log = log_;
      lock.unlock();
      kill_now();
      throw std::runtime_error("keywayd did not start within " + std::to_string(timeout.count()) + " ms; log:\n" + log);
    }
    for (std::size_t pos = 0; (pos = log_.find("listening on ", pos)) != std::string::npos;) {
      pos += 13;
      const auto end = log_.find_first_of(" \r\n", pos);
      urls_.push_back(log_.substr(pos, end - pos));
    }
  }

  keywayd_process(const keywayd_process&) = delete;
  keywayd_process& operator=(const keywayd_process&) = delete;

  ~keywayd_process() {
    if (pid_ > 0) kill_now();
    if (reader_.joinable()) reader_.join();
    if (read_fd_ >= 0) ::close(read_fd_);
  }

  /// The URLs of the "listening on" lines, in --listen order.
  const std::vector<std::string>& urls() const noexcept { return urls_; }
  const std::string& url() const { return urls_.at(0); }
  pid_t pid() const noexcept { return pid_; }

  /// Everything the daemon wrote to stderr so far.
  std::string log() const {
    std::lock_guard lock(mu_);
    return log_;
  }

  /// Waits until the log contains `text`; false after `timeout`.
  bool wait_for_log(const std::string& text, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return log_.find(text) != std::string::npos; });
  }

  /// SIGTERM, then waits for the exit (SIGKILL after `timeout`). Returns the
  /// exit code, 128 + signal if it died by a signal, or -1 if it was already
  /// reaped.
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    const auto deadline = clock::now() + timeout;
    int status = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (r < 0 && errno != EINTR) {
        pid_ = -1;
        return -1;
      }
      if (clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    if (reader_.joinable()) reader_.join();
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
  }

 private:
  void drain() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(read_fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard lock(mu_);
      if (n <= 0) {
        eof_ = true;
        cv_.notify_all();
        return;
      }
      log_.append(buf, static_cast<std::size_t>(n));
      cv_.notify_all();
    }
  }

  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid_ = -1;
  int read_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string log_;
  bool eof_ = false;
  std::vector<std::string> urls_;
};

}  // namespace keyway::test
