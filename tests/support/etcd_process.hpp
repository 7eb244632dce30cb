// etcd_process: starts the real etcd binary (Debian's etcd-server, 3.4) for a
// test: a single-member cluster on free 127.0.0.1 ports with a fresh data
// directory, fast elections (--heartbeat-interval 50 --election-timeout 500,
// so the minimum lease TTL is 1 s), its log in a file beside the data. It
// waits until etcd answers /health; stop(), kill() and restart() (same data,
// same ports) are for tests that take etcd away. The destructor stops it and
// removes the directory.
// Test-only; create and use it on the thread that runs the test: etcd is
// killed (SIGKILL) when the thread that started it ends, so that a crashed
// test never leaves an etcd behind. Start-up costs about a second (a leader
// election). Header only.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/support/temp_dir.hpp"

#ifndef KEYWAY_ETCD_PATH
#define KEYWAY_ETCD_PATH "/usr/bin/etcd"
#endif

namespace keyway::test {

class etcd_process {
 public:
  /// Starts etcd; throws with the tail of its log if it does not answer
  /// within `startup`. A port taken between choosing and binding it is
  /// retried with new ports.
  explicit etcd_process(std::chrono::milliseconds startup = std::chrono::seconds(10)) {
    if (::access(KEYWAY_ETCD_PATH, X_OK) != 0)
      throw std::runtime_error(std::string("no etcd at ") + KEYWAY_ETCD_PATH +
                               "; install the Debian package etcd-server (scripts/deps.sh test)");
    static std::atomic<int> counter{0};
    name_ = "keyway-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    for (int attempt = 1;; ++attempt) {
      client_port_ = closed_loopback_port();
      peer_port_ = closed_loopback_port();
      if (launch(startup)) return;
      const std::string why = log_tail();
      if (why.find("address already in use") == std::string::npos || attempt == 3)
        throw std::runtime_error("etcd (" + std::string(KEYWAY_ETCD_PATH) +
                                 ") did not answer; the end of its log:\n" + why);
      std::filesystem::remove_all(dir_.path() / "data");
    }
  }

  etcd_process(const etcd_process&) = delete;
  etcd_process& operator=(const etcd_process&) = delete;

  ~etcd_process() { stop(); }

  /// "http://127.0.0.1:PORT", the client URL.
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(client_port_); }
  std::uint16_t port() const { return client_port_; }
  pid_t pid() const { return pid_; }

  /// SIGTERM, then SIGKILL if etcd is still running after `limit`. Idempotent.
  void stop(std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (!reap(limit)) {
      ::kill(pid_, SIGKILL);
      reap(std::chrono::seconds(5));
    }
  }
  /// SIGKILL, as a crash would.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    reap(std::chrono::seconds(5));
  }
  /// Starts etcd again (after stop() or kill()) on the same ports and data.
  void restart(std::chrono::milliseconds startup = std::chrono::seconds(10)) {
    stop();
    if (!launch(startup))
      throw std::runtime_error("etcd did not come back; the end of its log:\n" + log_tail());
  }

  /// etcd's log so far (all of its runs).
  std::string log() const {
    std::ifstream in(dir_.path() / "etcd.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string log_tail() const {
    const std::string all = log();
    return all.size() > 4000 ? all.substr(all.size() - 4000) : all;
  }

  /// Forks etcd and waits until /health says true. False (etcd stopped) if
  /// it exits or does not answer within `startup`.
  bool launch(std::chrono::milliseconds startup) {
    const std::string client = endpoint();
    const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    std::vector<std::string> argv{KEYWAY_ETCD_PATH,
                                  "--name",
                                  name_,
                                  "--data-dir",
                                  (dir_.path() / "data").string(),
                                  "--listen-client-urls",
                                  client,
                                  "--advertise-client-urls",
                                  client,
                                  "--listen-peer-urls",
                                  peer,
                                  "--initial-advertise-peer-urls",
                                  peer,
                                  "--initial-cluster",
                                  name_ + "=" + peer,
                                  "--initial-cluster-state",
                                  "new",
                                  "--heartbeat-interval",
                                  "50",
                                  "--election-timeout",
                                  "500"};
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const std::string log_path = (dir_.path() / "etcd.log").string();
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) throw std::runtime_error("cannot open " + log_path);
    // fork + exec for PR_SET_PDEATHSIG, as keywayd_process does: etcd must
    // not outlive a test process that crashes.
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Async-signal-safe calls only, until exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    if (pid_ < 0) throw std::runtime_error("cannot start etcd: fork failed");
    const auto deadline = std::chrono::steady_clock::now() + startup;
    while (std::chrono::steady_clock::now() < deadline) {
      if (reap(std::chrono::milliseconds(0))) return false;
      try {
        if (http_get(client_port_, "/health", std::chrono::seconds(1))
                .body.find("\"health\":\"true\"") != std::string::npos)
          return true;
      } catch (const std::exception&) {
        // not listening yet
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    stop();
    return false;
  }

  /// Waits up to `limit` for etcd to exit; true once it is reaped.
  bool reap(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  temp_dir dir_;
  std::string name_;
  std::uint16_t client_port_ = 0, peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace keyway::test
