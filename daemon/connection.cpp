#include "daemon/connection.hpp"

#include "core/assert.hpp"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <asio/write.hpp>

#include <algorithm>

#include "daemon/auth.hpp"
#include "daemon/worker_services.hpp"
#include "proto/validate.hpp"

namespace keyway::daemon {

namespace wire = proto::wire;

connection::connection(worker_services& w, socket_type socket, std::uint64_t id, bool unix_socket)
    : svc_(w),
      socket_(std::move(socket)),
      id_(id),
      unix_(unix_socket),
      decoder_(w.options().limits),
      batch_out_(std::min<std::size_t>(max_message_batch, w.options().limits.max_frame)),
      timer_(w.worker().io()),
      grace_timer_(w.worker().io()) {
  // Until a good hello, a hello-sized frame is all this peer may make us buffer.
  decoder_.cap_frames(
      w.options().limits.hello_frame_limit(),
      "the limit before hello (limits.max_auth_token + limits.max_client_name + 1 KiB)");
}

connection::~connection() = default;

void connection::start() {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  timer_.expires_after(svc_.options().handshake_timeout);
  timer_.async_wait([self = shared_from_this()](std::error_code ec) {
    if (ec || self->state_ != state::handshake) return;
    self->send_error(proto::errc::timeout,
                     "no hello within limits.handshake_timeout (" +
                         std::to_string(self->svc_.options().handshake_timeout.count()) +
                         " ms); send hello first",
                     0, true);
  });
  read_more();
}

void connection::arm_idle(std::chrono::steady_clock::duration after) {
  // One timer per connection, re-armed lazily: a read only stamps last_read_,
  // and the timer, when it fires, either closes or waits for the rest.
  timer_.expires_after(after);
  timer_.async_wait([self = shared_from_this()](std::error_code ec) {
    if (ec || self->state_ != state::open) return;
    const auto limit = self->svc_.options().idle_timeout;
    if (limit.count() == 0) return;  // turned off by a reload: this connection stays open
    const auto now = std::chrono::steady_clock::now();
    if (self->reading_paused() || self->svc_.draining()) {
      // The server, not the peer, is why nothing was read: waiting for credit
      // or for queued output, throttled, or draining. The quiet period starts
      // again when reading does.
      self->last_active_ = now;
      return self->arm_idle(limit);
    }
    const auto quiet = now - self->last_active_;
    if (quiet < limit) return self->arm_idle(limit - quiet);
    self->send_error(proto::errc::timeout,
                     "no frame within limits.idle_timeout (" + std::to_string(limit.count()) +
                         " ms); send ping to keep an idle connection open",
                     0, true);
  });
}

std::size_t connection::high_water() const noexcept {
  return svc_.options().max_pending_bytes / 2;
}
std::size_t connection::hard_limit() const noexcept {
  const std::uint64_t limit = svc_.options().max_pending_bytes;
  return std::max(2 * limit, limit + in_flight_allowance);
}
std::size_t connection::low_water() const noexcept {
  return svc_.options().max_pending_bytes / 4;
}

void connection::read_more() {
  if (reading_ || state_ == state::closing || state_ == state::closed || reading_paused()) return;
  if (svc_.draining()) return;
  if (pending_bytes() >= high_water()) {
    // Replies this peer does not read: stop reading it rather than queue
    // more (after_write() resumes).
    out_paused_ = true;
    svc_.stats().read_paused();
    return;
  }
  reading_ = true;
  // Memory back once reads are small again, after a burst or a large frame,
  // so an idle connection holds a small buffer (nothing is lost: shrink keeps
  // what is buffered, and only an empty buffer is shrunk here).
  const std::size_t keep = std::max(read_size_, proto::decoder::default_initial_capacity);
  if (decoder_.capacity() > 4 * keep && decoder_.buffered() == 0) (void)decoder_.shrink(keep);
  auto buf = decoder_.prepare(read_size_);
  socket_.async_read_some(
      asio::buffer(buf.data(), buf.size()),
      [self = shared_from_this()](std::error_code ec, std::size_t n) { self->on_read(ec, n); });
}

void connection::on_read(std::error_code ec, std::size_t n) {
  reading_ = false;
  if (state_ == state::closed) return;
  if (ec) {
    // EOF or reset: nothing more will come. Queued output is lost with the peer.
    abort();
    return;
  }
  if (svc_.draining()) return;  // read after the drain began: not accepted
  decoder_.commit(n);
  if (n >= read_size_ && read_size_ < max_read)
    read_size_ *= 2;
  else if (n < read_size_ / 8 && read_size_ > min_read)
    read_size_ /= 2;
  svc_.stats().bytes_read(n);
  last_read_ = std::chrono::steady_clock::now();
  last_active_ = last_read_;
  process();
}

void connection::process() {
  // A read in flight owns the decoder's free space; its on_read() processes.
  if (reading_) return;
  for (std::size_t handled = 0; state_ == state::handshake || state_ == state::open; ++handled) {
    if (reading_paused()) return;
    if (pending_bytes() >= high_water()) {
      out_paused_ = true;
      svc_.stats().read_paused();
      return;
    }
    if (handled == frames_per_call) {
      // The other connections on this worker, the mesh and the writes get
      // their turn before the rest of this read (a 64 KiB read of publishes
      // that each match many patterns could otherwise take milliseconds).
      if (!process_posted_) {
        process_posted_ = true;
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
          self->process_posted_ = false;
          self->process();
        });
      }
      return;
    }
    auto next = decoder_.next();
    if (!next) {
      send_error(decoder_.error().code(), decoder_.error().message(), 0, true);
      return;
    }
    if (!next->has_value()) break;
    svc_.stats().frame_received();
    if (!handle(**next)) return;  // paused: resume() continues from here
  }
  read_more();
}

