#include "client/cli/commands.hpp"

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "client/cli/format.hpp"
#include "proto/errc.hpp"

namespace keyway::cli {
namespace {

using client::connection;
using clock = std::chrono::steady_clock;

volatile std::sig_atomic_t stop_requested = 0;

extern "C" void on_stop_signal(int) {
  stop_requested = 1;
}

double seconds_since(clock::time_point start) {
  return std::chrono::duration<double>(clock::now() - start).count();
}

/// The main thread waits here for the IO thread's handlers to finish the job,
/// for the connection to close for good, or for SIGINT/SIGTERM.
class waiter {
 public:
  void finish() {
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
  void fail(const client::error& e) {
    std::lock_guard lock(mu_);
    if (!failure_) failure_ = e;
    cv_.notify_all();
  }
  /// Returns the failure, if any; std::nullopt when finished or stopped.
  std::optional<client::error> wait() {
    std::unique_lock lock(mu_);
    while (!done_ && !failure_ && stop_requested == 0)
      cv_.wait_for(lock, std::chrono::milliseconds(50));
    return failure_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::optional<client::error> failure_;
};

/// Asynchronous errors (a fire-and-forget publish the server refused, ...):
/// printed at once and counted. Not fatal: a lost link is link_events' job.
struct async_errors {
  std::atomic<std::uint64_t> count{0};
  void operator()(const client::error& e) {
    count.fetch_add(1, std::memory_order_relaxed);
    say(describe(e));
  }
};

/// The life of the link, told on stderr: disconnected (reconnecting),
/// reconnected, lame duck, and closed for good — which, unless the CLI closed
/// the connection itself, fails `to_wake` (sub and reply then exit 1).
/// Declared before the connection: its IO thread calls these until close().
class link_events {
 public:
  link_events(const global_options& g, waiter* to_wake) : g_(g), to_wake_(to_wake) {}

  void attach(connection* c) { conn_.store(c); }
  /// The CLI is closing the connection: on_closed is expected, not news.
  void closing() { closing_.store(true); }

  void install(client::connect_options& o) {
    o.on_disconnected = [this](const client::error& e) {
      const std::string url = current_url();
      say("disconnected from " + url + " (" + reason(e, url) + "); reconnecting");
    };
    o.on_reconnected = [this] { say("reconnected to " + current_url()); };
    o.on_lame_duck = [this] { say(current_url() + " is shutting down (lame duck)"); };
    o.on_closed = [this](const client::error& e) {
      if (closing_.load()) return;
      const std::string url = current_url();
      if (to_wake_ != nullptr) {
        say("lost the connection to " + url + " (" + reason(e, url) + ")" +
            (g_.reconnect ? "" : "; not reconnecting (--no-reconnect)"));
        to_wake_->fail(e);
      }
    };
  }

 private:
  std::string current_url() const {
    if (connection* c = conn_.load()) return c->info().url;
    return g_.server;  // before connect() returned
  }
  /// The reason without a leading "connection to URL lost: ", which the
  /// line already says.
  static std::string reason(const client::error& e, const std::string& url) {
    std::string why = describe(e);
    const std::string prefix = "connection to " + url + " lost: ";
    if (why.starts_with(prefix)) why.erase(0, prefix.size());
    return why;
  }

  const global_options& g_;
  waiter* to_wake_;
  std::atomic<connection*> conn_{nullptr};
  std::atomic<bool> closing_{false};
};

std::unique_ptr<connection> open(const global_options& g, client::connect_options options) {
  auto c = client::connect(g.server, std::move(options));
  if (!c) {
    say(describe(c.error()));
    return nullptr;
  }
  return std::move(*c);
}

bool read_stdin(std::string& out) {
  out.clear();
  char buf[1 << 16];
  for (;;) {
    const std::size_t n = std::fread(buf, 1, sizeof buf, stdin);
    out.append(buf, n);
    if (n < sizeof buf) return std::ferror(stdin) == 0;
  }
}

/// Parsed --header values, and the views the client API takes.
struct header_list {
  std::vector<std::pair<std::string, std::string>> owned;
  std::vector<client::header> views;
};

std::optional<header_list> parse_headers(const std::vector<std::string>& specs) {
  header_list h;
  for (const std::string& s : specs) {
    auto parsed = parse_header(s);
    if (!parsed) {
      say("--header '" + s + "' is not NAME=VALUE");
      return std::nullopt;
    }
    h.owned.push_back(std::move(*parsed));
  }
  for (const auto& [name, value] : h.owned) h.views.push_back({name, value});
  return h;
}

void print_line(const std::string& line) {
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

}  // namespace

void say(const std::string& text) {
  std::fprintf(stderr, "keyway: %s\n", text.c_str());
  std::fflush(stderr);
}

std::string describe(const client::error& e) {
  if (e.from_server) return "server error " + client::code_name(e.code) + ": " + e.message;
  return e.message.empty() ? client::code_name(e.code) : e.message;
}

client::connect_options base_options(const global_options& g) {
  client::connect_options o;
  o.client_name = g.client_name;
  o.auth_token = g.auth_token;
  o.reconnect.enabled = g.reconnect;
  return o;
}

void install_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int run_version(bool json) {
  const std::string v(client::version());
  print_line(json ? json_object().str("version", v).done() : "keyway " + v);
  return exit_ok;
}

// ---- pub -------------------------------------------------------------------------

int run_pub(const global_options& g, pub_options o) {
  if (o.payload == "-" && !read_stdin(o.payload)) {
    say("cannot read the payload from stdin");
    return exit_error;
  }
  auto headers = parse_headers(o.headers);
  if (!headers) return exit_usage;

  // --ack: pipelined, at most `window` acks outstanding. A publish that fails
  // at once completes inline, on this thread, while `submitting`: it was not
  // sent, and the loop below decides (retry on buffer_full, else stop).
  constexpr std::uint64_t window = 1024;
  struct ack_state {
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t in_flight = 0, acked = 0, failed = 0, delivered = 0;
    bool submitting = false;
    std::thread::id submitter;
    std::optional<client::error> refused;  // the inline failure of the current submit
  } acks;
  acks.submitter = std::this_thread::get_id();

  async_errors errors;
  link_events events(g, nullptr);
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  events.install(options);
  auto conn = open(g, std::move(options));
  if (!conn) return exit_error;
  events.attach(conn.get());

  const index_template key_template(o.key), payload_template(o.payload);
  const bool key_varies = o.count_given && key_template.has_placeholder();
  const bool payload_varies = o.count_given && payload_template.has_placeholder();
  std::string key_buf, payload_buf;
  client::publish_options popts;
  popts.key = o.key;
  popts.headers = headers->views;
  popts.reply_to = o.reply_to;

  auto submit_ack = [&](std::string_view payload) -> client::outcome<void> {
    {
      std::unique_lock lock(acks.mu);
      acks.cv.wait(lock, [&] { return acks.in_flight < window; });
      ++acks.in_flight;
      acks.submitting = true;
      acks.refused.reset();
    }
    conn->publish_ack_async(
        o.subject, payload, popts, [&acks, subject = o.subject](client::outcome<std::uint32_t> r) {
          std::lock_guard lock(acks.mu);
          --acks.in_flight;
          acks.cv.notify_all();
          if (r) {
            ++acks.acked;
            acks.delivered += *r;
          } else if (acks.submitting && std::this_thread::get_id() == acks.submitter) {
            acks.refused = r.error();
          } else if (++acks.failed <= 5) {
            say("publish to " + subject + " failed: " + describe(r.error()));
          }
        });
    std::lock_guard lock(acks.mu);
    acks.submitting = false;
    if (acks.refused) return *acks.refused;
    return {};
  };

  const auto start = clock::now();
  std::uint64_t sent = 0;
  std::string failure;  // why pub stopped early, or why its end failed
  bool waited_for_room = false;
  for (std::uint64_t i = 0; i < o.count && failure.empty(); ++i) {
    std::string_view payload = o.payload;
    if (key_varies) {
      key_template.render(i, key_buf);
      popts.key = key_buf;
    }
    if (payload_varies) {
      payload_template.render(i, payload_buf);
      payload = payload_buf;
    }
    std::optional<clock::time_point> refused_since;
    for (;;) {
      auto r = o.ack ? submit_ack(payload) : conn->publish(o.subject, payload, popts);
      if (r) break;
      if (r.error().code != client::errc::buffer_full) {
        failure = "publish to " + o.subject + " failed: " + describe(r.error());
        break;
      }
      // Disconnected, and the reconnect buffer is full: wait for the link.
      const auto now = clock::now();
      if (!refused_since) {
        refused_since = now;
        if (!waited_for_room)
          say("the reconnect buffer is full; waiting up to " + format_duration(o.buffer_wait) +
              " (--buffer-wait) for the connection to come back");
        waited_for_room = true;
      }
      if (now - *refused_since >= o.buffer_wait) {
        failure = "publish to " + o.subject + " failed: still disconnected after " +
                  format_duration(o.buffer_wait) + " (--buffer-wait): " + describe(r.error());
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (failure.empty()) ++sent;
  }
  if (o.ack) {
    std::unique_lock lock(acks.mu);
    // Each completes by op_timeout at the latest (or when the connection closes).
    acks.cv.wait(lock, [&] { return acks.in_flight == 0; });
  } else if (failure.empty()) {
    // A flush that was under way when the link dropped is retried on the
    // next link: it then confirms what was sent after the drop. One that
    // timed out while the connection is still reconnecting is retried too,
    // until --buffer-wait has passed.
    const auto flush_start = clock::now();
    for (int attempt = 0;; ++attempt) {
      auto r = conn->flush();
      if (r) break;
      const bool lost = r.error().code == client::errc::connection_lost && attempt < 3;
      const bool waiting = r.error().code == client::errc::timeout &&
                           conn->status() == client::connection_status::reconnecting &&
                           clock::now() - flush_start < o.buffer_wait;
      if (g.reconnect && (lost || waiting)) continue;
      failure = "flush failed: " + describe(r.error());
      break;
    }
  }
  const double secs = seconds_since(start);
  const client::statistics st = conn->stats();
  events.closing();
  conn->close();

  if (!failure.empty()) say(failure);
  if (o.ack && acks.failed > 5) say(std::to_string(acks.failed - 5) + " more publishes failed");
  if (st.lost_publishes > 0)
    say(std::to_string(st.lost_publishes) +
        " publishes were written to a connection that dropped; the server may not have "
        "received them (--ack tells for sure)");
  const bool ok =
      failure.empty() && acks.failed == 0 && st.lost_publishes == 0 && errors.count.load() == 0;

  if (o.json) {
    json_object j;
    j.str("subject", o.subject)
        .num("count", o.count)
        .num("published", sent)
        .real("seconds", secs, 6)
        .real("msgs_per_sec", secs > 0 ? static_cast<double>(sent) / secs : 0.0, 1)
        .boolean("ack", o.ack);
    if (o.ack)
      j.num("acked", acks.acked).num("delivered", acks.delivered).num("failed", acks.failed);
    j.num("buffered", st.buffered_publishes)
        .num("lost", st.lost_publishes)
        .num("reconnects", st.reconnects)
        .num("errors", errors.count.load())
        .boolean("ok", ok);
    if (!failure.empty()) j.str("error", failure);
    print_line(j.done());
    return ok ? exit_ok : exit_error;
  }

  if (sent > 0 || failure.empty())
    std::fprintf(stderr, "published %llu message%s to %s in %.3f s (%.0f msg/s)\n",
                 static_cast<unsigned long long>(sent), sent == 1 ? "" : "s", o.subject.c_str(),
                 secs, secs > 0 ? static_cast<double>(sent) / secs : 0.0);
  if (st.reconnects > 0)
    std::fprintf(stderr, "reconnected %llu time%s; %llu publish%s buffered while disconnected\n",
                 static_cast<unsigned long long>(st.reconnects), st.reconnects == 1 ? "" : "s",
                 static_cast<unsigned long long>(st.buffered_publishes),
                 st.buffered_publishes == 1 ? " was" : "es were");
  if (o.ack) {
    if (o.count == 1 && acks.acked == 1) {
      std::fprintf(stderr, "delivered to %llu subscriber%s\n",
                   static_cast<unsigned long long>(acks.delivered), acks.delivered == 1 ? "" : "s");
    } else {
      std::fprintf(stderr, "acks: %llu ok, %llu deliveries in all, %llu failed\n",
                   static_cast<unsigned long long>(acks.acked),
                   static_cast<unsigned long long>(acks.delivered),
                   static_cast<unsigned long long>(acks.failed));
    }
  }
  std::fflush(stderr);
  return ok ? exit_ok : exit_error;
}

// ---- sub -------------------------------------------------------------------------

namespace {

/// Subscribes for sub and reply, and says so on stderr once the server
/// acknowledged it (the line scripts wait for); false after saying why not.
bool subscribe_and_announce(client::connection& conn, const std::string& pattern,
                            const std::string& queue,
                            const client::connection::message_handler& handler,
                            link_events& events) {
  client::subscribe_options so;
  so.queue_group = queue;
  auto sub = conn.subscribe(pattern, handler, so);
  if (!sub) {
    say("cannot subscribe to " + pattern + ": " + describe(sub.error()));
    events.closing();
    return false;
  }
  std::fprintf(stderr, "subscribed to %s\n", pattern.c_str());
  std::fflush(stderr);
  return true;
}

}  // namespace

int run_sub(const global_options& g, const sub_options& o) {
  install_stop_signals();
  static char stdout_buf[1 << 16];
  std::setvbuf(stdout, stdout_buf, _IOFBF, sizeof stdout_buf);

  // Declared before the connection: its IO thread uses them until close().
  waiter w;
  async_errors errors;
  link_events events(g, &w);
  std::atomic<std::uint64_t> received{0};
  std::string line;  // IO thread only
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  events.install(options);
  // Lines are flushed once per socket read: prompt, without a write per line.
  options.on_batch_end = [] { std::fflush(stdout); };
  auto conn = open(g, std::move(options));
  if (!conn) return exit_error;
  events.attach(conn.get());

  auto handler = [&](const client::message& m) {
    const std::uint64_t n = received.load(std::memory_order_relaxed);
    if (o.count != 0 && n >= o.count) return;
    line.clear();
    if (o.json)
      append_json_message(line, m);
    else
      append_plain_message(line, m);
    line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stdout);
    received.store(n + 1, std::memory_order_relaxed);
    if (o.count != 0 && n + 1 == o.count) {
      std::fflush(stdout);
      w.finish();
    }
  };
  if (!subscribe_and_announce(*conn, o.pattern, o.queue, handler, events)) return exit_error;

  const auto failure = w.wait();
  events.closing();
  conn->close();
  std::fflush(stdout);
  return failure ? exit_error : exit_ok;
}

// ---- req -------------------------------------------------------------------------

int run_req(const global_options& g, req_options o) {
  if (o.payload == "-" && !read_stdin(o.payload)) {
    say("cannot read the payload from stdin");
    return exit_error;
  }
  auto headers = parse_headers(o.headers);
  if (!headers) return exit_usage;
  auto conn = open(g, base_options(g));
  if (!conn) return exit_error;

  client::request_options ro;
  ro.key = o.key;
  ro.headers = headers->views;
  const auto start = clock::now();
  auto reply = conn->request(o.subject, o.payload, o.timeout, ro);
  const double secs = seconds_since(start);
  conn->close();
  if (!reply) {
    const client::error& e = reply.error();
    if (e.code == proto::errc::no_responders) {
      say("no responders for " + o.subject);
      return exit_no_responders;
    }
    if (e.code == client::errc::timeout) {
      say("request to " + o.subject + " timed out after " + format_duration(o.timeout));
      return exit_timeout;
    }
    say("request to " + o.subject + " failed: " + describe(e));
    return exit_error;
  }
  if (o.json) {
    std::string line;
    append_json_message_open(line, *reply);
    char rtt[64];
    std::snprintf(rtt, sizeof rtt, ",\"rtt_ms\":%.3f}", secs * 1000.0);
    line.append(rtt);
    print_line(line);
    return exit_ok;
  }
  std::fwrite(reply->payload.data(), 1, reply->payload.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return exit_ok;
}

// ---- reply -----------------------------------------------------------------------

int run_reply(const global_options& g, const reply_options& o) {
  install_stop_signals();
  static char stdout_buf[1 << 16];
  std::setvbuf(stdout, stdout_buf, _IOFBF, sizeof stdout_buf);

  waiter w;
  async_errors errors;
  link_events events(g, &w);
  std::atomic<std::uint64_t> answered{0};
  bool warned = false;  // IO thread only
  std::string line;     // IO thread only
  std::unique_ptr<connection> conn;
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  events.install(options);
  options.on_batch_end = [] { std::fflush(stdout); };
  conn = open(g, std::move(options));
  if (!conn) return exit_error;
  events.attach(conn.get());

  auto handler = [&](const client::message& m) {
    if (m.reply_to.empty()) {
      if (!warned)
        say("ignoring a message on " + m.subject + " without reply_to (published, not requested)");
      warned = true;
      return;
    }
    const std::uint64_t n = answered.load(std::memory_order_relaxed);
    if (o.count != 0 && n >= o.count) return;
    const std::string_view answer = o.payload_given ? std::string_view(o.payload) : m.payload;
    auto r = conn->respond(m, answer);
    if (!r) say("reply to " + m.reply_to + " failed: " + describe(r.error()));
    if (o.json) {
      line.clear();
      append_json_message_open(line, m);
      line.append(",\"answer\":");
      append_json_string(line, answer);
      if (!r) {
        line.append(",\"error\":");
        append_json_string(line, describe(r.error()));
      }
      line.append("}\n");
      std::fwrite(line.data(), 1, line.size(), stdout);
    }
    answered.store(n + 1, std::memory_order_relaxed);
    if (o.count != 0 && n + 1 == o.count) {
      std::fflush(stdout);
      w.finish();
    }
  };
  if (!subscribe_and_announce(*conn, o.pattern, o.queue, handler, events)) return exit_error;

  auto failure = w.wait();
  if (!failure) {
    if (auto r = conn->flush(); !r) {  // the last replies reached the server
      say("flush failed: " + describe(r.error()));
      failure = r.error();
    }
  }
  events.closing();
  conn->close();
  std::fflush(stdout);
  return failure ? exit_error : exit_ok;
}

}  // namespace keyway::cli
