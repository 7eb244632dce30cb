#include "client/cli/commands.hpp"

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <optional>
#include <utility>

#include "client/cli/format.hpp"
#include <keyway/client.hpp>
#include "proto/errc.hpp"

namespace keyway::cli {
namespace {

using client::connection;

volatile std::sig_atomic_t stop_requested = 0;

extern "C" void on_stop_signal(int) {
  stop_requested = 1;
}

void say(const std::string& text) {
  std::fprintf(stderr, "keyway: %s\n", text.c_str());
  std::fflush(stderr);
}

/// What a user reads for a failed call.
std::string describe(const client::error& e) {
  if (e.from_server) return "server error " + client::code_name(e.code) + ": " + e.message;
  return e.message.empty() ? client::code_name(e.code) : e.message;
}

/// The main thread waits here for the IO thread's handlers to finish the job,
/// for the connection to fail, or for SIGINT/SIGTERM.
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

/// Async errors: the connection was lost (fatal) or the server refused a
/// fire-and-forget frame. Printed at once; the first is kept for the exit code.
struct async_errors {
  std::atomic<std::uint64_t> count{0};
  waiter* to_wake = nullptr;
  void operator()(const client::error& e) {
    count.fetch_add(1, std::memory_order_relaxed);
    say(describe(e));
    if (to_wake) to_wake->fail(e);
  }
};

client::connect_options base_options(const global_options& g) {
  client::connect_options o;
  o.client_name = g.client_name;
  o.auth_token = g.auth_token;
  return o;
}

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

}  // namespace

void install_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// ---- pub -------------------------------------------------------------------------

int run_pub(const global_options& g, pub_options o) {
  if (o.payload == "-" && !read_stdin(o.payload)) {
    say("cannot read the payload from stdin");
    return exit_error;
  }
  auto headers = parse_headers(o.headers);
  if (!headers) return exit_usage;

  async_errors errors;
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  auto conn = open(g, std::move(options));
  if (!conn) return exit_error;

  const index_template key_template(o.key), payload_template(o.payload);
  const bool key_varies = o.count_given && key_template.has_placeholder();
  const bool payload_varies = o.count_given && payload_template.has_placeholder();
  std::string key_buf, payload_buf;
  client::publish_options popts;
  popts.key = o.key;
  popts.headers = headers->views;
  popts.reply_to = o.reply_to;

  // --ack: pipelined, at most `window` acks outstanding.
  constexpr std::uint64_t window = 1024;
  struct ack_state {
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t in_flight = 0, acked = 0, failed = 0, delivered = 0;
  } acks;

  const auto start = std::chrono::steady_clock::now();
  std::uint64_t sent = 0;
  bool failed = false;
  for (std::uint64_t i = 0; i < o.count; ++i) {
    std::string_view payload = o.payload;
    if (key_varies) {
      key_template.render(i, key_buf);
      popts.key = key_buf;
    }
    if (payload_varies) {
      payload_template.render(i, payload_buf);
      payload = payload_buf;
    }
    if (!o.ack) {
      if (auto r = conn->publish(o.subject, payload, popts); !r) {
        say("publish to " + o.subject + " failed: " + describe(r.error()));
        failed = true;
        break;
      }
    } else {
      {
        std::unique_lock lock(acks.mu);
        acks.cv.wait(lock, [&] { return acks.in_flight < window; });
        ++acks.in_flight;
      }
      conn->publish_ack_async(o.subject, payload, popts,
                              [&acks, subject = o.subject](client::outcome<std::uint32_t> r) {
                                std::lock_guard lock(acks.mu);
                                --acks.in_flight;
                                if (r) {
                                  ++acks.acked;
                                  acks.delivered += *r;
                                } else if (++acks.failed <= 5) {
                                  say("publish to " + subject + " failed: " + describe(r.error()));
                                }
                                acks.cv.notify_all();
                              });
      if (!conn->is_open()) {
        failed = true;
        break;
      }
    }
    ++sent;
  }
  if (o.ack) {
    std::unique_lock lock(acks.mu);
    acks.cv.wait(
        lock, [&] { return acks.in_flight == 0; });  // each completes by op_timeout at the latest
  } else if (!failed) {
    if (auto r = conn->flush(); !r) {
      say("flush failed: " + describe(r.error()));
      failed = true;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  conn->close();

  if (sent > 0 || !failed)
    std::fprintf(stderr, "published %llu message%s to %s in %.3f s (%.0f msg/s)\n",
                 static_cast<unsigned long long>(sent), sent == 1 ? "" : "s", o.subject.c_str(),
                 secs, secs > 0 ? static_cast<double>(sent) / secs : 0.0);
  if (o.ack) {
    if (acks.failed > 5) say(std::to_string(acks.failed - 5) + " more publishes failed");
    if (o.count == 1 && acks.acked == 1) {
      std::fprintf(stderr, "delivered to %llu subscriber%s\n",
                   static_cast<unsigned long long>(acks.delivered), acks.delivered == 1 ? "" : "s");
    } else {
      std::fprintf(stderr, "acks: %llu ok, %llu deliveries in all, %llu failed\n",
                   static_cast<unsigned long long>(acks.acked),
                   static_cast<unsigned long long>(acks.delivered),
                   static_cast<unsigned long long>(acks.failed));
    }
    if (acks.failed > 0) failed = true;
  }
  return failed || errors.count.load() > 0 ? exit_error : exit_ok;
}

// ---- sub -------------------------------------------------------------------------

int run_sub(const global_options& g, const sub_options& o) {
  install_stop_signals();
  static char stdout_buf[1 << 16];
  std::setvbuf(stdout, stdout_buf, _IOFBF, sizeof stdout_buf);

  waiter w;
  async_errors errors;
  errors.to_wake = &w;
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  // Lines are flushed once per socket read: prompt, without a write per line.
  options.on_batch_end = [] { std::fflush(stdout); };
  // Declared before the connection: its IO thread uses them until close().
  std::atomic<std::uint64_t> received{0};
  std::string line;  // IO thread only
  auto conn = open(g, std::move(options));
  if (!conn) return exit_error;

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
  auto sub = conn->subscribe(o.pattern, handler, {.queue_group = o.queue});
  if (!sub) {
    say("cannot subscribe to " + o.pattern + ": " + describe(sub.error()));
    return exit_error;
  }
  std::fprintf(stderr, "subscribed to %s\n", o.pattern.c_str());
  std::fflush(stderr);

  const auto failure = w.wait();
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

  auto reply =
      conn->request(o.subject, o.payload, o.timeout, {.key = o.key, .headers = headers->views});
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
  std::fwrite(reply->payload.data(), 1, reply->payload.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return exit_ok;
}

// ---- reply -----------------------------------------------------------------------

int run_reply(const global_options& g, const reply_options& o) {
  install_stop_signals();
  waiter w;
  async_errors errors;
  errors.to_wake = &w;
  auto options = base_options(g);
  options.on_error = std::ref(errors);
  std::atomic<std::uint64_t> answered{0};
  bool warned = false;  // IO thread only
  auto conn = open(g, std::move(options));
  if (!conn) return exit_error;

  auto handler = [&](const client::message& m) {
    if (m.reply_to.empty()) {
      if (!warned)
        say("ignoring a message on " + m.subject + " without reply_to (published, not requested)");
      warned = true;
      return;
    }
    const std::uint64_t n = answered.load(std::memory_order_relaxed);
    if (o.count != 0 && n >= o.count) return;
    if (auto r =
            conn->publish(m.reply_to, o.payload_given ? std::string_view(o.payload) : m.payload);
        !r)
      say("reply to " + m.reply_to + " failed: " + describe(r.error()));
    answered.store(n + 1, std::memory_order_relaxed);
    if (o.count != 0 && n + 1 == o.count) w.finish();
  };
  auto sub = conn->subscribe(o.pattern, handler, {.queue_group = o.queue});
  if (!sub) {
    say("cannot subscribe to " + o.pattern + ": " + describe(sub.error()));
    return exit_error;
  }
  std::fprintf(stderr, "subscribed to %s\n", o.pattern.c_str());
  std::fflush(stderr);

  auto failure = w.wait();
  if (!failure) {
    if (auto r = conn->flush(); !r) failure = r.error();  // the last replies reached the server
  }
  conn->close();
  return failure ? exit_error : exit_ok;
}

}  // namespace keyway::cli
