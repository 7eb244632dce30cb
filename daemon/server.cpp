#include "daemon/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <asio/ip/address.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <thread>

#include "config/keys.hpp"
#include "daemon/auth.hpp"
#include "daemon/fd_limit.hpp"

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
  if (cluster_) cluster_->leave();
  // The sockets live on worker 0's io_context, which goes with pool_ (declared
  // after ctx_, so destroyed first): close them while it is there, also when
  // start() failed before the workers ran.
  ctx_.tcp_acceptors.clear();
  ctx_.unix_acceptors.clear();
  ctx_.peer_acceptor.reset();
  for (const auto& p : unix_paths_) ::unlink(p.c_str());
}

void server::start() {
  const server_options& o = ctx_.options;
  core::pool_options po;
  po.workers = o.workers;
  po.cpus = o.cpus;
  auto pool = core::worker_pool::create(po);
  if (!pool)
    throw std::runtime_error(
        "cannot plan workers: " + pool.error().message() +
        " (check server.workers and server.cpus against the CPUs this process may use)");
  pool_ = std::move(*pool);
  ctx_.workers = pool_->size();
  if (ctx_.workers > max_workers)
    throw std::runtime_error(
        "server.workers = " + std::to_string(ctx_.workers) + ": at most " +
        std::to_string(max_workers) +
        " workers (a subscription id keeps its worker in 8 bits); lower server.workers or list "
        "fewer server.cpus");
  fds_ = raise_fd_limit();
  if (fds_.soft != fds_.was)
    spdlog::info("raised the file-descriptor limit (RLIMIT_NOFILE) from {} to {}", fds_.was,
                 fds_.soft);
  resolve_connection_limit(ctx_.options);
  for (std::size_t i = 0; i < ctx_.workers; ++i)
    ctx_.pools.push_back(std::make_unique<core::block_pool>());
  ctx_.mesh = std::make_unique<core::mesh<route_msg>>(ctx_.workers, o.ring_capacity);
  for (std::size_t i = 0; i < ctx_.workers; ++i) ctx_.stats.push_back(std::make_unique<probe>());
  if (o.partitioner == core::partition_strategy::round_robin)
    spdlog::warn(
        "routing.partitioner = round_robin gives up key affinity: messages of one key may be "
        "ordered by "
        "different cores, so per-key order no longer holds");
  if (!o.tokens_file.empty())
    ctx_.tokens = std::make_shared<const std::vector<std::string>>(load_tokens(o.tokens_file));
  bind_listeners();
  if (o.cluster) join_cluster();
  routers_.assign(ctx_.workers, nullptr);
  auto started = pool_->start(
      [this](core::worker& w) {
        auto r = std::make_unique<router>(w, ctx_);
        routers_[w.id()] = r.get();  // each worker writes its own slot; start() latches
        return r;
      },
      [](const core::worker& w, std::string_view what) {
        spdlog::error("worker {}: {}", w.id(), what);
      });
  if (!started) throw std::runtime_error("a worker failed to start");
  workers_started_.store(true, std::memory_order_release);
  applied_ = ctx_.options;
  progress_ = std::make_unique<core::progress_monitor>(*pool_);
  started_at_ = std::chrono::steady_clock::now();
  phase_.store(phase::serving, std::memory_order_release);
}

void server::join_cluster() {
  auto cfg = membership_config_of(ctx_.options);
  if (!cfg) throw std::runtime_error(cfg.error());
  ctx_.peer_acceptor = std::make_unique<asio::ip::tcp::acceptor>(pool_->at(0).io());
  open_tcp_acceptor(*ctx_.peer_acceptor, ctx_.options.cluster->peer_listen, "cluster.peer_listen");
  cluster_ = std::make_unique<cluster_node>(*cfg, static_cast<std::uint32_t>(ctx_.workers), [this] {
    if (!workers_started_.load(std::memory_order_acquire)) return;
    for (std::size_t i = 0; i < ctx_.workers; ++i) pool_->at(i).wake();
  });
  if (auto joined = cluster_->join(); !joined) {
    cluster_.reset();
    throw std::runtime_error(joined.error());
  }
  ctx_.cluster = cluster_.get();
}