bool connection::handle(const proto::frame& f) {
  if (state_ == state::handshake && f.which() != wire::Frame::HELLO) {
    send_error(proto::errc::protocol,
               std::string("the first frame must be hello, got ") +
                   std::string(proto::kind_name(f.which())),
               0, true);
    return true;
  }
  // A kind the agreed version lacks is refused whatever it holds.
  if (f.which() == wire::Frame::PUBLISH_BATCH && protocol_version_ < proto::batch_version) {
    send_error(proto::errc::protocol,
               "publishBatch needs protocol version " + std::to_string(proto::batch_version) +
                   "; this connection agreed on version " + std::to_string(protocol_version_) +
                   " in its hello",
               0, true);
    return true;
  }
  if (auto st = proto::validate_client_frame(f, svc_.options().limits); !st) {
    fail(st, f.publish() ? f.publish()->ack_id : proto::request_id_of(f.root()));
    return true;
  }
  switch (f.which()) {
    case wire::Frame::HELLO:
      on_hello(f.root().getHello());
      return true;
    case wire::Frame::PUBLISH:
      return on_publish(*f.publish());
    case wire::Frame::PUBLISH_BATCH: {
      const proto::publish_batch_view& b = *f.publish_batch();
      // One subject for every entry: one interest check for all of them.
      if (!admit(b.subject, b.count, false)) return true;
      batch_subject_ = b.subject;
      batch_at_ = proto::batch_cursor(b.entries);
      return publish_entries();
    }
    case wire::Frame::SUBSCRIBE:
      on_subscribe(f.root().getSubscribe());
      return true;
    case wire::Frame::UNSUBSCRIBE:
      on_unsubscribe(f.root().getUnsubscribe());
      return true;
    case wire::Frame::PING:
      on_ping(f.root().getPing().getId());
      return true;
    case wire::Frame::PONG:
      return true;
    default:
      send_error(proto::errc::protocol, "frame kind not accepted from a client", 0, true);
      return true;
  }
}

void connection::fail(const proto::status& st, std::uint64_t request_id) {
  send_error(st.code(), st.message(), request_id, proto::fatal_by_default(st.code()));
}

