// The admin HTTP listener under hostile clients: more idle connections than
// admin.max_connections, requests half-closed (EOF) before and after their
// end, requests sent a byte at a time, garbage, oversized heads, and accepts
// failing for want of file descriptors (the daemon's RLIMIT_NOFILE lowered
// under it with prlimit).
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/http_get.hpp"

namespace keyway::itest {
namespace {

using test::http_get;

#if defined(__SANITIZE_ADDRESS__)
#define KEYWAY_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYWAY_TEST_SANITIZED 1
#endif
#endif
#ifdef KEYWAY_TEST_SANITIZED
/// keywayd is built with ASan + UBSan like this test. UBSan's vptr check
/// probes memory through a pipe, which it cannot open in a daemon out of
/// descriptors, and then reports a false "invalid vptr" and aborts.
constexpr bool sanitizer_needs_descriptors = true;
#else
constexpr bool sanitizer_needs_descriptors = false;
#endif

/// admin_service::default_max_connections: keywayd started without a
/// config file has this admin connection limit.
constexpr std::size_t admin_cap = 64;

/// A connected TCP socket to 127.0.0.1:port, closed on destruction.
class tcp_conn {
 public:
  explicit tcp_conn(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE_MESSAGE(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0,
                    "connect to the admin port: " << std::strerror(errno));
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  tcp_conn(tcp_conn&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  tcp_conn& operator=(tcp_conn&&) = delete;
  ~tcp_conn() { close(); }

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void send(std::string_view bytes) {
    REQUIRE(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(bytes.size()));
  }
  void shutdown_write() { REQUIRE(::shutdown(fd_, SHUT_WR) == 0); }
  /// Nothing to read and no EOF: the daemon keeps the connection open.
  bool quiet() const {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;
  }

  /// What the daemon sent until it closed the connection (EOF or reset),
  /// and how long that took; `closed` false if it did not within `limit`.
  struct reply {
    std::string bytes;
    bool closed = false;
    bool reset = false;
    ms took{};
  };
  reply read_to_close(ms limit) {
    reply r;
    const auto start = steady::now();
    const auto deadline = start + limit;
    for (;;) {
      const auto left = std::chrono::duration_cast<ms>(deadline - steady::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        r.bytes.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      r.closed = true;
      r.reset = n < 0;
      break;
    }
    r.took = std::chrono::duration_cast<ms>(steady::now() - start);
    return r;
  }

 private:
  int fd_ = -1;
};

int status_of(const std::string& response) {
  if (response.compare(0, 9, "HTTP/1.1 ") != 0 || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}
std::string body_of(const std::string& response) {
  const auto end = response.find("\r\n\r\n");
  return end == std::string::npos ? std::string() : response.substr(end + 4);
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

/// /readyz until it answers 200, for up to `limit`; the time it took, or
/// nullopt.
std::optional<ms> wait_ready(std::uint16_t port, ms limit) {
  const auto start = steady::now();
  while (steady::now() - start < limit) {
    try {
      if (http_get(port, "/readyz", std::chrono::seconds(1)).status == 200)
        return std::chrono::duration_cast<ms>(steady::now() - start);
    } catch (const std::exception&) {
      // refused over the limit (a reset), or not accepted yet
    }
    std::this_thread::sleep_for(ms(20));
  }
  return std::nullopt;
}

/// CPU time (user + system) the thread of `pid` named `name` used so far.
std::optional<ms> thread_cpu(pid_t pid, const std::string& name) {
  std::error_code ec;
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& t : std::filesystem::directory_iterator(task_dir, ec)) {
    std::string comm;
    std::getline(std::ifstream(t.path() / "comm"), comm);
    if (comm != name) continue;
    std::string stat;
    std::getline(std::ifstream(t.path() / "stat"), stat);
    // Fields after "(comm)": state is field 3; utime and stime are 14 and 15.
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    const long hz = ::sysconf(_SC_CLK_TCK);
    return ms((utime + stime) * 1000 / static_cast<unsigned long long>(hz));
  }
  return std::nullopt;
}

/// The RLIMIT_NOFILE soft limit under which `pid` has exactly `free` unused
/// descriptor numbers (new descriptors take the lowest free numbers below
/// the limit; open ones above it stay open).
rlim_t limit_leaving(pid_t pid, int free) {
  std::vector<int> open;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec))
    open.push_back(std::stoi(e.path().filename().string()));
  std::sort(open.begin(), open.end());
  int fd = 0;
  for (int left = free;; ++fd) {
    if (std::binary_search(open.begin(), open.end(), fd)) continue;
    if (--left == 0) break;
  }
  return static_cast<rlim_t>(fd + 1);
}

}  // namespace

TEST_CASE(
    "admin: connections over admin.max_connections get a 503 at once and the port answers again "
    "once they close") {
  keywayd_process d;
  const auto port = d.admin_port();
  INFO("daemon log:\n" << d.log());
  constexpr std::size_t over = 50;
  // Idle connections, in order: the daemon accepts them in that order, so the
  // first admin_cap hold its slots (they send nothing) and the rest are over.
  std::vector<tcp_conn> conns;
  for (std::size_t i = 0; i < admin_cap + over; ++i) conns.emplace_back(port);

  // Every connection over the limit is answered 503 and closed, at once:
  // well before the 10 s the idle ones may wait for a request.
  std::size_t refused = 0;
  const auto deadline = steady::now() + ms(2000);
  for (std::size_t i = admin_cap; i < conns.size(); ++i) {
    const auto r = conns[i].read_to_close(
        std::max(ms(0), std::chrono::duration_cast<ms>(deadline - steady::now())));
    CHECK_MESSAGE(r.closed, "connection " << i << " over the limit was not closed");
    CHECK(status_of(r.bytes) == 503);
    CHECK(body_of(r.bytes) == "too many admin connections (admin.max_connections is 64)\n");
    refused += r.closed && status_of(r.bytes) == 503;
  }
  CHECK(refused == over);
  std::size_t kept = 0;
  for (std::size_t i = 0; i < admin_cap; ++i) kept += conns[i].quiet();
  CHECK(kept == admin_cap);

  // A fresh request meanwhile is refused quickly too: the 503, or a reset if
  // its request crossed the daemon's close.
  {
    tcp_conn fresh(port);
    fresh.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    const auto r = fresh.read_to_close(ms(2000));
    CHECK(r.closed);
    CHECK(r.took < ms(1000));
    if (!r.reset) CHECK(status_of(r.bytes) == 503);
  }
  // One log line for all of them (at most one every 10 s).
  CHECK(count_of(d.log(), "admin.max_connections is 64; answering new ones 503") == 1);

  // The idle ones go away (EOF without a request: each is closed at once, not
  // after its 10 s), and /readyz answers again.
  for (std::size_t i = 0; i < admin_cap; ++i) conns[i].close();
  const auto back = wait_ready(port, ms(3000));
  REQUIRE_MESSAGE(back.has_value(),
                  "/readyz did not answer 200 within 3 s of the idle connections closing");
  CHECK(http_get(port, "/livez").status == 200);
  CHECK(http_get(port, "/metrics").status == 200);
}

TEST_CASE("admin: the limit is admin.max_connections from keyway.toml") {
  temp_dir dir;
  const auto conf = dir.path() / "keyway.toml";
  std::ofstream(conf) << "[listen]\ntcp = [\"127.0.0.1:0\"]\n[admin]\nlisten = "
                         "\"127.0.0.1:0\"\nmax_connections = 2\n";
  keywayd_process d({"--config", conf.string()});
  const auto port = d.admin_port();
  INFO("daemon log:\n" << d.log());
  std::vector<tcp_conn> idle;
  idle.emplace_back(port);
  idle.emplace_back(port);
  tcp_conn third(port);
  const auto r = third.read_to_close(ms(2000));
  CHECK(r.closed);
  CHECK(status_of(r.bytes) == 503);
  CHECK(body_of(r.bytes) == "too many admin connections (admin.max_connections is 2)\n");
  CHECK(idle[0].quiet());
  CHECK(idle[1].quiet());
  idle.clear();
  CHECK(wait_ready(port, ms(3000)).has_value());
}

TEST_CASE(
    "admin: a request half-closed before its end is closed at once and one half-closed after its "
    "end is answered") {
  keywayd_process d;
  const auto port = d.admin_port();
  INFO("daemon log:\n" << d.log());
  SUBCASE("part of a request, then EOF: closed without an answer") {
    tcp_conn c(port);
    c.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    c.shutdown_write();
    const auto r = c.read_to_close(ms(3000));
    CHECK(r.closed);
    CHECK(r.took < ms(1000));
    CHECK(r.bytes.empty());
  }
  SUBCASE("nothing, then EOF: closed") {
    tcp_conn c(port);
    c.shutdown_write();
    const auto r = c.read_to_close(ms(3000));
    CHECK(r.closed);
    CHECK(r.took < ms(1000));
    CHECK(r.bytes.empty());
  }
  SUBCASE("a whole request, then EOF: answered") {
    tcp_conn c(port);
    c.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    c.shutdown_write();
    const auto r = c.read_to_close(ms(3000));
    CHECK(r.closed);
    CHECK(status_of(r.bytes) == 200);
    CHECK(body_of(r.bytes) == "ok\n");
  }
  SUBCASE("a whole HEAD request, then EOF: answered without a body") {
    tcp_conn c(port);
    c.send("HEAD /livez HTTP/1.1\r\n\r\n");
    c.shutdown_write();
    const auto r = c.read_to_close(ms(3000));
    CHECK(status_of(r.bytes) == 200);
    CHECK(body_of(r.bytes).empty());
  }
  SUBCASE("a malformed request line, then EOF: answered 400") {
    tcp_conn c(port);
    c.send("GET /readyz\r\n\r\n");
    c.shutdown_write();
    const auto r = c.read_to_close(ms(3000));
    CHECK(status_of(r.bytes) == 400);
  }
}

TEST_CASE("admin: requests a byte at a time, garbage and oversized heads") {
  keywayd_process d;
  const auto port = d.admin_port();
  INFO("daemon log:\n" << d.log());
  SUBCASE("a byte at a time is answered") {
    tcp_conn c(port);
    for (const char ch :
         std::string_view("GET /livez?x HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n")) {
      c.send(std::string_view(&ch, 1));
      std::this_thread::sleep_for(ms(1));
    }
    const auto r = c.read_to_close(ms(3000));
    CHECK(status_of(r.bytes) == 200);
    CHECK(body_of(r.bytes) == "ok\n");
  }
  SUBCASE("bytes that are not HTTP are refused at once, without waiting for a line end") {
    tcp_conn c(port);
    c.send(
        std::string_view("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11));  // a TLS ClientHello
    const auto r = c.read_to_close(ms(3000));
    CHECK(r.took < ms(1000));
    CHECK(status_of(r.bytes) == 400);
  }
  SUBCASE("a head over 16 KiB gets 431") {
    tcp_conn c(port);
    c.send("GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(17 * 1024, 'a'));
    const auto r = c.read_to_close(ms(3000));
    CHECK(status_of(r.bytes) == 431);
  }
  SUBCASE("a malformed header line gets 400") {
    tcp_conn c(port);
    c.send("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n");
    const auto r = c.read_to_close(ms(3000));
    CHECK(status_of(r.bytes) == 400);
  }
  CHECK(http_get(port, "/readyz").status == 200);
}

TEST_CASE(
    "admin: accepts failing for want of file descriptors back off, with one log line, and recover" *
    doctest::skip(sanitizer_needs_descriptors)) {
  keywayd_process d;
  const auto port = d.admin_port();
  INFO("daemon log:\n" << d.log());
  // Leave the daemon two free descriptor numbers: two admin connections get
  // them, every accept after that fails with EMFILE while they stay open.
  rlimit old{};
  REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, nullptr, &old) == 0);
  rlimit low = old;
  low.rlim_cur = limit_leaving(d.pid(), 2);
  REQUIRE_MESSAGE(::prlimit(d.pid(), RLIMIT_NOFILE, &low, nullptr) == 0, std::strerror(errno));
  std::vector<tcp_conn> conns;
  for (int i = 0; i < 20; ++i) conns.emplace_back(port);
  REQUIRE(d.wait_log("admin: accept failed", ms(5000)));
  const auto cpu_before = thread_cpu(d.pid(), "keyway-admin");
  REQUIRE(cpu_before.has_value());
  std::this_thread::sleep_for(ms(2000));
  const auto cpu_after = thread_cpu(d.pid(), "keyway-admin");
  REQUIRE(cpu_after.has_value());
  // Spinning on accept would use most of the 2 s; backing off uses nearly none.
  CHECK(*cpu_after - *cpu_before < ms(200));
  const std::string log = d.log();
  CHECK(count_of(log, "admin: accept failed") == 1);
  CHECK(log.find("Too many open files (EMFILE); retrying in 10 ms") != std::string::npos);

  // Descriptors back: the daemon accepts again within its longest wait (1 s).
  REQUIRE(::prlimit(d.pid(), RLIMIT_NOFILE, &old, nullptr) == 0);
  conns.clear();
  const auto back = wait_ready(port, ms(3000));
  CHECK_MESSAGE(back.has_value(),
                "/readyz did not answer 200 within 3 s of the limit being restored");
  CHECK(d.wait_log("admin: accepting again after", ms(1000)));
  CHECK(count_of(d.log(), "admin: accept failed") == 1);
}

}  // namespace keyway::itest