void server::resolve_connection_limit(server_options& o) const {
  std::string why;
  const bool derived = o.max_connections == 0;
  o.max_connections = effective_max_connections(o, ctx_.workers, fds_, why);
  if (why.empty()) return;
  if (derived)
    spdlog::info("{}", why);
  else
    spdlog::warn("{}", why);
}

void server::check_progress() {
  if (progress_) progress_->check();
}

std::vector<std::uint32_t> server::stalled_workers() const {
  return progress_ ? progress_->stalled() : std::vector<std::uint32_t>{};
}

std::vector<std::string> server::reload(const server_options& next) {
  // The restart-only keys come from the key table (config/keys.hpp), so a new key
  // cannot silently default to live reload.
  const std::vector<std::string> fixed = config::restart_keys_changed(applied_, next);
  if (!fixed.empty()) return fixed;

  server_options resolved = next;
  resolve_connection_limit(resolved);
  auto tokens =
      next.tokens_file.empty()
          ? std::make_shared<const std::vector<std::string>>()
          : std::make_shared<const std::vector<std::string>>(load_tokens(next.tokens_file));
  for (std::uint32_t i = 0; i < ctx_.workers; ++i) {
    router* r = routers_[i];
    asio::post(pool_->at(i).io(), [r, next = resolved, tokens] { r->apply(next, tokens); });
    pool_->at(i).wake();
  }
  applied_ = resolved;
  return {};
}

void open_tcp_acceptor(asio::ip::tcp::acceptor& acc, const listen_address& a,
                       std::string_view what) {
  std::error_code ec;
  const auto addr = asio::ip::make_address(a.host, ec);
  if (ec)
    throw std::runtime_error(std::string(what) + " " + a.to_string() + ": '" + a.host +
                             "' is not an IP address");
  const asio::ip::tcp::endpoint ep(addr, a.port);
  acc.open(ep.protocol(), ec);
  if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(ep, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error(std::string(what) + ": cannot listen on " + a.to_string() + ": " +
                             ec.message());
}

bool server::adopt_activated_sockets(asio::io_context& io0) {
  // Socket activation: systemd passes listening sockets as fds 3.. with
  // LISTEN_FDS/LISTEN_PID; they replace the configured listeners.
  const int n = sd_listen_fds(1);
  if (n < 0) throw std::runtime_error(std::string("sd_listen_fds: ") + std::strerror(-n));
  if (n == 0) return false;
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
    std::error_code ec;
    if (sd_is_socket(fd, AF_UNIX, SOCK_STREAM, 1) > 0) {
      sockaddr_un sa{};
      socklen_t len = sizeof sa;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
      auto acc = std::make_unique<asio::local::stream_protocol::acceptor>(io0);
      acc->assign(asio::local::stream_protocol(), fd, ec);
      if (ec)
        throw std::runtime_error("cannot adopt socket fd " + std::to_string(fd) + ": " +
                                 ec.message());
      addresses_.push_back("unix://" + std::string(sa.sun_path));
      ctx_.unix_acceptors.push_back(std::move(acc));
    } else if (sd_is_socket(fd, AF_INET, SOCK_STREAM, 1) > 0 ||
               sd_is_socket(fd, AF_INET6, SOCK_STREAM, 1) > 0) {
      const bool v6 = sd_is_socket(fd, AF_INET6, SOCK_STREAM, 1) > 0;
      auto acc = std::make_unique<asio::ip::tcp::acceptor>(io0);
      acc->assign(v6 ? asio::ip::tcp::v6() : asio::ip::tcp::v4(), fd, ec);
      if (ec)
        throw std::runtime_error("cannot adopt socket fd " + std::to_string(fd) + ": " +
                                 ec.message());
      const auto ep = acc->local_endpoint();
      const std::string host = v6 ? "[" + ep.address().to_string() + "]" : ep.address().to_string();
      addresses_.push_back("tcp://" + host + ":" + std::to_string(ep.port()));
      ctx_.tcp_acceptors.push_back(std::move(acc));
    } else {
      throw std::runtime_error(
          "socket activation: fd " + std::to_string(fd) +
          " is not a listening TCP or Unix stream socket; check the .socket unit");
    }
    spdlog::info("listening on {} (from systemd)", addresses_.back());
  }
  return true;
}

