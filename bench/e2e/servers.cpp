#include "bench/e2e/servers.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

namespace keyway::bench::e2e {
namespace {

using namespace std::chrono_literals;

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tail(const std::string& text, std::size_t lines) {
  std::size_t pos = text.size();
  for (std::size_t i = 0; i <= lines && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

bool port_accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

server_process::server_process(server_process&& o) noexcept
    : name_(std::move(o.name_)),
      pid_(std::exchange(o.pid_, -1)),
      port_(o.port_),
      log_path_(std::move(o.log_path_)) {}

server_process& server_process::operator=(server_process&& o) noexcept {
  if (this != &o) {
    stop();
    name_ = std::move(o.name_);
    pid_ = std::exchange(o.pid_, -1);
    port_ = o.port_;
    log_path_ = std::move(o.log_path_);
  }
  return *this;
}

server_process server_process::start(std::string name, std::vector<std::string> argv, int port,
                                     std::string log_path, std::string ready_text) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) throw bench_error("cannot open " + log_path + ": " + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    throw bench_error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {  // child: only async-signal-safe calls until exec
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(log_fd);

  server_process p;
  p.name_ = std::move(name);
  p.pid_ = pid;
  p.port_ = port;
  p.log_path_ = std::move(log_path);
  const auto deadline = clock::now() + 15s;
  for (;;) {
    if (!p.running()) {
      throw bench_error(p.name_ + " exited during start-up; " + p.log_path_ + " ends with:\n" +
                        tail(read_file(p.log_path_), 10));
    }
    if ((ready_text.empty() || read_file(p.log_path_).find(ready_text) != std::string::npos) &&
        port_accepts(port))
      return p;
    if (clock::now() >= deadline)
      throw bench_error(p.name_ + " did not become ready on port " + std::to_string(port) +
                        " within 15 s; " + p.log_path_ + " ends with:\n" +
                        tail(read_file(p.log_path_), 10));
    std::this_thread::sleep_for(20ms);
  }
}

bool server_process::running() noexcept {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == 0) return true;
  pid_ = -1;  // reaped: never signal that pid again
  return false;
}

void server_process::stop() noexcept {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const auto deadline = clock::now() + 5s;
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (clock::now() >= deadline) {
      std::fprintf(stderr, "%s (pid %d) ignored SIGTERM for 5 s; killing it\n", name_.c_str(),
                   pid_);
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  pid_ = -1;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw bench_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    ::close(fd);
    throw bench_error(std::string("cannot find a free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}

std::string first_output_line(const std::string& command) {
  FILE* f = ::popen((command + " 2>&1").c_str(), "r");
  if (f == nullptr) return "?";
  char buf[512] = {};
  const bool got = std::fgets(buf, sizeof buf, f) != nullptr;
  ::pclose(f);
  if (!got) return "?";
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

double cpu_seconds(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  // Field 2 (comm) may hold spaces; fields 14 and 15 follow the last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double sched_cpu_seconds(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return -1;
  unsigned long long ns = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::istringstream in(read_file(dir + "/" + e->d_name + "/schedstat"));
    unsigned long long on_cpu = 0;
    if (in >> on_cpu) ns += on_cpu;
  }
  ::closedir(d);
  return static_cast<double>(ns) / 1e9;
}

server_process start_keywayd(const std::string& keywayd_path, int workers,
                             const std::vector<std::string>& extra, const std::string& log_path) {
  const int port = free_port();
  const std::string url = "tcp://127.0.0.1:" + std::to_string(port);
  std::vector<std::string> argv{
      keywayd_path, "--listen", url, "--admin", "off", "--workers", std::to_string(workers)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return server_process::start("keywayd-w" + std::to_string(workers), std::move(argv), port,
                               log_path, "listening on " + url);
}

server_process start_nats_server(const std::string& log_path) {
  const int port = free_port();
  return server_process::start("nats-server",
                               {"nats-server", "-a", "127.0.0.1", "-p", std::to_string(port)}, port,
                               log_path);
}

server_process start_redis_server(const std::string& log_path) {
  const int port = free_port();
  return server_process::start("redis-server",
                               {"redis-server", "--bind", "127.0.0.1", "--port",
                                std::to_string(port), "--save", "", "--appendonly", "no"},
                               port, log_path);
}

}  // namespace keyway::bench::e2e
