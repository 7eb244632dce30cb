#include "daemon/admin.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "daemon/metrics.hpp"
#include "daemon/server.hpp"

namespace keyway::daemon {
namespace {

using namespace std::chrono_literals;
using asio::ip::tcp;

constexpr std::size_t max_request = 16 * 1024;
constexpr auto request_timeout = 10s;

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string_view phase_name(server::phase p) {
  switch (p) {
    case server::phase::starting: return "starting";
    case server::phase::serving: return "serving";
    case server::phase::draining: return "draining";
    case server::phase::stopped: return "stopped";
  }
  return "unknown";
}

struct response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string extra_headers;
};

std::string_view reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
  }
  return "Error";
}

}  // namespace

std::string readiness_report(const server& srv, bool& ready) {
  std::string out;
  const auto phase = srv.current_phase();
  const bool serving = phase == server::phase::serving;
  out += std::string(serving ? "[+]" : "[-]") + "phase " + std::string(phase_name(phase)) + "\n";
  const std::size_t bound = srv.addresses().size();
  const bool listeners_ok = serving && bound > 0;  // a listener that fails to bind stops the start
  out += std::string(listeners_ok ? "[+]" : "[-]") + "listeners " + std::to_string(bound) + " bound\n";
  const auto stalled = srv.stalled_workers();
  for (std::size_t i = 0; i < srv.context().workers; ++i) {
    const bool bad = std::find(stalled.begin(), stalled.end(), i) != stalled.end();
    out += std::string(bad ? "[-]" : "[+]") + "worker " + std::to_string(i) +
           (bad ? " stalled: did not run the health probe within the last check interval\n" : " making progress\n");
  }
  ready = serving && listeners_ok && stalled.empty();
  out += ready ? "readyz check passed\n" : "readyz check failed\n";
  return out;
}

std::string status_json(const server& srv, const std::string& admin_url) {
  const server_context& ctx = srv.context();
  const auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - srv.started_at()).count();
  const auto stalled = srv.stalled_workers();
  std::uint64_t conns = 0, subs = 0;
  std::string workers;
  for (std::uint32_t i = 0; i < ctx.workers; ++i) {
    const core::worker& w = srv.pool().at(i);
    const daemon_stats& st = *ctx.stats[i];
    const std::uint64_t c = st.connections[0].get() + st.connections[1].get();
    std::uint64_t depth = 0;
    for (std::uint32_t from = 0; from < ctx.workers; ++from) depth += ctx.mesh->depth(i, from);
    conns += c;
    subs += st.subscriptions.get();
    if (i) workers += ",";
    workers += "{\"id\":" + std::to_string(i) + ",\"cpu\":" + (w.cpu() ? std::to_string(*w.cpu()) : "null") +
               ",\"connections\":" + std::to_string(c) + ",\"subscriptions\":" + std::to_string(st.subscriptions.get()) +
               ",\"mesh_queue_depth\":" + std::to_string(depth) +
               ",\"loop_turns\":" + std::to_string(w.stats().loop_turns.get()) +
               ",\"sleeping\":" + (w.sleeping() ? "true" : "false") + ",\"stalled\":" +
               (std::find(stalled.begin(), stalled.end(), i) != stalled.end() ? "true" : "false") + "}";
  }
  std::string listeners;
  for (const auto& a : srv.addresses()) listeners += (listeners.empty() ? "" : ",") + json_string(a);
  char up[32];
  std::snprintf(up, sizeof up, "%.3f", uptime);
  return "{\"version\":" + json_string(KEYWAY_VERSION) + ",\"server_id\":" + json_string(ctx.server_id) +
         ",\"phase\":" + json_string(phase_name(srv.current_phase())) + ",\"uptime_seconds\":" + up +
         ",\"workers\":[" + workers + "],\"connections\":" + std::to_string(conns) +
         ",\"subscriptions\":" + std::to_string(subs) + ",\"listeners\":[" + listeners +
         "],\"admin\":" + json_string(admin_url) + "}\n";
}

struct admin_service::impl {
  server& srv;
  std::optional<listen_address> listen;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer tick{io};
  asio::steady_timer backoff{io};  // between failed accepts
  std::thread thread;
  std::string url;
  metrics_collector metrics{srv};
  std::uint64_t watchdog_usec = 0;
  std::chrono::steady_clock::time_point last_watchdog{};

  impl(server& s, std::optional<listen_address> l) : srv(s), listen(std::move(l)) {}

  response route(std::string_view method, std::string_view target) {
    response r;
    const auto q = target.find('?');
    const std::string_view path = target.substr(0, q);
    const std::string_view query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    const bool known = path == "/metrics" || path == "/livez" || path == "/readyz" || path == "/healthz" ||
                       path == "/status";
    if (!known) {
      r.status = 404;
      r.body = "not found; try /metrics, /livez, /readyz, /healthz or /status\n";
      return r;
    }
    if (method != "GET" && method != "HEAD") {
      r.status = 405;
      r.extra_headers = "Allow: GET, HEAD\r\n";
      r.body = "method not allowed; use GET\n";
      return r;
    }
    if (path == "/metrics") {
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = metrics.render();
    } else if (path == "/livez") {
      r.body = "ok\n";
    } else if (path == "/status") {
      r.content_type = "application/json";
      r.body = status_json(srv, url);
    } else {
      bool ready = false;
      const std::string report = readiness_report(srv, ready);
      r.status = ready ? 200 : 503;
      r.body = query.find("verbose") != std::string_view::npos ? report : (ready ? "ok\n" : "not ready\n");
    }
    return r;
  }

