// load_file() and check_environment(): the parts of config loading that touch the disk and
// ask the kernel (CPU affinity). The pure text-to-options work is in config.cpp.
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "config/config.hpp"

namespace keyway::config {
namespace {

using daemon::listen_address;
using daemon::server_options;

std::string cpu_list(const std::vector<int>& cpus) {  // sorted -> "0-3,6"
  std::string out;
  for (std::size_t i = 0; i < cpus.size();) {
    std::size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

// The CPUs this process may run on, sorted; nullopt if the kernel will not say.
std::optional<std::vector<int>> affinity_cpus() {
  for (int n = 1024; n <= (1 << 16); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) return std::nullopt;
    const std::size_t size = CPU_ALLOC_SIZE(n);
    if (::sched_getaffinity(0, size, set) == 0) {
      std::vector<int> cpus;
      for (int c = 0; c < n; ++c)
        if (CPU_ISSET_S(c, size, set)) cpus.push_back(c);
      CPU_FREE(set);
      return cpus;
    }
    const int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) return std::nullopt;  // EINVAL: the kernel's mask is larger; retry
  }
  return std::nullopt;
}

std::string errno_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

}  // namespace

load_result load_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {std::nullopt, {path + ": cannot read the config file: " + errno_text(errno)}};
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got > 0) {
      text.append(buf, static_cast<std::size_t>(got));
    } else if (got == 0) {
      break;
    } else if (errno != EINTR) {
      const int err = errno;
      ::close(fd);
      return {std::nullopt, {path + ": cannot read the config file: " + errno_text(err)}};
    }
  }
  ::close(fd);
  return parse(text, path);
}

std::vector<std::string> check_environment(const server_options& o, std::string_view file_name) {
  std::vector<std::string> problems;
  auto fail = [&](const std::string& msg) {
    problems.push_back(one_line(std::string(file_name) + ": " + msg));
  };

  // If the kernel will not tell us the mask, worker_pool will fail with its own message.
  if (const auto mask = affinity_cpus()) {
    if (o.workers > mask->size()) {
      fail("server.workers = " + std::to_string(o.workers) + " is more than the " +
           std::to_string(mask->size()) + " CPUs this process may use (" + cpu_list(*mask) +
           "); lower it, or use 0 for one worker per CPU");
    }
    for (int cpu : o.cpus) {
      if (!std::binary_search(mask->begin(), mask->end(), cpu)) {
        fail("server.cpus lists CPU " + std::to_string(cpu) +
             ", which is outside this process's CPU affinity (" + cpu_list(*mask) +
             "); choose CPUs from that set or widen the affinity");
      }
    }
  }
  for (const auto& l : o.listen) {
    if (l.type != listen_address::kind::unix_path) continue;
    const std::filesystem::path dir = std::filesystem::path(l.path).parent_path();
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
      const int err = errno;
      fail("listen.unix = " + toml_string(l.path) + ": directory " + dir.string() +
           (err == ENOENT ? " does not exist" : " cannot be used: " + errno_text(err)) +
           "; create it or choose another path");
    } else if (!S_ISDIR(st.st_mode)) {
      fail("listen.unix = " + toml_string(l.path) + ": " + dir.string() + " is not a directory");
    }
  }
  if (!o.tokens_file.empty()) {
    const int fd = ::open(o.tokens_file.c_str(), O_RDONLY | O_CLOEXEC);
    const int err = errno;
    struct stat st {};
    if (fd < 0) {
      fail("auth.tokens_file = " + toml_string(o.tokens_file) +
           " cannot be read: " + errno_text(err) +
           "; fix the path or its permissions, or set it to \"\" to turn authentication off");
    } else if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      fail("auth.tokens_file = " + toml_string(o.tokens_file) + " is not a regular file");
    }
    if (fd >= 0) ::close(fd);
  }
  return problems;
}

}  // namespace keyway::config
