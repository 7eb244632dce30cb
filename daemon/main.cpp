// keywayd: the Keyway daemon. Reads the config file and the command line
// (flags override the file), starts the server and the admin service, tells
// systemd (sd_notify) where it stands, reloads on SIGHUP, and on SIGTERM/SIGINT
// tells its clients to move elsewhere (lame duck), drains and exits 0.
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <CLI/CLI.hpp>

#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "config/config.hpp"
#include "daemon/admin.hpp"
#include "daemon/cluster_node.hpp"
#include "daemon/server.hpp"

namespace {

using keyway::daemon::server_options;

/// `%*` in a log pattern: the message, escaped for a JSON string.
class json_message_flag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    for (const char c : msg.payload) {
      if (c == '"' || c == '\\') {
        dest.push_back('\\');
        dest.push_back(c);
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        const int n = std::snprintf(buf, sizeof buf, "\\u%04x", c);
        dest.append(buf, buf + n);
      } else {
        dest.push_back(c);
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<json_message_flag>();
  }
};

void set_log_format(keyway::daemon::log_format f) {
  if (f == keyway::daemon::log_format::text) return;  // spdlog's default pattern
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<json_message_flag>('*').set_pattern(
      R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","logger":"%n","message":"%*"})");
  spdlog::set_formatter(std::move(formatter));
}

/// The command line, kept so that a reload can apply it again over the file.
struct flags {
  std::string config;
  std::vector<std::string> listen;
  std::vector<std::string> advertise;
  std::string admin;
  std::int64_t workers = 0;
  std::string log_level, log_format, partitioner, slow_consumer, slow_consumer_grace, handshake,
      idle, drain, lame_duck_grace, tokens_file;
  std::int64_t max_payload = 0;
  std::int64_t max_pending_bytes = 0;
  std::int64_t max_subscriptions = 0;
  std::int64_t max_connections = 0;
  bool check_config = false;
  bool version = false;
};

/// The flags that set a config key, written as TOML (dotted keys) so that
/// config::parse checks them with the file's rules: ranges, units, names.
std::string overrides_toml(const flags& f, const CLI::App& app) {
  std::string out;
  auto line = [&](const char* flag, const char* key, const std::string& toml_value) {
    if (app.count(flag) > 0) out.append(key).append(" = ").append(toml_value).append("\n");
  };
  auto number = [&](const char* flag, const char* key, std::int64_t v) {
    line(flag, key, std::to_string(v));
  };
  auto text = [&](const char* flag, const char* key, const std::string& v) {
    line(flag, key, keyway::config::toml_quote(v));
  };
  number("--workers", "server.workers", f.workers);
  text("--drain-timeout", "server.drain_timeout", f.drain);
  text("--lame-duck-grace", "server.lame_duck_grace", f.lame_duck_grace);
  if (app.count("--advertise") > 0) {
    std::string urls;
    for (const auto& u : f.advertise)
      urls += (urls.empty() ? "" : ", ") + keyway::config::toml_quote(u);
    out.append("server.advertise = [").append(urls).append("]\n");
  }
  number("--max-payload", "limits.max_payload", f.max_payload);
  number("--max-pending-bytes", "limits.max_pending_bytes", f.max_pending_bytes);
  number("--max-subscriptions", "limits.max_subscriptions", f.max_subscriptions);
  number("--max-connections", "limits.max_connections", f.max_connections);
  text("--slow-consumer", "limits.slow_consumer", f.slow_consumer);
  text("--slow-consumer-grace", "limits.slow_consumer_grace", f.slow_consumer_grace);
  text("--handshake-timeout", "limits.handshake_timeout", f.handshake);
  text("--idle-timeout", "limits.idle_timeout", f.idle);
  text("--log-level", "log.level", f.log_level);
  text("--log-format", "log.format", f.log_format);
  text("--partitioner", "routing.partitioner", f.partitioner);
  text("--tokens-file", "auth.tokens_file", f.tokens_file);
  return out;
}

/// Built-in defaults < the config file < the flags given. Throws
/// std::invalid_argument with every problem, one per line.
server_options resolve(const flags& f, const CLI::App& app) {
  server_options opt;
  std::string origin = "command line";
  if (!f.config.empty()) {
    auto loaded = keyway::config::load_file(f.config);
    if (!loaded) throw std::invalid_argument(loaded.joined());
    opt = std::move(*loaded.options);
    origin = f.config;
  }
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (given("--listen")) {
    opt.listen.clear();
    for (const auto& url : f.listen) opt.listen.push_back(keyway::daemon::parse_listen_url(url));
  }
  if (given("--admin")) {
    if (f.admin.empty() || f.admin == "off")
      opt.admin.reset();
    else
      opt.admin = keyway::daemon::parse_listen_url(
          f.admin.find("://") == std::string::npos ? "tcp://" + f.admin : f.admin);
    if (opt.admin && opt.admin->type != keyway::daemon::listen_address::kind::tcp)
      throw std::invalid_argument("--admin " + f.admin +
                                  ": the admin listener is TCP only (HOST:PORT)");
  }
  // The other flags go through the config checks, onto the file's options.
  auto applied = keyway::config::parse(overrides_toml(f, app), "command line", std::move(opt));
  if (!applied) throw std::invalid_argument(applied.joined());
  opt = std::move(*applied.options);
  const auto problems = keyway::config::check_environment(opt, origin);
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "\n") + p;
    throw std::invalid_argument(all);
  }
  return opt;
}

