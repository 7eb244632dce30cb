// child_process: runs a program (e.g. the keyway CLI) for a test, with stdout
// and stderr captured by reader threads, and waits for output or exit with
// deadlines. Header only. One test thread drives an instance; the accessors
// may be called from any thread. The destructor kills a child still running.
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
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace keyway::test {

class child_process {
 public:
  using clock = std::chrono::steady_clock;

  /// Starts argv[0] (a path) with stdin from /dev/null. Throws if it cannot.
  explicit child_process(std::vector<std::string> argv) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    ::close(err[1]);
    if (rc != 0) {
      ::close(out[0]);
      ::close(err[0]);
      throw std::runtime_error("cannot spawn " + argv[0] + ": " + std::strerror(rc));
    }
    out_reader_ = std::thread([this, fd = out[0]] { drain(fd, out_); });
    err_reader_ = std::thread([this, fd = err[0]] { drain(fd, err_); });
  }

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  ~child_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    if (out_reader_.joinable()) out_reader_.join();
    if (err_reader_.joinable()) err_reader_.join();
  }

  std::string out() const {
    std::lock_guard lock(mu_);
    return out_;
  }
  std::string err() const {
    std::lock_guard lock(mu_);
    return err_;
  }

  /// Waits until stderr contains `text`; false after `timeout`.
  bool wait_for_stderr(const std::string& text, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return err_.find(text) != std::string::npos; });
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  /// The exit code (128 + signal if killed by one), or std::nullopt if it is
  /// still running after `timeout` (it is then killed).
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return exit_;
    const auto deadline = clock::now() + timeout;
    int status = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    out_reader_.join();
    err_reader_.join();
    exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_;
  }

 private:
  void drain(int fd, std::string& into) {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard lock(mu_);
      if (n <= 0) break;
      into.append(buf, static_cast<std::size_t>(n));
      cv_.notify_all();
    }
    ::close(fd);
  }

  pid_t pid_ = -1;
  std::optional<int> exit_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string out_, err_;
  std::thread out_reader_, err_reader_;
};

}  // namespace keyway::test