void connection::on_hello(wire::Hello::Reader h) {
  if (state_ != state::handshake) {
    send_error(proto::errc::protocol, "hello sent twice; send it once, as the first frame", 0,
               true);
    return;
  }
  // The client names the highest version it speaks; both speak the lower of
  // that and ours from now on.
  if (h.getProtocolVersion() < proto::min_protocol_version) {
    send_error(proto::errc::unsupported_version,
               "protocol version " + std::to_string(h.getProtocolVersion()) +
                   " is not supported; this server speaks versions " +
                   std::to_string(proto::min_protocol_version) + " to " +
                   std::to_string(proto::protocol_version),
               0, true);
    return;
  }
  protocol_version_ = std::min(h.getProtocolVersion(), proto::protocol_version);
  if (!svc_.tokens().empty()) {
    const std::string_view token = proto::as_string_view(h.getAuthToken());
    if (!token_matches(svc_.tokens(), token)) {
      svc_.stats().auth_failed();
      send_error(
          proto::errc::auth_failed,
          token.empty()
              ? "hello carries no auth token, and this server requires one (auth.tokens_file)"
              : "the auth token in hello is not one this server accepts (auth.tokens_file)",
          0, true);
      return;
    }
  }
  client_name_ = std::string(proto::as_string_view(h.getClientName()));
  state_ = state::open;
  decoder_.lift_frame_cap();
  timer_.cancel();
  if (svc_.options().idle_timeout.count() > 0) {
    arm_idle(svc_.options().idle_timeout);
  }
  const server_options& o = svc_.options();
  proto::welcome_fields wf;
  wf.server_id = svc_.server_id();
  wf.server_version = KEYWAY_VERSION;
  wf.protocol_version = protocol_version_;
  wf.worker_count = svc_.workers();
  wf.server_limits = o.limits;
  wf.max_subscriptions = o.max_subscriptions;
  wf.max_pending_bytes = o.max_pending_bytes;
  wf.connect_urls = svc_.connect_urls();
  (void)svc_.encoder().welcome(out(), wf);
  queued();
  // The server began shutting down during the handshake: tell it now.
  if (svc_.draining_announced()) send_draining();
}

bool connection::admit(std::string_view subject, std::uint32_t count, bool to_owner) {
  svc_.stats().published(count);
  // No subscription matches, by this worker's replica of the index, which
  // holds every acknowledged subscription: nothing to order or deliver.
  // Dropped here, without a copy or a hop to the owner (nats-server drops a
  // message with no interest the same way). A publish with an ack request
  // still goes to its owner, which answers after routing it.
  if (to_owner || svc_.has_interest(subject)) return true;
  svc_.stats().unmatched(count);
  return false;
}

bool connection::on_publish(const proto::publish_view& p) {
  if (!admit(p.subject, 1, p.ack_id != 0)) {
    if (!p.reply_to.empty()) send_no_responders(p.subject, p.reply_to, 0);
    return true;
  }
  return route_publish(p);
}

bool connection::route_publish(const proto::publish_view& p) {
  shared_message* msg =
      shared_message::make(svc_.pool(), p.subject, p.key, p.payload, p.reply_to, p.headers);
  msg->set_received_ns(
      static_cast<std::uint64_t>(last_read_.time_since_epoch() / std::chrono::nanoseconds(1)));
  publish_op op;
  op.msg = message_ref(msg);
  op.conn = id_;
  op.ack_id = p.ack_id;
  op.from = svc_.worker().id();
  const std::uint32_t owner = svc_.owner_of(*op.msg);
  if (const auto node = svc_.route(op, owner)) {
    routed_to(*node, owner);
    return true;
  }
  blocked_owner_ = owner;
  blocked_.emplace(std::move(op));
  svc_.stats().read_paused();
  svc_.resume_later(*this);
  return false;
}

bool connection::publish_entries() {
  proto::batch_entry e;
  while (batch_at_.next(e)) {
    if (!route_publish({.subject = batch_subject_, .key = e.key, .payload = e.payload}))
      return false;
  }
  return true;
}

