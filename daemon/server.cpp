#include "daemon/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/ip/address.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <thread>

namespace keyway::daemon {

std::string make_server_id() {
  std::random_device rd;
  const std::uint64_t v = (std::uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

server::server(server_options opt) {
  ctx_.options = std::move(opt);
  ctx_.server_id = make_server_id();
}

server::~server() {
  if (pool_) pool_->stop();
  for (const auto& p : unix_paths_) ::unlink(p.c_str());
}

void server::start() {
  const server_options& o = ctx_.options;
  core::pool_options po;
  po.workers = o.workers;
  po.cpus = o.cpus;
  auto pool = core::worker_pool::create(po);
  if (!pool)
    throw std::runtime_error("cannot plan workers: " + pool.error().message() +
                             " (check server.workers and server.cpus against the CPUs this process may use)");
  pool_ = std::move(*pool);
  ctx_.workers = pool_->size();
  ctx_.mesh = std::make_unique<core::mesh<route_msg>>(ctx_.workers, o.ring_capacity);
  for (std::size_t i = 0; i < ctx_.workers; ++i) ctx_.stats.push_back(std::make_unique<daemon_stats>());
  if (o.partitioner == core::partition_strategy::round_robin)
    spdlog::warn("routing.partitioner = round_robin gives up key affinity: messages of one key may be ordered by "
                 "different cores, so per-key order no longer holds");
  bind_listeners();
  auto started = pool_->start(
      [this](core::worker& w) { return std::make_unique<router>(w, ctx_); },
      [](const core::worker& w, std::string_view what) { spdlog::error("worker {}: {}", w.id(), what); });
  if (!started) throw std::runtime_error("a worker failed to start");
  spdlog::info("keywayd {} started: {} workers, server id {}", KEYWAY_VERSION, ctx_.workers, ctx_.server_id);
}

void server::bind_listeners() {
  asio::io_context& io0 = pool_->at(0).io();
  for (const listen_address& a : ctx_.options.listen) {
    std::error_code ec;
    if (a.type == listen_address::kind::tcp) {
      auto addr = asio::ip::make_address(a.host, ec);
      if (ec) throw std::runtime_error("listen " + a.to_string() + ": '" + a.host + "' is not an IP address");
      auto acc = std::make_unique<asio::ip::tcp::acceptor>(io0);
      asio::ip::tcp::endpoint ep(addr, a.port);
      acc->open(ep.protocol(), ec);
      if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) acc->bind(ep, ec);
      if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) throw std::runtime_error("cannot listen on " + a.to_string() + ": " + ec.message());
      listen_address bound = a;
      bound.port = acc->local_endpoint().port();
      addresses_.push_back(bound.to_string());
      ctx_.tcp_acceptors.push_back(std::move(acc));
    } else {
      const std::filesystem::path p(a.path);
      if (!std::filesystem::is_directory(p.parent_path(), ec))
        throw std::runtime_error("cannot listen on " + a.to_string() + ": directory " + p.parent_path().string() +
                                 " does not exist");
      struct stat st {};
      if (::lstat(a.path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
          throw std::runtime_error("cannot listen on " + a.to_string() + ": the path exists and is not a socket");
        ::unlink(a.path.c_str());  // a stale socket from an earlier run
      }
      auto acc = std::make_unique<asio::local::stream_protocol::acceptor>(io0);
      asio::local::stream_protocol::endpoint ep(a.path);
      acc->open(ep.protocol(), ec);
      if (!ec) acc->bind(ep, ec);
      if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) throw std::runtime_error("cannot listen on " + a.to_string() + ": " + ec.message());
      ::chmod(a.path.c_str(), ctx_.options.unix_socket_mode);
      unix_paths_.push_back(a.path);
      addresses_.push_back(a.to_string());
      ctx_.unix_acceptors.push_back(std::move(acc));
    }
    spdlog::info("listening on {}", addresses_.back());
  }
}

bool server::quiescent() const {
  std::uint64_t sent = 0, received = 0;
  for (std::size_t i = 0; i < ctx_.workers; ++i) {
    const core::worker& w = pool_->at(i);
    if (!w.sleeping()) return false;
    sent += w.stats().mesh_sent.get();
    received += w.stats().mesh_received.get();
    if (ctx_.stats[i]->pending_out_bytes.get() != 0) return false;
  }
  return sent == received;
}

bool server::drain_and_stop() {
  using namespace std::chrono_literals;
  ctx_.draining.store(true, std::memory_order_relaxed);
  for (std::size_t i = 0; i < ctx_.workers; ++i) pool_->at(i).wake();
  spdlog::info("draining: stopped accepting and reading; flushing queued messages (up to {} ms)",
               ctx_.options.drain_timeout.count());
  const auto deadline = std::chrono::steady_clock::now() + ctx_.options.drain_timeout;
  bool done = false;
  int quiet_checks = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    // Two consecutive quiet observations, so that a message in flight between
    // two workers cannot slip between the reads of their counters.
    quiet_checks = quiescent() ? quiet_checks + 1 : 0;
    if (quiet_checks >= 2) {
      done = true;
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  if (!done) spdlog::warn("drain timeout after {} ms: closing with messages still queued", ctx_.options.drain_timeout.count());
  pool_->stop();
  spdlog::info("stopped");
  return done;
}

}  // namespace keyway::daemon
