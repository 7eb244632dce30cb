// e2e::server_process: a server the suite starts on loopback and stops again
// (keywayd, nats-server, redis-server), with its output in a log file.
// Peers run with their defaults; the only flags are address and port, and for
// redis-server `--save '' --appendonly no` so that it never writes to disk.
//
// Threading: the suite's main thread. Cost: fork/exec at start; stop() sends
// SIGTERM, waits up to 5 s, then SIGKILL. The child gets PR_SET_PDEATHSIG so a
// crashed suite leaves no server behind.
#pragma once

#include "bench/e2e/conn.hpp"

#include <sys/types.h>
#include <string>
#include <vector>

namespace keyway::bench::e2e {

class server_process {
 public:
  server_process() = default;
  server_process(server_process&& o) noexcept;
  server_process& operator=(server_process&& o) noexcept;
  ~server_process() { stop(); }

  /// Starts `argv` (argv[0] looked up in PATH) with stdout and stderr in
  /// `log_path`, and waits until 127.0.0.1:`port` accepts a connection and,
  /// if `ready_text` is not empty, the log contains it. Throws bench_error
  /// with the log's tail if the process exits or 15 s pass.
  static server_process start(std::string name, std::vector<std::string> argv, int port,
                              std::string log_path, std::string ready_text = {});

  void stop() noexcept;
  pid_t pid() const noexcept { return pid_; }
  int port() const noexcept { return port_; }
  const std::string& name() const noexcept { return name_; }
  const std::string& log_path() const noexcept { return log_path_; }
  /// False once the process has exited (it is reaped then).
  bool running() noexcept;

 private:
  std::string name_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0).
int free_port();

/// The suite's servers, each on a free port of 127.0.0.1, logging to `log_path`:
/// `keywayd_path --listen tcp://127.0.0.1:PORT --admin off --workers W` and
/// `extra`; nats-server and redis-server with their defaults.
server_process start_keywayd(const std::string& keywayd_path, int workers,
                             const std::vector<std::string>& extra, const std::string& log_path);
server_process start_nats_server(const std::string& log_path);
server_process start_redis_server(const std::string& log_path);

/// The first line a command prints (stdout and stderr), trimmed; "?" on failure.
std::string first_output_line(const std::string& command);

/// utime + stime of a process from /proc/PID/stat, in seconds (clock-tick
/// resolution, 10 ms here). -1 if it cannot be read.
double cpu_seconds(pid_t pid);

/// The summed on-CPU time of every thread of a process from
/// /proc/PID/task/*/schedstat, in seconds (ns resolution). -1 if unreadable.
double sched_cpu_seconds(pid_t pid);

}  // namespace keyway::bench::e2e
