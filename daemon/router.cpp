#include "daemon/router.hpp"

#include "core/assert.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/overloaded.hpp"
#include "daemon/cluster_node.hpp"
#include "daemon/connection.hpp"

namespace keyway::daemon {

namespace {
using core::overloaded;

index_limits index_limits_of(const server_options& o) {
  index_limits l;
  l.group_slots = worker_services::group_slots;
  l.max_group_members = o.max_queue_group_members;
  l.max_pattern_shapes = o.max_pattern_shapes;
  return l;
}

std::unique_ptr<core::partitioner> worker_partitioner(const server_context& ctx) {
  auto p = core::make_partitioner(ctx.options.partitioner, ctx.options.partition);
  if (!p) throw std::runtime_error("cannot build the worker partitioner: " + p.error().message());
  for (std::uint32_t i = 0; i < ctx.workers; ++i) {
    auto added = (*p)->add(i);
    if (!added)
      throw std::runtime_error("cannot add worker to partitioner: " + added.error().message());
  }
  return std::move(*p);
}
}  // namespace

router::router(core::worker& w, server_context& ctx)
    : worker_services(w, ctx.server_id, static_cast<std::uint32_t>(ctx.workers), ctx.draining,
                      *ctx.pools[w.id()], *ctx.stats[w.id()], ctx.options, ctx.tokens,
                      worker_partitioner(ctx)),
      ctx_(ctx),
      ep_(ctx.mesh->at(w.id())),
      index_(index_limits_of(ctx.options)),
      per_worker_(ctx.workers),
      accept_timer_(w.io()) {
  next_conn_ = std::uint64_t{w.id()} << 48;
  core_stamp_ = ctx.cluster ? (ctx.cluster->tag() << 8) | w.id() : w.id();
}

router::~router() = default;

void router::apply(const server_options& next,
                   std::shared_ptr<const std::vector<std::string>> tokens) {
  KEYWAY_ASSERT_OWNER(w_);
  live_ = next;
  tokens_ = std::move(tokens);
  if (!ctx_.cluster) connect_urls_ = live_.advertise;  // a cluster's come from its members
  index_.set_limits(index_limits_of(live_));
  // The encoder only grows: a message accepted under the old, larger
  // limits.max_frame may still be waiting for delivery, and must encode.
  if (live_.limits.max_frame > encoder_->max_frame())
    encoder_ = std::make_unique<proto::encoder>(live_.limits);
}

void router::init() {
  pool_.bind_to_this_thread();
  index_.bind_owner();
  ep_.attach(w_, w_.stats());
  if (ctx_.cluster) {
    refresh_cluster();
    if (w_.id() == 0) start_peer_listener();
  }
  if (w_.id() == 0) start_accepting();
}

std::size_t router::poll() {
  KEYWAY_ASSERT_OWNER(w_);
  turn_ns_ = 0;
  // Lame duck first: clients hear `draining` before anything stops. (draining
  // is set after lame_duck; either one means the announcement is due.)
  if (!announced_ && (ctx_.lame_duck.load(std::memory_order_relaxed) || draining()))
    announce_draining();
  if (draining() && !drain_started_) start_drain();
  if (ctx_.cluster) {
    if (ctx_.cluster->generation() != map_generation_) refresh_cluster();
    if (!transitions_.empty() || !handoffs_.empty()) expire_handoffs();
  }
  // A publish or delivery from the other worker carries a message that CPU
  // wrote: start fetching it a few messages before dispatch reads it, so the
  // cross-CPU line transfer overlaps the dispatch of the messages before it
  // (measured in bench/log/2026-12-04-e2e-cross-cpu-and-request-reply.md).
  const std::size_t n = ep_.drain([this](route_msg& m) { dispatch(m); },
                                  [](route_msg& m) noexcept {
                                    if (const auto* d = std::get_if<deliver_op>(&m))
                                      d->msg->prefetch();
                                    else if (const auto* p = std::get_if<publish_op>(&m))
                                      p->msg->prefetch();
                                  });
  if (!paused_.empty()) resume_paused();
  return n;
}

void router::flush() {
  KEYWAY_ASSERT_OWNER(w_);
  // Deliveries to other nodes go out before this turn's acks do, so that an
  // ack rarely precedes the copies it vouches for (a crash in between loses them).
  if (ctx_.cluster) {
    for (std::uint32_t node = 1; node < peers_.size(); ++node) send_batch(node);
    note_link_queues();
  }
  // Writing may close connections (a fatal error was queued), which may
  // append to dirty_ again via closed(); iterate by index.
  for (std::size_t i = 0; i < dirty_.size(); ++i) dirty_[i]->flush();
  dirty_.clear();
  graveyard_.clear();
  ep_.flush();
  turn_ns_ = 0;
  if (draining()) {
    // The drain waits for this to reach 0 on every worker. O(connections),
    // so only while draining.
    std::uint64_t pending = 0;
    for (auto& [id, c] : conns_) pending += c->pending_bytes();
    probe_.pending_out(pending);
  }
}

bool router::has_work() {
  KEYWAY_ASSERT_OWNER(w_);
  return ep_.has_work() || !dirty_.empty();
}

void router::shutdown() {
  KEYWAY_ASSERT_OWNER(w_);
  close_acceptors();
  stop_cluster();
  std::vector<std::shared_ptr<connection>> all;
  for (auto& [id, c] : conns_) all.push_back(c);
  for (auto& c : all) c->abort();
  conns_.clear();
  dirty_.clear();
  paused_.clear();
  graveyard_.clear();
}

void router::on_error(std::string_view what) {
  KEYWAY_ASSERT_OWNER(w_);
  spdlog::error("worker {}: handler failed: {}", w_.id(), what);
}

bool router::has_interest(std::string_view subject) {
  KEYWAY_ASSERT_OWNER(w_);
  return index_.any_match(subject);
}

std::optional<std::uint32_t> router::route(publish_op& op, std::uint32_t owner) {
  KEYWAY_ASSERT_OWNER(w_);
  if (ctx_.cluster) {
    // Cut off from etcd and a peer: hold every publish (the publisher waits).
    if (!ctx_.cluster->may_order(turn_ns(1))) return std::nullopt;
    const auto key = op.msg->routing_key();
    const std::uint32_t node = map_->owner({reinterpret_cast<const char*>(key.data()), key.size()});
    op.epoch = map_->epoch;
    if (!transitions_.empty() && held(key)) return std::nullopt;
    if (node != 0) {
      if (forward(op, node)) return node;
      if (!unreachable(node,
                       std::chrono::steady_clock::time_point(std::chrono::nanoseconds(turn_ns(1)))))
        return std::nullopt;  // the publisher waits for the link
      refuse_unreachable(op, node);
      return node;
    }
  }
  if (owner == w_.id()) {
    if (ep_.backlogged()) return std::nullopt;  // see core/mesh.hpp: backlog feeds back into credit
    on_publish(op);
    return 0;
  }
  // try_send leaves a refused message untouched: hand the publish back to the
  // caller, who keeps it until credit returns.
  route_msg m(std::move(op));
  if (ep_.try_send(owner, std::move(m))) return 0;
  op = std::move(std::get<publish_op>(m));
  return std::nullopt;
}

void router::dispatch(route_msg& m) {
  std::visit(overloaded{
                 [this](publish_op& op) { on_publish(op); },
                 [this](deliver_op& op) { on_deliver(op); },
                 [this](reply_op& op) { on_reply(op); },
                 [this](sub_change_op& op) { on_sub_change(op); },
                 [this](sub_applied_op& op) { on_sub_applied(op); },
                 [this](adopt_op& op) { on_adopt(op); },
                 [this](conn_closed_op&) { on_conn_closed(); },
                 [this](throttle_op& op) {
                   if (connection* c = find_conn(op.conn)) c->throttle(op.on);
                 },
                 [this](barrier_op& op) { on_barrier(op); },
                 [this](fence_op& op) { on_fence(op); },
             },
             m);
}

void router::barrier(std::uint32_t owner, std::uint64_t conn, std::uint64_t round) {
  KEYWAY_ASSERT_OWNER(w_);
  // send(), not try_send(): a barrier only has to follow publishes the owner
  // already took (staged or in the ring before it), and a ping must not pause
  // its connection, so it is never refused for credit. There is at most one
  // per owner per ping, and only to an owner sent a publish since the last
  // one: barriers never outnumber the publishes that credit let through.
  ep_.send(owner, route_msg(barrier_op{conn, round, false}));
}

void router::on_barrier(const barrier_op& op) {
  if (!op.answer) {
    // Everything the connection sent here before the barrier was routed (one
    // FIFO ring), and what that produced for its worker is staged there
    // (deliveries, acks): the answer goes behind it on our FIFO ring back.
    // Another node's barrier: to worker 0, which answers that node.
    ep_.send(op.node != 0 ? 0 : worker_of_conn(op.conn),
             route_msg(barrier_op{op.conn, op.round, true, op.node}));
    return;
  }
  if (op.node != 0) return remote_barrier_answered(op);
  if (op.answered_by != 0) {
    auto& pending = node_barriers_[op.answered_by];
    const auto it = std::find(pending.begin(), pending.end(), std::make_pair(op.conn, op.round));
    if (it != pending.end()) pending.erase(it);
  }
  // A connection closed meanwhile is gone from conns_: the answer is dropped.
  if (connection* c = find_conn(op.conn)) c->barrier_done(op.round);
}

void router::on_publish(publish_op& op) {
  const shared_message& msg = *op.msg;
  const std::uint64_t seq = ++seq_;
  probe_.routed();
  matches_.clear();
  index_.match(msg.subject(), msg.routing_key(), matches_);
  std::uint32_t last = 0;  // the last worker with targets
  bool remote = false;
  for (const sub_ref& r : matches_) {
    if (r.worker >= remote_worker_base) {
      // Worker 0 may have added this node's subscriptions by a newer cluster
      // map than this worker has seen yet.
      const std::uint32_t node = r.worker - remote_worker_base;
      if (node >= per_node_.size()) per_node_.resize(node + 1);
      per_node_[node].push_back({r.conn, r.sid});
      remote = true;
      continue;
    }
    per_worker_[r.worker].push_back({r.conn, r.sid});
    last = std::max(last, r.worker);
  }
  // Other nodes first: the last local delivery may take the publish's reference.
  if (remote) deliver_remote(msg, seq, op.epoch);

  const auto delivered = static_cast<std::uint32_t>(matches_.size());
  const bool wants_reply = op.ack_id != 0 || (delivered == 0 && !msg.reply_to().empty());
  const std::uint32_t self = w_.id();
  for (std::uint32_t wid = 0; wid < ctx_.workers; ++wid) {
    auto& targets = per_worker_[wid];
    if (targets.empty()) continue;
    // The last delivery takes the publish's reference unless a reply needs it:
    // an increment here and the publish's decrement are each a locked
    // read-modify-write on a line the ingress worker wrote (perf: the largest
    // stall in this function).
    deliver_op d{wid == last && !wants_reply ? std::move(op.msg) : op.msg,
                 seq,
                 core_stamp_,
                 targets.front(),
                 {},
                 op.conn};
    if (targets.size() > 1) d.more = target_list(pool_, std::span(targets).subspan(1));
    targets.clear();
    if (wid == self)
      on_deliver(d);
    else
      ep_.send(wid, route_msg(std::move(d)));
  }

  if (!wants_reply) return;
  if (op.origin != 0) return reply_remote(op, delivered);
  reply_op r{std::move(op.msg), op.conn, op.ack_id, delivered};
  if (op.from == self)
    on_reply(r);
  else
    ep_.send(op.from, route_msg(std::move(r)));
}

connection* router::find_conn(std::uint64_t id) noexcept {
  // Consecutive deliveries mostly go to the same connection (perf: the hash
  // lookup was 2.6 % of the delivering worker's samples on 1->1).
  if (id == last_conn_id_ && last_conn_ != nullptr) return last_conn_;
  auto it = conns_.find(id);
  if (it == conns_.end()) return nullptr;
  last_conn_id_ = id;
  last_conn_ = it->second.get();
  return last_conn_;
}

void router::on_deliver(deliver_op& op) {
  auto deliver_to = [&](const delivery_target& t) {
    connection* c = find_conn(t.conn);
    if (c == nullptr) {
      probe_.dropped(drop_reason::connection_gone);
      return;
    }
    c->deliver(*op.msg, t.sid, op.core, op.seq, op.publisher);
  };
  deliver_to(op.first);
  for (const delivery_target& t : op.more) deliver_to(t);
}

void router::on_reply(reply_op& op) {
  // An answer from another node: the publish is no longer in doubt. (One
  // already answered owner_lost, after a link flap, finds nothing here, and
  // its ack still goes out: the client ignores an ack id it no longer waits for.)
  if (op.node != 0 && op.ack_id != 0) forwarded_acks_.erase({op.node, op.conn, op.ack_id});
  connection* found = find_conn(op.conn);
  if (found == nullptr) return;
  connection& c = *found;
  if (op.refused)
    return c.send_error(proto::errc::owner_lost,
                        "the key's owner did not order the publish: " + *op.refused, op.ack_id,
                        false);
  const shared_message& msg = *op.msg;
  if (op.delivered == 0 && !msg.reply_to().empty()) {
    return c.send_no_responders(msg.subject(), msg.reply_to(), op.ack_id);
  }
  c.send_ack(op.ack_id, op.delivered);
}

std::uint32_t router::broadcast(std::vector<sub_spec> changes) {
  KEYWAY_ASSERT_OWNER(w_);
  const std::uint32_t nodes = ctx_.cluster ? send_interest(changes) : 0;
  broadcast_local(std::make_shared<const std::vector<sub_spec>>(std::move(changes)));
  return workers_ + nodes;
}

void router::broadcast_local(std::shared_ptr<const std::vector<sub_spec>> changes) {
  for (std::uint32_t wid = 0; wid < ctx_.workers; ++wid)
    ep_.send(wid, route_msg(sub_change_op{changes}));
}

void router::on_sub_change(const sub_change_op& op) {
  const std::uint32_t self = w_.id();
  // To the subscriber's worker; for another node's subscription, to worker 0,
  // which answers that node once every worker did.
  auto answer = [&](const sub_spec& s, std::shared_ptr<const std::string> refused) {
    const bool remote = s.ref.worker >= remote_worker_base;
    submit(remote ? 0 : s.ref.worker,
           route_msg(sub_applied_op{s.ref.conn, remote ? s.ref.worker - remote_worker_base : 0,
                                    s.request_id, s.ref.sid, s.ref.uid, std::move(refused)}));
  };
  for (const sub_spec& s : *op.changes) {
    if (s.add) {
      if (auto st = index_.add(s.pattern, s.group, s.ref); !st) {
        // The subscriber's worker checked against its own replica; a change
        // still in flight from another worker took the last room here.
        probe_.subscription_refused();
        answer(s, std::make_shared<const std::string>(st.message()));
        continue;
      }
    } else {
      index_.remove(s.ref.uid);
      // Every later add of this uid from the worker that allocated it (the
      // subscriber's, or worker 0 for another node's) travels behind this
      // removal on the same FIFO rings, so that worker may reuse it now.
      if ((s.ref.uid >> 24) == self) free_uid(s.ref.uid);
    }
    if (s.request_id != 0) answer(s, nullptr);
  }
}

void router::on_sub_applied(const sub_applied_op& op) {
  if (op.node != 0) return remote_sub_applied(op);
  // An answer that comes after release_interest_waits() counted it already.
  if (op.answered_by != 0 && op.request_id != 0 && !interest_answered(op)) return;
  if (connection* c = find_conn(op.conn)) c->sub_applied(op);
}

result<std::uint32_t, std::string> router::admit_subscription(std::string_view pattern,
                                                              std::string_view group,
                                                              std::uint64_t cost) {
  KEYWAY_ASSERT_OWNER(w_);
  if (auto st = index_.can_add(pattern, group); !st) return st.message();
  const std::uint64_t share = live_.max_total_subscription_bytes / workers_;
  if (sub_bytes_ + cost > share)
    return "the subscriptions of this worker's connections take " + proto::format_size(sub_bytes_) +
           " of index memory and this one needs " + proto::format_size(cost) +
           "; the worker's share of "
           "limits.max_total_subscription_bytes (" +
           proto::format_size(live_.max_total_subscription_bytes) + ") is " +
           proto::format_size(share) + "; try later or raise the limit";
  const auto uid = allocate_uid();
  if (!uid)
    return "this worker holds " + std::to_string(max_uids_per_worker) +
           " live subscriptions, the most its subscription ids can number; try later";
  sub_bytes_ += cost;
  return *uid;
}

void router::release_subscriptions(std::uint64_t cost) noexcept {
  KEYWAY_ASSERT_OWNER(w_);
  sub_bytes_ -= std::min(cost, sub_bytes_);
}

void router::throttle(std::uint64_t conn, bool on) {
  KEYWAY_ASSERT_OWNER(w_);
  if (conn == remote_publisher) return;  // another node's: not paused from here
  if (on) probe_.throttle_sent();
  submit(worker_of_conn(conn), route_msg(throttle_op{conn, on}));
}

void router::submit(std::uint32_t to, route_msg&& m) {
  if (to == w_.id())
    dispatch(m);
  else
    ep_.send(to, std::move(m));
}

std::optional<std::uint32_t> router::allocate_uid() {
  if (!free_uids_.empty()) {
    const std::uint32_t uid = free_uids_.back();
    free_uids_.pop_back();
    return uid;
  }
  if (next_uid_ == max_uids_per_worker) return std::nullopt;
  // Worker id in the top 8 bits keeps uids unique daemon-wide.
  return (w_.id() << 24) | next_uid_++;
}

void router::free_uid(std::uint32_t uid) {
  free_uids_.push_back(uid);
}

void router::flush_later(connection& c) {
  KEYWAY_ASSERT_OWNER(w_);
  dirty_.push_back(&c);
}

void router::resume_later(connection& c) {
  KEYWAY_ASSERT_OWNER(w_);
  paused_.push_back(&c);
}

void router::resume_paused() {
  // resume() reads on, and that may pause a connection again (resume_later) or
  // close one (closed): both change paused_, so walk it moved out of the way.
  // A connection closed meanwhile stays alive in graveyard_ until flush(),
  // and its resume() returns true.
  resuming_.swap(paused_);
  for (connection* c : resuming_)
    if (!c->resume()) paused_.push_back(c);
  resuming_.clear();
}

void router::closed(connection& c) {
  KEYWAY_ASSERT_OWNER(w_);
  auto it = conns_.find(c.id());
  if (it == conns_.end()) return;
  std::erase(paused_, &c);
  if (last_conn_ == it->second.get()) last_conn_ = nullptr;
  graveyard_.push_back(std::move(it->second));
  conns_.erase(it);
  probe_.connection_closed(c.unix_socket());
  submit(0, route_msg(conn_closed_op{}));
}

// ---- accepting (worker 0) ------------------------------------------------------

void router::start_accepting() {
  for (auto& a : ctx_.tcp_acceptors) accept_next(*a, false);
  for (auto& a : ctx_.unix_acceptors) accept_next(*a, true);
}

template <class Acceptor>
void router::accept_next(Acceptor& a, bool unix_socket) {
  a.async_accept(
      [this, &a, unix_socket](std::error_code ec, typename Acceptor::protocol_type::socket s) {
        if (ec == asio::error::operation_aborted || !a.is_open()) return;
        if (ec) return accept_failed(a, unix_socket, ec);
        accept_backoff_.succeeded();
        if (!unix_socket) {
          std::error_code ignored;
          s.set_option(asio::ip::tcp::no_delay(true), ignored);
        }
        hand_out(s.release(), unix_socket);
        accept_next(a, unix_socket);
      });
}

template <class Acceptor>
void router::accept_failed(Acceptor& a, bool unix_socket, std::error_code ec) {
  // See accept_backoff.hpp: never accept again at once after a failure.
  // One timer for every listener (a member: a timer owning itself through
  // its handler would outlive the io_context's shutdown).
  probe_.accept_failed();
  const auto wait = accept_backoff_.failed(ec);
  accept_retry_.push_back([this, &a, unix_socket] {
    if (a.is_open()) accept_next(a, unix_socket);
  });
  if (accept_retry_.size() > 1) return;  // the timer is armed
  accept_timer_.expires_after(wait);
  accept_timer_.async_wait([this](std::error_code e) {
    if (e) return;
    std::vector<std::function<void()>> retry;
    retry.swap(accept_retry_);
    for (auto& r : retry) r();
  });
}

void router::hand_out(int fd, bool unix_socket) {
  if (open_connections_ >= live_.max_connections || draining()) {
    // Refuse politely: a best-effort error frame, then close.
    proto::out_buffer out(512);
    const std::string why = draining() ? std::string("the server is shutting down; reconnect later")
                                       : "the server has " + std::to_string(open_connections_) +
                                             " connections, limits.max_connections is " +
                                             std::to_string(live_.max_connections) +
                                             "; try again later or raise the limit";
    (void)encoder_->error(
        out, {draining() ? proto::errc::shutting_down : proto::errc::too_many_connections,
              why,
              0,
              true,
              {}});
    const auto bytes = out.front();
    [[maybe_unused]] auto n = ::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::close(fd);
    return;
  }
  ++open_connections_;
  const std::uint32_t target = static_cast<std::uint32_t>(next_worker_++ % ctx_.workers);
  submit(target, route_msg(adopt_op{fd, unix_socket}));
}

void router::on_adopt(const adopt_op& op) {
  adopt(op.fd, op.unix_socket);
}

void router::adopt(int fd, bool unix_socket) {
  std::error_code ec;
  connection::socket_type sock(w_.io());
  if (unix_socket)
    sock.assign(asio::generic::stream_protocol(AF_UNIX, 0), fd, ec);
  else {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    sock.assign(asio::generic::stream_protocol(ss.ss_family, IPPROTO_TCP), fd, ec);
  }
  if (ec) {
    spdlog::warn("worker {}: cannot adopt socket: {}", w_.id(), ec.message());
    ::close(fd);
    submit(0, route_msg(conn_closed_op{}));
    return;
  }
  auto c = std::make_shared<connection>(*this, std::move(sock), next_conn_++, unix_socket);
  conns_.emplace(c->id(), c);
  probe_.connection_opened(unix_socket);
  if (draining()) {
    c->send_error(proto::errc::shutting_down, "the server is shutting down; reconnect later", 0,
                  true);
    return;
  }
  c->start();
}

void router::on_conn_closed() {
  KEYWAY_ASSERT(w_.id() == 0);
  if (open_connections_ > 0) --open_connections_;
}

void router::close_acceptors() {
  if (w_.id() != 0) return;  // the acceptors are worker 0's
  for (auto& a : ctx_.tcp_acceptors) a->close();
  for (auto& a : ctx_.unix_acceptors) a->close();
}

void router::announce_draining() {
  announced_ = true;
  // New clients go elsewhere from now on; the ones here are told to.
  close_acceptors();
  for (auto& [id, c] : conns_) c->send_draining();
  ctx_.announced.fetch_add(1, std::memory_order_release);
}

void router::start_drain() {
  drain_started_ = true;
  close_acceptors();
  // Connections stop reading on their own (connection::read_more checks
  // draining()); what is queued to subscribers is still written.
}

}  // namespace keyway::daemon
