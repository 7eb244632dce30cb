#include "daemon/admin.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <array>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "daemon/accept_backoff.hpp"
#include "daemon/http_request.hpp"
#include "daemon/metrics.hpp"
#include "daemon/server.hpp"

namespace keyway::daemon {
namespace {

using namespace std::chrono_literals;
using asio::ip::tcp;

constexpr auto request_timeout = 10s;

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
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
    case server::phase::starting:
      return "starting";
    case server::phase::serving:
      return "serving";
    case server::phase::draining:
      return "draining";
    case server::phase::stopped:
      return "stopped";
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
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
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
  out +=
      std::string(listeners_ok ? "[+]" : "[-]") + "listeners " + std::to_string(bound) + " bound\n";
  const auto stalled = srv.stalled_workers();
  for (std::size_t i = 0; i < srv.context().workers; ++i) {
    const bool bad = std::find(stalled.begin(), stalled.end(), i) != stalled.end();
    out += std::string(bad ? "[-]" : "[+]") + "worker " + std::to_string(i) +
           (bad ? " stalled: did not run the health probe within the last check interval\n"
                : " making progress\n");
  }
  bool cluster_ok = true;
  if (const cluster_node* c = srv.cluster()) {
    out += c->readiness_report();
    cluster_ok = c->ready();
  }
  ready = serving && listeners_ok && stalled.empty() && cluster_ok;
  out += ready ? "readyz check passed\n" : "readyz check failed\n";
  return out;
}

std::string status_json(const server& srv, const std::string& admin_url) {
  const server_context& ctx = srv.context();
  const auto uptime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - srv.started_at()).count();
  const auto stalled = srv.stalled_workers();
  std::uint64_t conns = 0, subs = 0;
  std::string workers;
  for (std::uint32_t i = 0; i < ctx.workers; ++i) {
    const core::worker& w = srv.pool().at(i);
    const probe& st = *ctx.stats[i];
    const std::uint64_t c = st.open_connections();
    std::uint64_t depth = 0;
    for (std::uint32_t from = 0; from < ctx.workers; ++from) depth += ctx.mesh->depth(i, from);
    conns += c;
    subs += st.live_subscriptions();
    if (i) workers += ",";
    workers += "{\"id\":" + std::to_string(i) +
               ",\"cpu\":" + (w.cpu() ? std::to_string(*w.cpu()) : "null") +
               ",\"connections\":" + std::to_string(c) +
               ",\"subscriptions\":" + std::to_string(st.live_subscriptions()) +
               ",\"mesh_queue_depth\":" + std::to_string(depth) +
               ",\"loop_turns\":" + std::to_string(w.stats().loop_turns.get()) +
               ",\"sleeping\":" + (w.sleeping() ? "true" : "false") + ",\"stalled\":" +
               (std::find(stalled.begin(), stalled.end(), i) != stalled.end() ? "true" : "false") +
               "}";
  }
  std::string listeners;
  for (const auto& a : srv.addresses())
    listeners += (listeners.empty() ? "" : ",") + json_string(a);
  char up[32];
  std::snprintf(up, sizeof up, "%.3f", uptime);
  return "{\"version\":" + json_string(KEYWAY_VERSION) +
         ",\"server_id\":" + json_string(ctx.server_id) +
         ",\"phase\":" + json_string(phase_name(srv.current_phase())) +
         ",\"uptime_seconds\":" + up + ",\"workers\":[" + workers +
         "],\"connections\":" + std::to_string(conns) +
         ",\"subscriptions\":" + std::to_string(subs) + ",\"listeners\":[" + listeners +
         "],\"admin\":" + json_string(admin_url) +
         (srv.cluster() ? ",\"cluster\":" + srv.cluster()->status_json() : std::string()) + "}\n";
}

struct admin_service::impl {
  server& srv;
  std::optional<listen_address> listen;
  const std::size_t max_connections;
  // Admin thread only, after start().
  std::size_t open_sessions = 0;  // sessions not yet closed: each holds a descriptor
  std::uint64_t refused = 0;      // over max_connections since that was last logged
  std::chrono::steady_clock::time_point next_refusal_log{};
  accept_backoff backoff_policy{"admin"};
  std::string refusal;  // the 503 sent over max_connections, built once
  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer tick{io};
  asio::steady_timer backoff{io};  // between failed accepts
  std::thread thread;
  std::string url;
  metrics_collector metrics{srv};
  std::uint64_t watchdog_usec = 0;
  std::chrono::steady_clock::time_point last_watchdog{};

  impl(server& s, std::optional<listen_address> l, std::size_t max)
      : srv(s), listen(std::move(l)), max_connections(std::max<std::size_t>(max, 1)) {
    const std::string body = "too many admin connections (admin.max_connections is " +
                             std::to_string(max_connections) + ")\n";
    refusal = "HTTP/1.1 503 " + std::string(reason(503)) +
              "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" +
              body;
  }