bool connection::resume() {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (!blocked_) return true;
  if (state_ == state::closed) {
    blocked_.reset();
    return true;
  }
  const auto node = svc_.route(*blocked_, blocked_owner_);
  if (!node) return false;
  routed_to(*node, blocked_owner_);
  blocked_.reset();
  last_active_ = std::chrono::steady_clock::now();
  // The rest of a paused batch first, then the frames after it; either may
  // pause again, through route_publish's resume_later().
  if (publish_entries()) continue_reading();
  return true;
}

void connection::routed_to(std::uint32_t node, std::uint32_t owner) {
  if (node != 0) {
    if (std::find(forwarded_to_.begin(), forwarded_to_.end(), node) == forwarded_to_.end())
      forwarded_to_.push_back(node);
  } else if (owner != svc_.worker().id()) {
    published_to_.set(owner);
  }
}

void connection::continue_reading() {
  if (state_ != state::open && state_ != state::handshake) return;
  // A read in flight owns the decoder's free space; its on_read() processes.
  if (reading_ || reading_paused()) return;
  last_active_ = std::chrono::steady_clock::now();
  process();
}

void connection::throttle(bool on) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (on) {
    ++throttles_;
    svc_.stats().read_paused();
    return;
  }
  if (throttles_ == 0) return;
  if (--throttles_ == 0) continue_reading();
}

void connection::on_ping(std::uint64_t id) {
  if (pings_.empty() && published_to_.none() && forwarded_to_.empty()) {
    // Every publish before it was routed inline, or was covered by a ping
    // already answered: the usual case, as cheap as it ever was.
    (void)svc_.encoder().pong(out(), id);
    queued();
    return;
  }
  std::uint32_t barriers = 0;
  if (published_to_.any()) {
    const std::uint64_t round = first_round_ + pings_.size();
    const std::uint32_t workers = svc_.workers();
    for (std::uint32_t w = 0; w < workers; ++w) {
      if (!published_to_.test(w)) continue;
      svc_.barrier(w, id_, round);
      ++barriers;
    }
    published_to_.reset();
  }
  if (!forwarded_to_.empty()) {
    const std::uint64_t round = first_round_ + pings_.size();
    for (const std::uint32_t node : forwarded_to_)
      if (svc_.barrier_node(node, id_, round)) ++barriers;
    forwarded_to_.clear();
  }
  // Behind earlier pings even without barriers of its own: pongs go in order.
  pings_.push_back({id, barriers});
  if (pings_.size() >= max_pending_pings) svc_.stats().read_paused();
}

void connection::barrier_done(std::uint64_t round) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (round < first_round_ || round - first_round_ >= pings_.size())
    return;  // not ours: cannot happen
  pending_ping& p = pings_[static_cast<std::size_t>(round - first_round_)];
  if (p.barriers_left > 0) --p.barriers_left;
  answer_pings();
}

void connection::answer_pings() {
  const bool was_full = pings_.size() >= max_pending_pings;
  bool answered = false;
  while (!pings_.empty() && pings_.front().barriers_left == 0) {
    // Closing after a fatal error: nothing but what is queued goes out.
    if (state_ == state::open) {
      (void)svc_.encoder().pong(out(), pings_.front().id);
      answered = true;
    }
    pings_.pop_front();
    ++first_round_;
  }
  if (answered) queued();
  if (was_full && !reading_paused()) continue_reading();
}

void connection::send_draining() {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (state_ != state::open || draining_sent_) return;  // a handshake's is sent after its welcome
  draining_sent_ = true;
  const auto grace_ms =
      std::clamp<std::int64_t>(svc_.options().lame_duck_grace.count(), 0, UINT32_MAX);
  (void)svc_.encoder().draining(
      out(),
      "the server is shutting down; reconnect to another server of this deployment "
      "(welcome.connectUrls)",
      static_cast<std::uint32_t>(grace_ms));
  queued();
}