  struct session : std::enable_shared_from_this<session> {
    impl& owner;
    tcp::socket sock;
    asio::streambuf buf{max_request};
    asio::steady_timer deadline;
    std::string out;
    session(impl& o, tcp::socket s) : owner(o), sock(std::move(s)), deadline(o.io) {}

    void run() {
      deadline.expires_after(request_timeout);
      deadline.async_wait([self = shared_from_this()](std::error_code ec) {
        if (!ec) self->sock.close(ec);
      });
      asio::async_read_until(sock, buf, "\r\n\r\n", [self = shared_from_this()](std::error_code ec, std::size_t) {
        self->on_request(ec);
      });
    }
    void on_request(std::error_code ec) {
      response r;
      bool head = false;
      if (ec == asio::error::not_found) {  // the buffer filled up without an end of headers
        r.status = 431;
        r.body = "request headers over 16 KiB\n";
      } else if (ec) {
        return;  // closed, or timed out
      } else {
        std::string text(asio::buffers_begin(buf.data()), asio::buffers_end(buf.data()));
        const std::string line = text.substr(0, text.find("\r\n"));
        const auto a = line.find(' ');
        const auto b = a == std::string::npos ? a : line.find(' ', a + 1);
        if (b == std::string::npos || line.compare(b + 1, 5, "HTTP/") != 0) {
          r.status = 400;
          r.body = "malformed request line\n";
        } else {
          const std::string method = line.substr(0, a);
          head = method == "HEAD";
          try {
            r = owner.route(method, std::string_view(line).substr(a + 1, b - a - 1));
          } catch (const std::exception& e) {
            r.status = 503;
            r.body = std::string("cannot answer: ") + e.what() + "\n";
          }
        }
      }
      out = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(reason(r.status)) +
            "\r\nContent-Type: " + r.content_type + "\r\nContent-Length: " + std::to_string(r.body.size()) +
            "\r\nConnection: close\r\n" + r.extra_headers + "\r\n";
      if (!head) out += r.body;
      asio::async_write(sock, asio::buffer(out), [self = shared_from_this()](std::error_code, std::size_t) {
        std::error_code ignored;
        self->sock.shutdown(tcp::socket::shutdown_both, ignored);
        self->sock.close(ignored);
        self->deadline.cancel();
      });
    }
  };

  void accept() {
    acceptor.async_accept([this](std::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        std::make_shared<session>(*this, std::move(s))->run();
        return accept();
      }
      // Out of descriptors or memory: accepting again at once would spin.
      spdlog::warn("admin: accept failed: {}; retrying in 100 ms", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      backoff.async_wait([this](std::error_code wait_ec) {
        if (!wait_ec) accept();
      });
    });
  }

  void on_tick() {
    srv.check_progress();
    if (watchdog_usec != 0 && srv.stalled_workers().empty()) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_watchdog >= std::chrono::microseconds(watchdog_usec / 2)) {
        sd_notify(0, "WATCHDOG=1");
        last_watchdog = now;
      }
    }
    tick.expires_after(watchdog_usec != 0 && watchdog_usec < 2'000'000 ? std::chrono::microseconds(watchdog_usec / 4)
                                                                        : std::chrono::microseconds(1'000'000));
    tick.async_wait([this](std::error_code ec) {
      if (!ec) on_tick();
    });
  }
};

admin_service::admin_service(server& srv, std::optional<listen_address> listen)
    : impl_(std::make_unique<impl>(srv, std::move(listen))) {}

admin_service::~admin_service() { stop(); }

const std::string& admin_service::url() const noexcept { return impl_->url; }

void admin_service::start() {
  impl& m = *impl_;
  if (m.listen) {
    const listen_address& a = *m.listen;
    open_tcp_acceptor(m.acceptor, a, "admin.listen");
    const auto bound = m.acceptor.local_endpoint();
    const std::string host = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                                     : bound.address().to_string();
    m.url = "http://" + host + ":" + std::to_string(bound.port());
    spdlog::info("admin listening on {}", m.url);
    m.accept();
  }
  if (sd_watchdog_enabled(0, &m.watchdog_usec) <= 0) m.watchdog_usec = 0;
  m.on_tick();
  m.thread = std::thread([&m] {
    ::pthread_setname_np(::pthread_self(), "keyway-admin");
    m.io.run();
  });
}

void admin_service::stop() {
  impl& m = *impl_;
  if (!m.thread.joinable()) return;
  m.io.stop();
  m.thread.join();
}

}  // namespace keyway::daemon
