// keywayd: the Keyway daemon. Parses the command line, starts the server, and
// waits for SIGTERM/SIGINT to drain and exit 0.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "daemon/server.hpp"

namespace {

using keyway::daemon::server_options;

std::chrono::milliseconds parse_duration(const std::string& flag, const std::string& text) {
  // 250ms, 5s, 2m, or a bare number of milliseconds.
  std::size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
  }
  const std::string unit = text.substr(used);
  if (v < 0 || (unit != "" && unit != "ms" && unit != "s" && unit != "m"))
    throw CLI::ValidationError(flag, "'" + text + "' is not a duration; use e.g. 500ms, 5s or 2m");
  if (unit == "s") return std::chrono::seconds(v);
  if (unit == "m") return std::chrono::minutes(v);
  return std::chrono::milliseconds(v);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keywayd: thread-per-core keyed message router"};
  server_options opt;
  std::vector<std::string> listen;
  std::string config, partitioner = "consistent", slow_consumer = "disconnect", handshake, drain;
  std::uint32_t max_payload = 0;
  bool version = false;
  app.add_option("--config", config, "TOML config file");
  app.add_option("--listen", listen, "tcp://HOST:PORT or unix:///path (repeatable; default tcp://127.0.0.1:7400)");
  app.add_option("--workers", opt.workers, "worker threads (default: one per CPU)");
  app.add_option("--log-level", opt.log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--partitioner", partitioner, "consistent, hash or round_robin")
      ->check(CLI::IsMember({"consistent", "hash", "round_robin"}));
  app.add_option("--max-payload", max_payload, "largest payload in bytes (default 1 MiB)");
  app.add_option("--max-pending-bytes", opt.max_pending_bytes, "outbound bytes queued per connection");
  app.add_option("--max-subscriptions", opt.max_subscriptions, "subscriptions per connection");
  app.add_option("--max-connections", opt.max_connections, "connections in all");
  app.add_option("--slow-consumer", slow_consumer, "disconnect or drop")
      ->check(CLI::IsMember({"disconnect", "drop"}));
  app.add_option("--handshake-timeout", handshake, "time allowed for hello (default 5s)");
  app.add_option("--drain-timeout", drain, "time allowed to flush on SIGTERM (default 10s)");
  app.add_flag("--version", version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("keywayd %s\n", KEYWAY_VERSION);
    return 0;
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("keywayd"));
  spdlog::set_level(spdlog::level::from_str(opt.log_level));
  try {
    if (!config.empty())
      throw std::runtime_error("--config " + config +
                               ": TOML configuration is not implemented in this build yet; use command-line flags");
    if (!listen.empty()) {
      opt.listen.clear();
      for (const auto& url : listen) opt.listen.push_back(keyway::daemon::parse_listen_url(url));
    }
    opt.partitioner = *keyway::core::parse_partition_strategy(partitioner);
    opt.slow_consumer = slow_consumer == "drop" ? keyway::daemon::slow_consumer_policy::drop
                                                : keyway::daemon::slow_consumer_policy::disconnect;
    if (max_payload != 0) opt.limits = keyway::proto::limits::with_max_payload(max_payload);
    if (!handshake.empty()) opt.handshake_timeout = parse_duration("--handshake-timeout", handshake);
    if (!drain.empty()) opt.drain_timeout = parse_duration("--drain-timeout", drain);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 2;
  }

  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context main_io;
  asio::signal_set signals(main_io, SIGINT, SIGTERM);
  keyway::daemon::server srv(std::move(opt));
  try {
    srv.start();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  int exit_code = 0;
  signals.async_wait([&](std::error_code ec, int signo) {
    if (ec) return;
    spdlog::info("received {}; draining", signo == SIGTERM ? "SIGTERM" : "SIGINT");
    srv.drain_and_stop();
    exit_code = 0;
  });
  main_io.run();
  return exit_code;
}