void connection::on_subscribe(wire::Subscribe::Reader s) {
  const server_options& o = svc_.options();
  const std::uint32_t sid = s.getSid();
  const std::uint64_t rid = s.getRequestId();
  if (subs_.count(sid) != 0) {
    send_error(proto::errc::protocol,
               "subscription id " + std::to_string(sid) +
                   " is already in use on this connection; unsubscribe it or pick another",
               rid, false);
    return;
  }
  if (subs_.size() >= o.max_subscriptions) {
    send_error(proto::errc::too_many_subscriptions,
               "connection has " + std::to_string(subs_.size()) +
                   " subscriptions, limits.max_subscriptions is " +
                   std::to_string(o.max_subscriptions) + "; unsubscribe some or raise the limit",
               rid, false);
    return;
  }
  const std::string_view pattern = proto::as_string_view(s.getPattern());
  const std::string_view group = proto::as_string_view(s.getQueueGroup());
  const auto tokens = static_cast<std::size_t>(std::count(pattern.begin(), pattern.end(), '.')) + 1;
  if (tokens > o.max_pattern_tokens) {
    send_error(proto::errc::invalid_subject,
               "pattern " + proto::quote(pattern) + " has " + std::to_string(tokens) +
                   " tokens, limits.max_pattern_tokens is " + std::to_string(o.max_pattern_tokens) +
                   "; subscribe to a shorter pattern (a final '>' matches any number of tokens)",
               rid, false);
    return;
  }
  const std::uint64_t cost = svc_.subscription_cost(pattern, group);
  if (sub_bytes_ + cost > o.max_subscription_bytes) {
    send_error(proto::errc::too_many_subscriptions,
               "this connection's subscriptions take " + proto::format_size(sub_bytes_) +
                   " of index memory and this one needs " + proto::format_size(cost) +
                   ", limits.max_subscription_bytes is " +
                   proto::format_size(o.max_subscription_bytes) +
                   "; unsubscribe some, use shorter patterns, or raise the limit",
               rid, false);
    return;
  }
  auto uid = svc_.admit_subscription(pattern, group, cost);
  if (!uid) {
    send_error(proto::errc::too_many_subscriptions, uid.error(), rid, false);
    return;
  }
  sub_spec spec;
  spec.add = true;
  spec.pattern = std::string(pattern);
  spec.group = std::string(group);
  spec.ref = sub_ref{*uid, svc_.worker().id(), id_, sid};
  spec.request_id = rid;
  subs_.emplace(sid, subscription{spec.ref.uid, cost});
  sub_bytes_ += cost;
  svc_.stats().subscriptions_added(1);
  std::vector<sub_spec> changes;
  changes.push_back(std::move(spec));
  const std::uint32_t answers = svc_.broadcast(std::move(changes));
  if (rid != 0) pending_acks_[rid] = {answers, false};
}

void connection::on_unsubscribe(wire::Unsubscribe::Reader u) {
  const std::uint64_t rid = u.getRequestId();
  if (subs_.count(u.getSid()) == 0) {
    send_error(proto::errc::protocol,
               "unsubscribe of subscription id " + std::to_string(u.getSid()) +
                   ", which is not subscribed",
               rid, false);
    return;
  }
  const std::uint32_t answers = drop_subscription(u.getSid(), rid);
  if (rid != 0) pending_acks_[rid] = {answers, false};
}

std::uint32_t connection::drop_subscription(std::uint32_t sid, std::uint64_t request_id) {
  auto it = subs_.find(sid);
  sub_spec spec;
  spec.add = false;
  spec.ref = sub_ref{it->second.uid, svc_.worker().id(), id_, sid};
  spec.request_id = request_id;
  sub_bytes_ -= it->second.cost;
  svc_.release_subscriptions(it->second.cost);
  subs_.erase(it);
  svc_.stats().subscriptions_removed(1);
  std::vector<sub_spec> changes;
  changes.push_back(std::move(spec));
  // The uid is freed once every worker applied the removal (router::on_sub_change
  // on this worker is enough: later adds travel the same FIFO rings).
  return svc_.broadcast(std::move(changes));
}