  response route(std::string_view method, std::string_view target) {
    response r;
    const auto q = target.find('?');
    const std::string_view path = target.substr(0, q);
    const std::string_view query =
        q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    const bool known = path == "/metrics" || path == "/livez" || path == "/readyz" ||
                       path == "/healthz" || path == "/status";
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
      r.body = query.find("verbose") != std::string_view::npos ? report
                                                               : (ready ? "ok\n" : "not ready\n");
    }
    return r;
  }

  // One admin connection: read a request head, answer it, close. Every path
  // ends in close(), which the deadline timer calls at the latest; close()
  // gives the connection's slot back.
  struct session : std::enable_shared_from_this<session> {
    impl& owner;
    tcp::socket sock;
    asio::steady_timer deadline;
    std::string in;  // the request so far
    std::array<char, 2048> chunk;
    std::string out;
    bool line_judged = false;  // the request line's end arrived and was parsed
    bool closed = false;
    session(impl& o, tcp::socket s) : owner(o), sock(std::move(s)), deadline(o.io) {}

    void run() {
      deadline.expires_after(request_timeout);
      deadline.async_wait([self = shared_from_this()](std::error_code ec) {
        if (!ec) self->close();
      });
      read();
    }
    void read() {
      sock.async_read_some(
          asio::buffer(chunk),
          [self = shared_from_this()](std::error_code ec, std::size_t n) { self->on_read(ec, n); });
    }
    void on_read(std::error_code ec, std::size_t n) {
      if (closed) return;
      if (ec) {
        // EOF: the client sent all it will (it may still read). A whole (or
        // wrong) request is answered; part of one cannot become whole, so the
        // connection is closed now rather than at the deadline.
        if (ec == asio::error::eof) {
          const http_request r = parse_request(in);
          if (r.state != http_request::parse_state::incomplete) return answer(r);
        }
        return close();
      }
      const std::size_t before = in.size();
      in.append(chunk.data(), n);
      // Parse only when the verdict can change: the first bytes (garbage is
      // refused at once), the request line's end, the blank line that ends
      // the head, the size limit. A client sending a byte at a time costs a
      // few parses, not one per read.
      const std::size_t from = before < 3 ? 0 : before - 3;
      bool parse = before == 0 || in.size() >= max_request_bytes ||
                   in.find("\r\n\r\n", from) != std::string::npos;
      if (!line_judged && in.find("\r\n", before == 0 ? 0 : before - 1) != std::string::npos) {
        line_judged = true;
        parse = true;
      }
      if (parse) {
        const http_request r = parse_request(in);
        if (r.state != http_request::parse_state::incomplete) return answer(r);
        // parse_request never says incomplete at the limit (it says 431);
        // this only keeps the buffer bounded should that change.
        if (in.size() >= max_request_bytes) return close();
      }
      read();
    }
    void answer(const http_request& req) {
      response r;
      bool head = false;
      if (req.state == http_request::parse_state::bad) {
        r.status = req.status;
        r.body = std::string(req.error);
      } else {
        head = req.method == "HEAD";
        try {
          r = owner.route(req.method, req.target);
        } catch (const std::exception& e) {
          r.status = 503;
          r.body = std::string("cannot answer: ") + e.what() + "\n";
        }
      }
      out = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(reason(r.status)) +
            "\r\nContent-Type: " + r.content_type +
            "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\nConnection: close\r\n" +
            r.extra_headers + "\r\n";
      if (!head) out += r.body;
      asio::async_write(
          sock, asio::buffer(out),
          [self = shared_from_this()](std::error_code, std::size_t) { self->close(); });
    }
    void close() {
      if (closed) return;
      closed = true;
      std::error_code ignored;
      sock.shutdown(tcp::socket::shutdown_both, ignored);
      sock.close(ignored);
      deadline.cancel();
      owner.session_closed();
    }
  };

  void session_closed() { --open_sessions; }

  // Over max_connections: a best-effort 503 without waiting, then close.
  // What the client already sent is read and dropped first, so that the
  // close is a FIN after the answer rather than a reset that could discard
  // it; a request arriving later than that may still see a reset.
  // The log line comes at most every 10 s, however fast connections come.
  void refuse(tcp::socket s) {
    ++refused;
    if (const auto now = std::chrono::steady_clock::now(); now >= next_refusal_log) {
      spdlog::warn(
          "admin: {} connections open, admin.max_connections is {}; answering new ones 503 and "
          "closing "
          "them ({} refused since this was last logged; logged at most every 10 s)",
          open_sessions, max_connections, refused);
      refused = 0;
      next_refusal_log = now + 10s;
    }
    std::error_code ec;
    s.non_blocking(true, ec);
    std::array<char, 1024> drop;
    for (int i = 0; i < 16 && !ec; ++i) (void)s.read_some(asio::buffer(drop), ec);
    (void)s.write_some(asio::buffer(refusal), ec);
    s.shutdown(tcp::socket::shutdown_send, ec);
    s.close(ec);
  }

  void accept() {
    acceptor.async_accept([this](std::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        backoff_policy.succeeded();
        if (open_sessions >= max_connections) {
          refuse(std::move(s));
        } else {
          ++open_sessions;
          std::make_shared<session>(*this, std::move(s))->run();
        }
        return accept();
      }
      // Out of descriptors or memory: the connection stays queued and
      // accepting again at once would fail at once, in a loop.
      backoff.expires_after(backoff_policy.failed(ec));
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
    tick.expires_after(watchdog_usec != 0 && watchdog_usec < 2'000'000
                           ? std::chrono::microseconds(watchdog_usec / 4)
                           : std::chrono::microseconds(1'000'000));
    tick.async_wait([this](std::error_code ec) {
      if (!ec) on_tick();
    });
  }
};

admin_service::admin_service(server& srv, std::optional<listen_address> listen,
                             std::size_t max_connections)
    : impl_(std::make_unique<impl>(srv, std::move(listen), max_connections)) {}

admin_service::~admin_service() {
  stop();
}

const std::string& admin_service::url() const noexcept {
  return impl_->url;
}

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