void log_problems(const std::string& text) {
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto end = text.find('\n', start);
    spdlog::critical("{}", text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
}

void reload(keyway::daemon::server& srv, const flags& f, const CLI::App& app) {
  if (f.config.empty()) {
    spdlog::warn("SIGHUP: keywayd runs without --config; nothing to reload");
    return;
  }
  // MONOTONIC_USEC: newer systemd (253+, Type=notify-reload) wants it with RELOADING=1.
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the configuration",
             static_cast<unsigned long long>(now.tv_sec) * 1'000'000ULL +
                 static_cast<unsigned long long>(now.tv_nsec) / 1000ULL);
  try {
    const server_options next = resolve(f, app);
    const auto fixed = srv.reload(next);
    if (!fixed.empty()) {
      std::string keys;
      for (const auto& k : fixed) keys += (keys.empty() ? "" : ", ") + k;
      spdlog::error(
          "SIGHUP: {} cannot change while keywayd runs; restart it to apply. The running "
          "configuration "
          "is unchanged",
          keys);
    } else {
      spdlog::set_level(spdlog::level::from_str(next.log_level));
      spdlog::info("SIGHUP: reloaded {} (log level, limits and auth tokens apply now)", f.config);
    }
  } catch (const std::exception& e) {
    spdlog::error("SIGHUP: {} was not reloaded; the running configuration is unchanged:", f.config);
    log_problems(e.what());
  }
  sd_notify(0, "READY=1\nSTATUS=serving");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keywayd: thread-per-core keyed message router"};
  flags f;
  app.add_option("--config", f.config, "TOML config file (see config/keyway.toml)");
  app.add_flag("--check-config", f.check_config,
               "validate the configuration and exit (0 when valid)");
  app.add_option("--listen", f.listen,
                 "tcp://HOST:PORT or unix:///path (repeatable; default tcp://127.0.0.1:7400)");
  app.add_option("--admin", f.admin,
                 "admin HTTP HOST:PORT (default 127.0.0.1:7401); off disables it");
  app.add_option("--workers", f.workers, "worker threads (default: one per CPU)");
  app.add_option("--log-level", f.log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--log-format", f.log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_option("--partitioner", f.partitioner,
                 "consistent, hash, round_robin, or range (with routing.split_points in --config)")
      ->check(CLI::IsMember({"consistent", "hash", "round_robin", "range"}));
  app.add_option("--max-payload", f.max_payload, "largest payload in bytes (default 1 MiB)");
  app.add_option("--max-pending-bytes", f.max_pending_bytes,
                 "outbound bytes queued per connection");
  app.add_option("--max-subscriptions", f.max_subscriptions, "subscriptions per connection");
  app.add_option("--max-connections", f.max_connections, "connections in all");
  app.add_option("--slow-consumer", f.slow_consumer, "disconnect or drop")
      ->check(CLI::IsMember({"disconnect", "drop"}));
  app.add_option(
      "--slow-consumer-grace", f.slow_consumer_grace,
      "time a connection may stay over --max-pending-bytes before the policy applies (default 5s)");
  app.add_option("--handshake-timeout", f.handshake, "time allowed for hello (default 5s)");
  app.add_option("--idle-timeout", f.idle, "close connections silent this long (default 0: never)");
  app.add_option("--drain-timeout", f.drain, "time allowed to flush on SIGTERM (default 10s)");
  app.add_option("--lame-duck-grace", f.lame_duck_grace,
                 "on SIGTERM, time clients are served after being told to reconnect elsewhere "
                 "(default 500ms)");
  app.add_option(
      "--advertise", f.advertise,
      "a client URL of this deployment for welcome.connectUrls: tcp://HOST:PORT or unix:///path "
      "(repeatable; replaces server.advertise)");
  app.add_option("--tokens-file", f.tokens_file, "auth tokens, one per line (default: no auth)");
  app.add_flag("--version", f.version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // app.exit prints --help (code 0) or CLI11's message for a usage error;
    // every usage error exits 2, like a configuration keywayd refuses.
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (f.version) {
    std::printf("keywayd %s\n", KEYWAY_VERSION);
    return 0;
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("keywayd"));
  server_options opt;
  try {
    opt = resolve(f, app);
  } catch (const std::exception& e) {
    log_problems(e.what());
    return 2;
  }
  if (f.check_config) {
    std::printf("%s: configuration is valid\n",
                f.config.empty() ? "built-in defaults" : f.config.c_str());
    return 0;
  }
  if (opt.cluster) {
    // Settings that cannot be worked out are a configuration error (exit 2);
    // etcd's answer comes when the server joins (exit 1).
    if (auto membership = keyway::daemon::membership_config_of(opt); !membership) {
      spdlog::critical("{}", membership.error());
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::from_str(opt.log_level));
  set_log_format(opt.log_fmt);

  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context main_io;
  asio::signal_set signals(main_io, SIGINT, SIGTERM, SIGHUP);
  const auto admin_listen = opt.admin;
  const std::size_t admin_connections = opt.admin_max_connections;
  keyway::daemon::server srv(std::move(opt));
  keyway::daemon::admin_service admin(srv, admin_listen, admin_connections);
  try {
    srv.start();
    admin.start();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  spdlog::info("keywayd {} started: {} workers, server id {}", KEYWAY_VERSION,
               srv.context().workers, srv.context().server_id);
  std::string where;
  for (const auto& a : srv.addresses()) where += (where.empty() ? "" : " ") + a;
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s with %zu workers", where.c_str(),
             srv.context().workers);

  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](std::error_code ec, int signo) {
      if (ec) return;
      if (signo == SIGHUP) {
        reload(srv, f, app);
        wait_signal();
        return;
      }
      spdlog::info("received {}; draining", signo == SIGTERM ? "SIGTERM" : "SIGINT");
      sd_notify(0, "STOPPING=1\nSTATUS=draining");
      srv.drain_and_stop();
      admin.stop();
    });
  };
  wait_signal();
  main_io.run();
  return 0;
}