void connection::drop_all_subscriptions() {
  if (subs_.empty()) return;
  std::vector<sub_spec> changes;
  changes.reserve(subs_.size());
  for (const auto& [sid, sub] : subs_) {
    sub_spec spec;
    spec.add = false;
    spec.ref = sub_ref{sub.uid, svc_.worker().id(), id_, sid};
    changes.push_back(std::move(spec));
  }
  svc_.release_subscriptions(sub_bytes_);
  svc_.stats().subscriptions_removed(subs_.size());
  subs_.clear();
  sub_bytes_ = 0;
  svc_.broadcast(std::move(changes));
}

void connection::sub_applied(const sub_applied_op& op) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (op.refused) {
    // Another worker's index refused the subscription (a limit reached by a
    // change in flight when this worker checked): undo it everywhere, once.
    auto it = subs_.find(op.sid);
    if (it != subs_.end() && it->second.uid == op.uid) {
      drop_subscription(op.sid, 0);
      if (auto ack = pending_acks_.find(op.request_id); ack != pending_acks_.end())
        ack->second.refused = true;
      send_error(proto::errc::too_many_subscriptions, *op.refused, op.request_id, false);
    }
  }
  if (op.request_id == 0) return;
  auto it = pending_acks_.find(op.request_id);
  if (it == pending_acks_.end()) return;
  if (--it->second.workers_left != 0) return;
  const bool refused = it->second.refused;
  pending_acks_.erase(it);
  if (!refused) send_ack(op.request_id, 0);
}

void connection::deliver(const shared_message& m, std::uint32_t sid, std::uint32_t core,
                         std::uint64_t seq, std::uint64_t publisher) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (state_ != state::open) {
    svc_.stats().dropped(drop_reason::connection_gone);
    return;
  }
  const server_options& o = svc_.options();
  if (pending_bytes() >= o.max_pending_bytes) {
    // Publishers are paused from half the limit on, so what gets here was in
    // flight when they were. Policy drop: what does not fit is dropped.
    // Policy disconnect: it is queued while the grace lasts, up to a ceiling
    // (hard_limit()); a connection that far over is not slowing anything.
    if (o.slow_consumer == slow_consumer_policy::drop) {
      note_slow_consumer();
      svc_.stats().dropped(drop_reason::slow_consumer);
      return;
    }
    if (pending_bytes() >= hard_limit()) {
      apply_slow_consumer_policy();
      svc_.stats().dropped(drop_reason::slow_consumer);
      return;
    }
  }
  proto::delivery_fields f;
  f.sid = sid;
  f.subject = m.subject();
  f.key = m.key();
  f.payload = m.payload();
  f.reply_to = m.reply_to();
  f.owner_core = core;
  f.seq = seq;
  auto& enc = svc_.encoder();
  const bool batched =
      protocol_version_ >= proto::batch_version && m.plain() && f.reply_to.empty() &&
      f.payload.size() < proto::encoder::default_ref_threshold && batch_out_.fits(f);
  result<std::size_t> r = batched     ? add_to_batch(f)
                          : m.plain() ? enc.stamped_message(out(), f, m.frame_lists())
                                      : encode_with_headers(m, f);
  if (!r) {
    spdlog::error("connection {}: cannot encode a delivery: {}", id_, r.error().message());
    svc_.stats().dropped(drop_reason::encode_failed);
    return;
  }
  // A payload appended by reference must outlive the write; keep the message.
  if (m.payload().size() >= proto::encoder::default_ref_threshold)
    out_refs_.push_back(message_ref::share(m));
  svc_.stats().delivered(svc_.turn_ns(m.received_ns()) - m.received_ns());
  if (pending_bytes() >= high_water() && !shedding_) on_congestion(publisher);
  queued();
}