void server::bind_listeners() {
  asio::io_context& io0 = pool_->at(0).io();
  if (adopt_activated_sockets(io0)) return;
  for (const listen_address& a : ctx_.options.listen) {
    std::error_code ec;
    if (a.type == listen_address::kind::tcp) {
      auto acc = std::make_unique<asio::ip::tcp::acceptor>(io0);
      open_tcp_acceptor(*acc, a, "listen");
      listen_address bound = a;
      bound.port = acc->local_endpoint().port();
      addresses_.push_back(bound.to_string());
      ctx_.tcp_acceptors.push_back(std::move(acc));
    } else {
      const std::filesystem::path p(a.path);
      if (!std::filesystem::is_directory(p.parent_path(), ec))
        throw std::runtime_error("cannot listen on " + a.to_string() + ": directory " +
                                 p.parent_path().string() + " does not exist");
      struct stat st {};
      if (::lstat(a.path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
          throw std::runtime_error("cannot listen on " + a.to_string() +
                                   ": the path exists and is not a socket");
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
    if (ctx_.stats[i]->pending_out_bytes() != 0) return false;
  }
  return sent == received;
}

std::uint64_t server::client_connections() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < ctx_.workers; ++i) n += ctx_.stats[i]->open_connections();
  return n;
}

void server::lame_duck() {
  using namespace std::chrono_literals;
  const auto grace = ctx_.options.lame_duck_grace;
  ctx_.lame_duck.store(true, std::memory_order_relaxed);
  for (std::size_t i = 0; i < ctx_.workers; ++i) pool_->at(i).wake();
  spdlog::info(
      "lame duck: accepting no more connections; telling {} clients to reconnect elsewhere and "
      "serving "
      "them for up to {} ms (server.lame_duck_grace), less once they have left",
      client_connections(), grace.count());
  // Each worker tells its clients within a loop turn; the grace counts from
  // there. A worker that does not answer in a second is stuck: go on, the
  // drain has its own deadline.
  const auto told_by = std::chrono::steady_clock::now() + 1s;
  while (ctx_.announced.load(std::memory_order_acquire) < ctx_.workers &&
         std::chrono::steady_clock::now() < told_by)
    std::this_thread::sleep_for(1ms);
  if (ctx_.announced.load(std::memory_order_acquire) < ctx_.workers)
    spdlog::warn("lame duck: {} of {} workers told their clients within 1 s; draining anyway",
                 ctx_.announced.load(std::memory_order_acquire), ctx_.workers);
  // Serve on while clients move away; no point waiting once all of them have.
  const auto grace_end = std::chrono::steady_clock::now() + grace;
  for (auto now = std::chrono::steady_clock::now(); now < grace_end && client_connections() > 0;
       now = std::chrono::steady_clock::now())
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(5ms, grace_end - now));
}

bool server::drain_and_stop() {
  using namespace std::chrono_literals;
  phase_.store(phase::draining, std::memory_order_release);
  // A cluster node leaves the ring first and waits until its keys were handed
  // off (every message it ordered was taken in by the subscribers' workers);
  // then its clients are told to go.
  if (cluster_) {
    cluster_->set_draining();
    if (!cluster_->wait_handed_off(cluster_->handoff_timeout()))
      spdlog::warn("draining: the hand-off of this node's keys did not finish within {} ms",
                   cluster_->handoff_timeout().count());
  }
  lame_duck();
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
  if (!done)
    spdlog::warn("drain timeout after {} ms: closing with messages still queued",
                 ctx_.options.drain_timeout.count());
  pool_->stop();
  if (cluster_) cluster_->leave();
  phase_.store(phase::stopped, std::memory_order_release);
  spdlog::info("stopped");
  return done;
}

}  // namespace keyway::daemon