void connection::on_congestion(std::uint64_t publisher) {
  if (throttled_.empty()) {  // a new congestion episode
    svc_.stats().congestion_began();
    last_progress_ = std::chrono::steady_clock::now();
    arm_grace(svc_.options().slow_consumer_grace);
  }
  // Each publisher is paused once per episode; a short linear scan, since
  // only the publishers that reached this subscriber meanwhile are here.
  if (std::find(throttled_.begin(), throttled_.end(), publisher) != throttled_.end()) return;
  throttled_.push_back(publisher);
  svc_.throttle(publisher, true);
}

void connection::arm_grace(std::chrono::steady_clock::duration after) {
  // Re-armed lazily, as the idle timer: writes only stamp last_progress_.
  grace_timer_.expires_after(after);
  grace_timer_.async_wait([self = shared_from_this()](std::error_code ec) {
    if (ec || self->throttled_.empty() || self->state_ != state::open) return;
    const auto grace = self->svc_.options().slow_consumer_grace;
    const auto stalled = std::chrono::steady_clock::now() - self->last_progress_;
    if (stalled < grace) return self->arm_grace(grace - stalled);
    self->apply_slow_consumer_policy();
  });
}

void connection::release_throttled() {
  if (throttled_.empty()) return;
  grace_timer_.cancel();
  svc_.stats().congestion_ended();
  // A publisher on this worker resumes inline and may congest this
  // connection again, starting a new episode in throttled_: walk a copy.
  std::vector<std::uint64_t> released;
  released.swap(throttled_);
  for (const std::uint64_t p : released) svc_.throttle(p, false);
}

void connection::after_write() {
  last_progress_ = std::chrono::steady_clock::now();
  if (pending_bytes() > low_water()) return;
  shedding_ = false;
  slow_logged_ = false;
  release_throttled();
  if (out_paused_) {
    out_paused_ = false;
    continue_reading();
  }
}

void connection::note_slow_consumer() {
  if (slow_logged_) return;
  const server_options& o = svc_.options();
  slow_logged_ = true;
  svc_.stats().slow_consumer();
  spdlog::warn(
      "slow consumer: connection {} ({}) has {} bytes pending, limits.max_pending_bytes is {}; {}",
      id_, client_name_, pending_bytes(), o.max_pending_bytes,
      o.slow_consumer == slow_consumer_policy::disconnect ? "disconnecting"
                                                          : "dropping its messages");
}

void connection::apply_slow_consumer_policy() {
  const server_options& o = svc_.options();
  note_slow_consumer();
  if (state_ != state::open) return;
  if (o.slow_consumer == slow_consumer_policy::drop) {
    // Stop holding its publishers back: from now on what does not fit is
    // dropped for this connection alone, until it drains to low_water().
    shedding_ = true;
    release_throttled();
    return;
  }
  const std::string why = pending_bytes() >= hard_limit()
                              ? "outbound queue of " + proto::format_size(pending_bytes()) +
                                    " reached " + proto::format_size(hard_limit()) +
                                    ", the ceiling past limits.max_pending_bytes (" +
                                    proto::format_size(o.max_pending_bytes) +
                                    ") for what was in flight when its publishers were paused"
                              : "outbound queue of " + proto::format_size(pending_bytes()) +
                                    " over half of limits.max_pending_bytes (" +
                                    proto::format_size(o.max_pending_bytes) +
                                    ") and nothing read for limits.slow_consumer_grace (" +
                                    std::to_string(o.slow_consumer_grace.count()) + " ms)";
  send_error(proto::errc::slow_consumer, why + "; read faster or raise the limits", 0, true);
}

result<std::size_t> connection::encode_with_headers(const shared_message& m,
                                                    proto::delivery_fields& f) {
  headers_.clear();
  m.for_each_header([&](const header_view& h) { headers_.push_back(h); });
  f.headers = headers_;
  return svc_.encoder().message_ref(out(), f);
}

result<std::size_t> connection::add_to_batch(const proto::delivery_fields& f) {
  try {
    if (batch_out_.accepts(f))
      batch_out_.add(out_, f);
    else
      batch_out_.start(out_, f);
  } catch (const std::bad_alloc&) {
    return unexpected(proto::errc::internal);
  }
  return std::size_t{0};
}

void connection::send_no_responders(std::string_view subject, std::string_view reply_to,
                                    std::uint64_t ack_id) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  send_error(proto::errc::no_responders,
             "no subscriber matched request subject " + proto::quote(subject) + " (reply_to " +
                 proto::quote(reply_to) + ")",
             ack_id, false, reply_to);
}

void connection::send_ack(std::uint64_t request_id, std::uint32_t delivered) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (state_ != state::open) return;
  (void)svc_.encoder().ack(out(), request_id, delivered);
  svc_.stats().ack_sent();
  queued();
}

void connection::send_error(proto::errc code, std::string_view message, std::uint64_t request_id,
                            bool fatal, std::string_view reply_to) {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (state_ == state::closing || state_ == state::closed) return;
  if (code == proto::errc::slow_consumer) {
    // What is queued but not yet on the wire will not be read in time; drop it
    // so the error frame is next in line.
    out_.clear();
    out_refs_.clear();
    batch_out_.discard();
  }
  (void)svc_.encoder().error(out(), {code, message, request_id, fatal, reply_to});
  svc_.stats().error_sent(code);
  if (fatal) {
    spdlog::info("closing connection {} ({}): {}: {}", id_, client_name_, proto::to_string(code),
                 message);
    state_ = state::closing;
    release_throttled();  // nothing more will be delivered here
    arm_close_deadline();
  }
  queued();
}

void connection::arm_close_deadline() {
  // The peer gets close_grace to read on; every write that makes progress
  // re-arms it, so a peer that reads receives everything up to the error,
  // and one that does not read at all is closed when it runs out.
  timer_.expires_after(close_grace);
  timer_.async_wait([self = shared_from_this()](std::error_code ec) {
    if (!ec) self->abort();
  });
}

void connection::queued() {
  if (!dirty_) {
    dirty_ = true;
    svc_.flush_later(*this);
  }
}

void connection::flush() {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  dirty_ = false;
  if (state_ == state::closed) return;
  if (writing_now_) return;  // the completion handler continues
  if (writing_.empty() && out_.empty()) {
    if (state_ == state::closing) finish_close();
    return;
  }
  if (writing_.empty()) {
    std::swap(out(), writing_);
    std::swap(out_refs_, writing_refs_);
  }
  write_some();
}

void connection::write_some() {
  std::span<const std::byte> pieces[max_iov];
  const std::size_t n = writing_.gather(pieces);
  for (std::size_t i = 0; i < n; ++i) iov_[i] = asio::buffer(pieces[i].data(), pieces[i].size());
  writing_now_ = true;
  // iov_ is a member: the operation keeps pointing at it until it completes.
  socket_.async_write_some(
      std::span<const asio::const_buffer>(iov_.data(), n),
      [self = shared_from_this()](std::error_code ec, std::size_t written) {
        self->writing_now_ = false;
        if (self->state_ == state::closed) return;
        if (ec) {
          self->abort();
          return;
        }
        self->svc_.stats().bytes_written(written);
        self->writing_.consume(written);
        if (self->writing_.empty()) self->writing_refs_.clear();
        if (self->state_ == state::closing) {
          if (written > 0) self->arm_close_deadline();
        } else {
          self->after_write();
        }
        if (!self->writing_.empty() || !self->out_.empty() || self->state_ == state::closing)
          self->queued();
      });
}

void connection::finish_close() {
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  abort();
}

void connection::abort() {
  KEYWAY_ASSERT_OWNER(svc_.worker());
  if (state_ == state::closed) return;
  state_ = state::closed;
  timer_.cancel();
  grace_timer_.cancel();
  std::error_code ignored;
  socket_.close(ignored);
  blocked_.reset();
  release_throttled();
  drop_all_subscriptions();
  svc_.closed(*this);
}

}  // namespace keyway::daemon
