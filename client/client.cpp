// The calling-thread half of keyway::client::connection_impl: argument
// checks, encoding under mu_, pending-call bookkeeping and the blocking
// wrappers; and keyway::client::connection, which forwards to it. The IO
// thread's half (socket, handshake, reconnect, dispatch, timers) is
// client_io.cpp.
#include "client/connection_impl.hpp"

#include <asio/post.hpp>

#include <cstdio>
#include <future>
#include <random>

#include "proto/subject.hpp"

namespace keyway::client {
namespace {

std::span<const std::byte> as_bytes(std::string_view s) noexcept {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

error local_error(const proto::status& st) {
  return error{st.error_code(), st.message(), false};
}

std::string random_token() {
  std::random_device rd;
  const std::uint64_t v = (std::uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Slack a blocking wrapper allows beyond the IO thread's own deadline, so it
/// returns even if the IO thread were stuck in a user callback.
constexpr std::chrono::milliseconds wait_grace{2000};

template <class T>
outcome<T> wait_for(std::future<outcome<T>>& f, std::chrono::milliseconds limit,
                    std::string_view what) {
  if (f.wait_for(limit + wait_grace) != std::future_status::ready) {
    return error{errc::timeout,
                 std::string(what) + " did not complete within " +
                     std::to_string((limit + wait_grace).count()) +
                     " ms; is a callback blocking the client's IO thread?",
                 false};
  }
  return f.get();
}

/// Bytes a publish takes in the outbound buffer, near enough for the
/// reconnect buffer's limit.
std::size_t frame_estimate(std::string_view subject, std::string_view key,
                           std::string_view payload) noexcept {
  return subject.size() + key.size() + payload.size() + 64;
}

/// Unlocks, then calls `done` with `result`: completions never run under mu_.
template <class Done, class Result>
void complete_unlocked(std::unique_lock<std::mutex>& lock, Done& done, Result&& result) {
  lock.unlock();
  done(std::forward<Result>(result));
}

error would_block(std::string_view call) {
  return error{
      errc::would_block,
      std::string(call) +
          "() blocks, and was called on the client's IO thread (from a callback), where it "
          "would wait for itself; use " +
          std::string(call) + "_async() there",
      false};
}

}  // namespace

connection_impl::connection_impl(std::vector<server_url> servers, connect_options options)
    : options_(std::move(options)),
      inbox_prefix_("_INBOX." + random_token() + "."),
      socket_(io_),
      resolver_(io_),
      connect_timer_(io_),
      deadline_timer_(io_),
      close_timer_(io_),
      reconnect_timer_(io_),
      rng_(std::random_device{}()),
      writing_(64 * 1024),
      out_(64 * 1024) {
  for (server_url& u : servers) servers_.push_back({std::move(u), false, false});
  link_url_ = servers_.front().url;
  info_.url = link_url_.to_string();
}

connection_impl::~connection_impl() {
  close();
}

outcome<std::shared_ptr<connection_impl>> connection_impl::connect(std::string_view urls,
                                                                   connect_options options) {
  auto parsed = parse_url_list(urls);
  if (!parsed) return parsed.error();
  if (options.connect_timeout.count() <= 0 || options.op_timeout.count() <= 0)
    return error{errc::invalid_argument,
                 "connect_options: connect_timeout and op_timeout must be positive", false};
  if (options.max_pending_bytes == 0)
    return error{errc::invalid_argument, "connect_options: max_pending_bytes must be positive",
                 false};
  const reconnect_options& rc = options.reconnect;
  if (rc.initial_wait.count() <= 0 || rc.max_wait < rc.initial_wait || rc.jitter < 0 ||
      rc.jitter > 1 || rc.max_attempts < -1 || rc.buffer_bytes == 0)
    return error{errc::invalid_argument,
                 "connect_options::reconnect: initial_wait must be positive, max_wait at least "
                 "initial_wait, jitter in [0, 1], max_attempts -1 or more, buffer_bytes positive",
                 false};
  // Every server once, each within connect_timeout.
  const auto timeout = options.connect_timeout * static_cast<int>(parsed->size());
  const std::string what = "connect to " + std::string(urls);
  auto c = std::make_shared<connection_impl>(std::move(*parsed), std::move(options));

  auto promise = std::make_shared<std::promise<outcome<void>>>();
  auto future = promise->get_future();
  c->work_.emplace(c->io_.get_executor());
  asio::post(c->io_, [conn = c.get(), promise] {
    conn->initial_done_ = [promise](outcome<void> r) { promise->set_value(std::move(r)); };
    conn->try_servers(conn->servers_.size(), {});
  });
  c->io_thread_ = std::thread([conn = c.get()] { conn->run_io(); });
  c->io_thread_id_.store(c->io_thread_.get_id());

  auto r = wait_for(future, timeout, what);
  if (!r) {
    c->close();
    return r.error();
  }
  return c;
}

server_info connection_impl::info() const {
  std::lock_guard lock(mu_);
  return info_;
}

connection_status connection_impl::status() const noexcept {
  std::lock_guard lock(mu_);
  switch (state_) {
    case state::connecting:
    case state::open:
      return draining_.load(std::memory_order_relaxed) ? connection_status::draining
                                                       : connection_status::connected;
    case state::reconnecting:
      return connection_status::reconnecting;
    case state::closing:
      return connection_status::draining;
    case state::closed:
      break;
  }
  return connection_status::closed;
}

statistics connection_impl::stats() const {
  statistics s;
  s.in_msgs = stats_.in_msgs.get();
  s.in_bytes = stats_.in_bytes.get();
  s.out_msgs = stats_.out_msgs.get();
  s.out_bytes = stats_.out_bytes.get();
  s.reconnects = stats_.reconnects.get();
  s.buffered_publishes = stats_.buffered.get();
  s.lost_publishes = stats_.lost.get();
  s.dropped_msgs = stats_.dropped.get();
  return s;
}

template <class T, class Fn>
outcome<T> connection_impl::on_io(Fn&& fn, std::string_view what) {
  if (on_io_thread()) return fn();
  auto p = std::make_shared<std::promise<outcome<T>>>();
  auto f = p->get_future();
  asio::post(io_, [p, fn = std::forward<Fn>(fn)]() mutable { p->set_value(fn()); });
  return wait_for(f, options_.op_timeout, what);
}

// ---- helpers (mu_ held where the name says so) --------------------------------

error connection_impl::closed_error() const {
  std::lock_guard lock(mu_);
  return closed_error_locked();
}

error connection_impl::closed_error_locked() const {
  std::string why = "connection to " + info_.url + " is closed";
  if (!close_reason_.empty()) why += " (" + close_reason_ + ")";
  return error{errc::closed, std::move(why), false};
}

outcome<void> connection_impl::check_publish_locked(std::string_view subject, std::string_view key,
                                                    std::string_view payload,
                                                    std::span<const header> headers,
                                                    std::string_view reply_to) const {
  const proto::limits& lim = limits_;
  if (auto st = proto::validate_publish_subject(subject, lim, "subject"); !st)
    return local_error(st);
  if (key.size() > lim.max_key) {
    return error{proto::errc::invalid_key,
                 "key of " + proto::format_size(key.size()) +
                     " exceeds the server's limits.max_key (" + proto::format_size(lim.max_key) +
                     "); use a shorter key, e.g. a hash of it",
                 false};
  }
  if (payload.size() > lim.max_payload) {
    return error{proto::errc::payload_too_large,
                 "payload of " + proto::format_size(payload.size()) + " to " +
                     proto::quote(subject) + " exceeds the server's limits.max_payload (" +
                     proto::format_size(lim.max_payload) +
                     "); send smaller payloads or raise the limit in keyway.toml",
                 false};
  }
  if (headers.size() > lim.max_headers) {
    return error{proto::errc::payload_too_large,
                 std::to_string(headers.size()) +
                     " headers exceed the server's limits.max_headers (" +
                     std::to_string(lim.max_headers) + "); send fewer headers",
                 false};
  }
  std::uint64_t header_bytes = 0;
  for (const header& h : headers) {
    if (h.name.empty())
      return error{proto::errc::protocol, "a header has an empty name; names must be non-empty",
                   false};
    header_bytes += h.name.size() + h.value.size();
  }
  if (header_bytes > lim.max_header_bytes) {
    return error{proto::errc::payload_too_large,
                 "headers of " + proto::format_size(header_bytes) +
                     " exceed the server's limits.max_header_bytes (" +
                     proto::format_size(lim.max_header_bytes) + "); send smaller headers",
                 false};
  }
  if (!reply_to.empty()) {
    if (auto st = proto::validate_publish_subject(reply_to, lim, "reply_to"); !st)
      return local_error(st);
  }
  return {};
}

outcome<void> connection_impl::admit_publish_locked(std::unique_lock<std::mutex>& lock,
                                                    std::string_view subject, std::string_view key,
                                                    std::string_view payload,
                                                    std::span<const header> headers,
                                                    std::string_view reply_to) {
  if (auto r = wait_room_locked(lock, frame_estimate(subject, key, payload)); !r) return r;
  // After the wait: a reconnect meanwhile may have brought other limits.
  return check_publish_locked(subject, key, payload, headers, reply_to);
}

outcome<void> connection_impl::wait_room_locked(std::unique_lock<std::mutex>& lock,
                                                std::size_t bytes) {
  if (!on_io_thread()) {
    room_cv_.wait(lock, [&] {
      return state_ != state::open || queued_locked() < options_.max_pending_bytes;
    });
  }
  if (state_ == state::reconnecting) {
    if (queued_locked() + bytes > options_.reconnect.buffer_bytes) {
      return error{errc::buffer_full,
                   "disconnected from " + info_.url + " and reconnecting; the reconnect buffer (" +
                       proto::format_size(queued_locked()) +
                       " queued) would exceed "
                       "reconnect.buffer_bytes (" +
                       proto::format_size(options_.reconnect.buffer_bytes) +
                       "); retry later or raise connect_options::reconnect.buffer_bytes",
                   false};
    }
    return {};
  }
  if (state_ != state::open) return closed_error_locked();
  return {};
}

proto::out_buffer& connection_impl::out_locked() {
  if (batch_count_ == 0) return out_;
  if (auto r = encoder_->publish_batch(out_, batch_subject_, batch_count_, batch_entries_); !r) {
    // Only an allocation failure gets here (a batch is kept far under
    // limits.max_frame): its publishes are lost, and the handler hears of it.
    error e{r.error(),
            std::to_string(batch_count_) + " publishes to " + proto::quote(batch_subject_) +
                " were lost: encoding their publishBatch failed: " + r.error().message(),
            false};
    asio::post(io_, [this, e = std::move(e)] { report(e); });
  }
  batch_entries_.clear();
  batch_count_ = 0;
  return out_;
}

bool connection_impl::stage_publish_locked(std::string_view subject, std::string_view key,
                                           std::string_view payload) {
  if (info_.protocol_version < proto::batch_version) return false;
  const std::size_t size = proto::batch_entry_size(key.size(), payload.size());
  // A batch stays under 64 KiB, and far under the server's frame limit.
  const std::size_t room = std::min<std::size_t>(
      max_batch_bytes,
      limits_.max_frame > 4096 + 2 * subject.size() ? limits_.max_frame / 2 - subject.size() : 0);
  if (size > room / 4) return false;
  if (batch_count_ != 0 && (subject != batch_subject_ || batch_entries_.size() + size > room))
    (void)out_locked();
  if (batch_count_ == 0) batch_subject_.assign(subject);
  const std::size_t at = batch_entries_.size();
  batch_entries_.resize(at + size);
  proto::write_batch_entry(batch_entries_.data() + at, as_bytes(key), as_bytes(payload));
  ++batch_count_;
  return true;
}

outcome<void> connection_impl::encode_publish_locked(std::string_view subject, std::string_view key,
                                                     std::string_view payload,
                                                     std::span<const header> headers,
                                                     std::string_view reply_to,
                                                     std::uint64_t ack_id) {
  const auto counted = [&] {
    stats_.out_msgs.add(1);
    stats_.out_bytes.add(payload.size());
    if (state_ == state::reconnecting) stats_.buffered.add(1);
    if (ack_id == 0) ++out_publishes_;
    kick_locked();
  };
  // Plain publishes wait for the writer in one publishBatch frame, in order.
  if (headers.empty() && reply_to.empty() && ack_id == 0 &&
      stage_publish_locked(subject, key, payload)) {
    counted();
    return {};
  }
  header_scratch_.clear();
  for (const header& h : headers) header_scratch_.push_back({h.name, as_bytes(h.value)});
  proto::publish_fields f;
  f.subject = subject;
  f.key = as_bytes(key);
  f.payload = as_bytes(payload);
  f.headers = header_scratch_;
  f.reply_to = reply_to;
  f.ack_id = ack_id;
  auto r = encoder_->publish(out_locked(), f);
  if (!r) {
    if (r.error() == proto::errc::frame_too_large) {
      return error{
          proto::errc::frame_too_large,
          "publish to " + proto::quote(subject) + " does not fit the server's limits.max_frame (" +
              proto::format_size(limits_.max_frame) + "); send a smaller payload or fewer headers",
          false};
    }
    return error{
        r.error(),
        "cannot encode the publish to " + proto::quote(subject) + ": " + r.error().message(),
        false};
  }
  counted();
  return {};
}

std::uint64_t connection_impl::add_pending_locked(pending_op op) {
  const std::uint64_t id = next_id_++;
  const auto when = clock::now() + op.timeout;
  op.deadline = deadlines_.emplace(when, id);
  op.gen = out_gen_;
  if (!timer_at_ || when < *timer_at_) {
    timer_at_ = when;
    asio::post(io_, [this] { arm_timer(); });
  }
  pending_.emplace(id, std::move(op));
  return id;
}

std::optional<connection_impl::pending_op> connection_impl::take_pending_locked(std::uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return std::nullopt;
  std::optional<pending_op> op(std::move(it->second));
  pending_.erase(it);
  if (op->deadline) {
    deadlines_.erase(*op->deadline);
    op->deadline.reset();
  }
  return op;
}

void connection_impl::kick_locked() {
  if (write_scheduled_) return;
  write_scheduled_ = true;
  asio::post(io_, [this] { start_write(); });
}

std::string connection_impl::inbox_reply_to(std::uint64_t id) const {
  return inbox_prefix_ + std::to_string(id);
}

// ---- publish -------------------------------------------------------------------

outcome<void> connection_impl::publish(std::string_view subject, std::string_view payload,
                                       const publish_options& options) {
  std::unique_lock lock(mu_);
  if (auto r = admit_publish_locked(lock, subject, options.key, payload, options.headers,
                                    options.reply_to);
      !r)
    return r;
  return encode_publish_locked(subject, options.key, payload, options.headers, options.reply_to, 0);
}

outcome<void> connection_impl::respond(const message& request, std::string_view payload,
                                       const publish_options& options) {
  if (request.reply_to.empty()) {
    return error{errc::no_reply_to,
                 "respond: the message on " + proto::quote(request.subject) +
                     " has no reply_to (it was not sent as a request)",
                 false};
  }
  publish_options o = options;
  o.reply_to = {};
  return publish(request.reply_to, payload, o);
}

void connection_impl::publish_ack_async(std::string_view subject, std::string_view payload,
                                        const publish_options& options, ack_handler done) {
  std::unique_lock lock(mu_);
  if (auto r = admit_publish_locked(lock, subject, options.key, payload, options.headers,
                                    options.reply_to);
      !r) {
    return complete_unlocked(lock, done, r.error());
  }
  pending_op op;
  op.kind = op_kind::publish_ack;
  op.on_ack = std::move(done);
  op.what = "publish to " + proto::quote(subject);
  op.timeout = options_.op_timeout;
  const std::uint64_t id = add_pending_locked(std::move(op));
  if (auto r = encode_publish_locked(subject, options.key, payload, options.headers,
                                     options.reply_to, id);
      !r) {
    auto failed = take_pending_locked(id);
    complete_unlocked(lock, failed->on_ack, r.error());
  }
}

outcome<std::uint32_t> connection_impl::publish_ack(std::string_view subject,
                                                    std::string_view payload,
                                                    const publish_options& options) {
  if (on_io_thread()) return would_block("publish_ack");
  auto p = std::make_shared<std::promise<outcome<std::uint32_t>>>();
  auto f = p->get_future();
  publish_ack_async(subject, payload, options,
                    [p](outcome<std::uint32_t> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "publish_ack to " + proto::quote(subject));
}

// ---- subscribe -------------------------------------------------------------------

void connection_impl::subscribe_async(std::string_view pattern, message_handler handler,
                                      const subscribe_options& options, subscribe_handler done) {
  proto::limits lim;
  {
    std::lock_guard lock(mu_);
    lim = limits_;
  }
  if (auto st = proto::validate_pattern(pattern, lim, "pattern"); !st) return done(local_error(st));
  if (auto st = proto::validate_queue_group(options.queue_group, lim, "queue group"); !st)
    return done(local_error(st));
  if (!handler)
    return done(error{errc::invalid_argument,
                      "subscribe to " + proto::quote(pattern) + ": the handler is empty", false});
  if (!is_open()) return done(closed_error());
  const std::uint32_t sid = next_sid_.fetch_add(1, std::memory_order_relaxed);
  sub_entry entry;
  entry.pattern = std::string(pattern);
  entry.group = std::string(options.queue_group);
  entry.handler = std::move(handler);
  entry.max_messages = options.max_messages;
  // Handlers live on the IO thread, so the registration happens there, before
  // the frame is queued: a delivery can never arrive for an unknown sid.
  asio::post(io_, [this, sid, entry = std::move(entry), done = std::move(done)]() mutable {
    std::unique_lock lock(mu_);
    if (!accepting_locked()) {
      return complete_unlocked(lock, done, closed_error_locked());
    }
    pending_op op;
    op.kind = op_kind::subscribe;
    op.what = "subscribe to " + proto::quote(entry.pattern);
    op.timeout = options_.op_timeout;
    op.on_ack = [this, sid, done = std::move(done)](outcome<std::uint32_t> r) {
      if (r) {
        if (auto it = subs_.find(sid); it != subs_.end()) it->second.pending_op = 0;
        return done(subscription{sid});
      }
      remove_sub(sid);
      if (r.error().code == errc::timeout) {
        // The server may still apply it: take it back (no ack wanted).
        std::lock_guard lk(mu_);
        if (state_ == state::open && encoder_->unsubscribe(out_locked(), sid, 0)) kick_locked();
      }
      done(r.error());
    };
    const std::uint64_t id = add_pending_locked(std::move(op));
    entry.pending_op = id;
    // While reconnecting, the frame waits in out_; restore_link() subscribes
    // every entry of subs_ anyway, with this id, and drops the frame.
    auto r = encoder_->subscribe(
        out_locked(),
        {.sid = sid, .pattern = entry.pattern, .queue_group = entry.group, .request_id = id});
    if (!r) {
      auto failed = take_pending_locked(id);
      return complete_unlocked(
          lock, failed->on_ack,
          error{r.error(), "cannot encode the subscribe to " + proto::quote(entry.pattern), false});
    }
    subs_.emplace(sid, std::move(entry));
    kick_locked();
  });
}

outcome<subscription> connection_impl::subscribe(std::string_view pattern, message_handler handler,
                                                 const subscribe_options& options) {
  if (on_io_thread()) return would_block("subscribe");
  auto p = std::make_shared<std::promise<outcome<subscription>>>();
  auto f = p->get_future();
  subscribe_async(pattern, std::move(handler), options,
                  [p](outcome<subscription> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "subscribe to " + proto::quote(pattern));
}

outcome<subscription> connection_impl::subscribe_sync(std::string_view pattern,
                                                      const subscribe_options& options) {
  if (options.max_queued == 0)
    return error{errc::invalid_argument,
                 "subscribe_sync to " + proto::quote(pattern) + ": max_queued must be positive",
                 false};
  auto queue = std::make_shared<sync_queue>();
  queue->max = options.max_queued;
  // The handler runs on the IO thread: it copies the message into the queue,
  // or drops it (and says so once per overflow) when the queue is full.
  auto overflowing = std::make_shared<bool>(false);
  message_handler handler = [this, queue, overflowing](const message& m) {
    {
      std::lock_guard lock(queue->mu);
      if (queue->messages.size() < queue->max) {
        queue->messages.push_back(m);
        *overflowing = false;
        queue->cv.notify_one();
        return;
      }
    }
    stats_.dropped.add(1);
    if (!*overflowing) {
      *overflowing = true;
      report(error{proto::errc::slow_consumer,
                   "synchronous subscription " + std::to_string(m.sid) + " holds max_queued (" +
                       std::to_string(queue->max) +
                       ") messages: dropping deliveries until next_message() takes some",
                   false});
    }
  };
  auto r = subscribe(pattern, std::move(handler), options);
  if (!r) return r;
  std::lock_guard lock(mu_);
  sync_queues_[r->sid] = std::move(queue);
  return r;
}

outcome<message> connection_impl::next_message(subscription sub,
                                               std::chrono::milliseconds timeout) {
  std::shared_ptr<sync_queue> queue;
  {
    std::lock_guard lock(mu_);
    if (auto it = sync_queues_.find(sub.sid); it != sync_queues_.end()) queue = it->second;
  }
  if (!queue)
    return error{errc::invalid_argument,
                 "next_message: " + std::to_string(sub.sid) +
                     " is not a synchronous subscription of this connection (use subscribe_sync)",
                 false};
  std::unique_lock lock(queue->mu);
  if (!queue->cv.wait_for(lock, timeout, [&] { return !queue->messages.empty() || queue->done; }))
    return error{errc::timeout,
                 "no message on subscription " + std::to_string(sub.sid) + " within " +
                     std::to_string(timeout.count()) + " ms",
                 false};
  if (queue->messages.empty()) {
    lock.unlock();
    std::lock_guard forget(mu_);
    sync_queues_.erase(sub.sid);
    return error{errc::closed,
                 "subscription " + std::to_string(sub.sid) + " has ended and its queue is empty",
                 false};
  }
  message m = std::move(queue->messages.front());
  queue->messages.pop_front();
  return m;
}

outcome<void> connection_impl::auto_unsubscribe(subscription sub, std::uint64_t max_messages) {
  if (max_messages == 0)
    return error{errc::invalid_argument, "auto_unsubscribe: max_messages must be positive", false};
  return on_io<void>(
      [this, sid = sub.sid, max_messages]() -> outcome<void> {
        auto it = subs_.find(sid);
        if (it == subs_.end())
          return error{errc::invalid_argument,
                       "auto_unsubscribe: subscription " + std::to_string(sid) +
                           " is not active on this connection",
                       false};
        it->second.max_messages = max_messages;
        if (it->second.delivered >= max_messages) {
          remove_sub(sid);
          std::lock_guard lock(mu_);
          if (state_ == state::open && encoder_->unsubscribe(out_locked(), sid, 0)) kick_locked();
        }
        return {};
      },
      "auto_unsubscribe");
}

void connection_impl::unsubscribe_async(subscription sub, done_handler done) {
  if (sub.sid == 0 || sub.sid == inbox_sid_.load(std::memory_order_relaxed))
    return done(error{errc::invalid_argument,
                      "unsubscribe: " + std::to_string(sub.sid) + " is not a subscription", false});
  if (!is_open()) return done(closed_error());
  asio::post(io_, [this, sid = sub.sid, done = std::move(done)]() mutable {
    const bool known = subs_.count(sid) != 0;
    remove_sub(sid);
    std::unique_lock lock(mu_);
    if (!accepting_locked()) {
      return complete_unlocked(lock, done, closed_error_locked());
    }
    if (!known) {
      return complete_unlocked(lock, done,
                               error{errc::invalid_argument,
                                     "unsubscribe: subscription " + std::to_string(sid) +
                                         " is not active on this connection",
                                     false});
    }
    if (state_ == state::reconnecting) {
      // The next link will not subscribe it; a link being restored may have
      // already: take it back there (no ack needed).
      if (restoring_ && encoder_->unsubscribe(out_locked(), sid, 0)) kick_locked();
      return complete_unlocked(lock, done, outcome<void>{});
    }
    pending_op op;
    op.kind = op_kind::unsubscribe;
    op.what = "unsubscribe of subscription " + std::to_string(sid);
    op.timeout = options_.op_timeout;
    op.on_ack = [done = std::move(done)](outcome<std::uint32_t> r) {
      if (r) return done(outcome<void>{});
      done(r.error());
    };
    const std::uint64_t id = add_pending_locked(std::move(op));
    if (!encoder_->unsubscribe(out_locked(), sid, id)) {
      auto failed = take_pending_locked(id);
      complete_unlocked(lock, failed->on_ack,
                        error{errc::invalid_argument, "cannot encode the unsubscribe", false});
      return;
    }
    kick_locked();
  });
}

outcome<void> connection_impl::unsubscribe(subscription sub) {
  if (on_io_thread()) return would_block("unsubscribe");
  auto p = std::make_shared<std::promise<outcome<void>>>();
  auto f = p->get_future();
  unsubscribe_async(sub, [p](outcome<void> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "unsubscribe of subscription " + std::to_string(sub.sid));
}

// ---- request / reply -------------------------------------------------------------

void connection_impl::request_async(std::string_view subject, std::string_view payload,
                                    std::chrono::milliseconds timeout,
                                    const request_options& options, reply_handler done) {
  if (timeout.count() <= 0)
    return done(error{errc::invalid_argument,
                      "request to " + proto::quote(subject) + ": the timeout must be positive",
                      false});
  std::unique_lock lock(mu_);
  if (auto r = admit_publish_locked(lock, subject, options.key, payload, options.headers, {}); !r) {
    return complete_unlocked(lock, done, r.error());
  }
  pending_op op;
  op.kind = op_kind::request;
  op.on_reply = std::move(done);
  op.what = "request to " + proto::quote(subject);
  op.timeout = timeout;
  // The ack id doubles as the inbox token: the reply comes to _INBOX.<r>.<id>,
  // a no_responders error carries requestId = id.
  const std::uint64_t id = add_pending_locked(std::move(op));
  if (inbox_ == inbox_state::ready) {
    if (auto r = encode_publish_locked(subject, options.key, payload, options.headers,
                                       inbox_reply_to(id), id);
        !r) {
      auto failed = take_pending_locked(id);
      complete_unlocked(lock, failed->on_reply, r.error());
    }
    return;
  }
  deferred_request d;
  d.id = id;
  d.subject = std::string(subject);
  d.payload = std::string(payload);
  d.key = std::string(options.key);
  for (const header& h : options.headers)
    d.headers.push_back({std::string(h.name), std::string(h.value)});
  deferred_.push_back(std::move(d));
  if (inbox_ == inbox_state::subscribing) return;

  // First request: subscribe the inbox; complete_inbox() sends the deferred ones.
  inbox_ = inbox_state::subscribing;
  const std::uint32_t sid = next_sid_.fetch_add(1, std::memory_order_relaxed);
  inbox_sid_.store(sid, std::memory_order_relaxed);
  pending_op inbox;
  inbox.kind = op_kind::inbox;
  inbox.what = "subscribe to the reply inbox " + proto::quote(inbox_prefix_ + "*");
  inbox.timeout = options_.op_timeout;
  inbox_op_ = add_pending_locked(std::move(inbox));
  const std::string pattern = inbox_prefix_ + "*";
  if (!encoder_->subscribe(
          out_locked(),
          {.sid = sid, .pattern = pattern, .queue_group = {}, .request_id = inbox_op_})) {
    // Cannot happen with sane limits; leave the requests to their deadlines.
    return;
  }
  kick_locked();
}

outcome<message> connection_impl::request(std::string_view subject, std::string_view payload,
                                          std::chrono::milliseconds timeout,
                                          const request_options& options) {
  if (on_io_thread()) return would_block("request");
  auto p = std::make_shared<std::promise<outcome<message>>>();
  auto f = p->get_future();
  request_async(subject, payload, timeout, options,
                [p](outcome<message> r) { p->set_value(std::move(r)); });
  return wait_for(f, timeout, "request to " + proto::quote(subject));
}

// ---- flush / close -----------------------------------------------------------------

void connection_impl::flush_async(done_handler done) {
  std::unique_lock lock(mu_);
  if (!accepting_locked()) {
    return complete_unlocked(lock, done, closed_error_locked());
  }
  pending_op op;
  op.kind = op_kind::ping;
  op.what = "flush (ping)";
  op.timeout = options_.op_timeout;
  op.on_ack = [done = std::move(done)](outcome<std::uint32_t> r) {
    if (r) return done(outcome<void>{});
    done(r.error());
  };
  const std::uint64_t id = add_pending_locked(std::move(op));
  if (!encoder_->ping(out_locked(), id)) {
    auto failed = take_pending_locked(id);
    complete_unlocked(lock, failed->on_ack,
                      error{errc::invalid_argument, "cannot encode a ping", false});
    return;
  }
  kick_locked();
}

outcome<void> connection_impl::flush() {
  if (on_io_thread()) return would_block("flush");
  auto p = std::make_shared<std::promise<outcome<void>>>();
  auto f = p->get_future();
  flush_async([p](outcome<void> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "flush");
}

outcome<void> connection_impl::drain() {
  if (on_io_thread()) return would_block("drain");
  if (!is_open()) return closed_error();
  draining_.store(true, std::memory_order_relaxed);
  // 1. Unsubscribe everything; the handlers stay, for what is on its way.
  auto result = on_io<void>(
      [this]() -> outcome<void> {
        std::lock_guard lock(mu_);
        if (state_ != state::open) return {};  // reconnecting: no server holds them
        for (const auto& [sid, entry] : subs_)
          if (!encoder_->unsubscribe(out_locked(), sid, 0))
            return error{errc::invalid_argument, "drain: cannot encode an unsubscribe", false};
        kick_locked();
        return {};
      },
      "drain (unsubscribe)");
  // 2. The pong comes after every delivery routed before the unsubscribes,
  //    and after every publish of this connection was routed.
  if (result) result = flush();
  // 3. No more deliveries, then close.
  (void)on_io<void>(
      [this]() -> outcome<void> {
        std::vector<std::uint32_t> sids;
        for (const auto& [sid, entry] : subs_) sids.push_back(sid);
        for (const std::uint32_t sid : sids) remove_sub(sid);
        return {};
      },
      "drain (remove handlers)");
  close();
  return result;
}

void connection_impl::close() {
  {
    std::lock_guard lock(mu_);
    if (state_ == state::open || state_ == state::reconnecting) {
      state_ = state::closing;
      open_.store(false, std::memory_order_release);
    }
  }
  room_cv_.notify_all();
  asio::post(io_, [this] { begin_close(); });
  if (on_io_thread()) return;  // the IO thread finishes by itself; the destructor joins
  std::lock_guard join_lock(join_mu_);
  if (io_thread_.joinable()) io_thread_.join();
}

}  // namespace keyway::client

// ---- connection: the public face ------------------------------------------------------

namespace keyway::client {

std::string_view version() noexcept {
  return KEYWAY_VERSION;
}

connection::connection(std::shared_ptr<connection_impl> impl) : impl_(std::move(impl)) {}
connection::~connection() {
  if (impl_) impl_->close();
}

outcome<std::unique_ptr<connection>> connection::connect(std::string_view urls,
                                                         connect_options options) {
  auto impl = connection_impl::connect(urls, std::move(options));
  if (!impl) return impl.error();
  return std::unique_ptr<connection>(new connection(std::move(*impl)));
}

outcome<std::unique_ptr<connection>> connect(std::string_view urls, connect_options options) {
  return connection::connect(urls, std::move(options));
}

server_info connection::info() const {
  return impl_->info();
}
connection_status connection::status() const noexcept {
  return impl_->status();
}
bool connection::is_open() const noexcept {
  return impl_->is_open();
}
statistics connection::stats() const {
  return impl_->stats();
}

outcome<void> connection::publish(std::string_view subject, std::string_view payload,
                                  const publish_options& options) {
  return impl_->publish(subject, payload, options);
}
outcome<std::uint32_t> connection::publish_ack(std::string_view subject, std::string_view payload,
                                               const publish_options& options) {
  return impl_->publish_ack(subject, payload, options);
}
void connection::publish_ack_async(std::string_view subject, std::string_view payload,
                                   const publish_options& options, ack_handler done) {
  impl_->publish_ack_async(subject, payload, options, std::move(done));
}
outcome<subscription> connection::subscribe(std::string_view pattern, message_handler handler,
                                            const subscribe_options& options) {
  return impl_->subscribe(pattern, std::move(handler), options);
}
void connection::subscribe_async(std::string_view pattern, message_handler handler,
                                 const subscribe_options& options, subscribe_handler done) {
  impl_->subscribe_async(pattern, std::move(handler), options, std::move(done));
}
outcome<subscription> connection::subscribe_sync(std::string_view pattern,
                                                 const subscribe_options& options) {
  return impl_->subscribe_sync(pattern, options);
}
outcome<message> connection::next_message(subscription sub, std::chrono::milliseconds timeout) {
  return impl_->next_message(sub, timeout);
}
outcome<void> connection::auto_unsubscribe(subscription sub, std::uint64_t max_messages) {
  return impl_->auto_unsubscribe(sub, max_messages);
}
outcome<void> connection::unsubscribe(subscription sub) {
  return impl_->unsubscribe(sub);
}
void connection::unsubscribe_async(subscription sub, done_handler done) {
  impl_->unsubscribe_async(sub, std::move(done));
}
outcome<message> connection::request(std::string_view subject, std::string_view payload,
                                     std::chrono::milliseconds timeout,
                                     const request_options& options) {
  return impl_->request(subject, payload, timeout, options);
}
void connection::request_async(std::string_view subject, std::string_view payload,
                               std::chrono::milliseconds timeout, const request_options& options,
                               reply_handler done) {
  impl_->request_async(subject, payload, timeout, options, std::move(done));
}
outcome<void> connection::respond(const message& request, std::string_view payload,
                                  const publish_options& options) {
  return impl_->respond(request, payload, options);
}
outcome<void> connection::flush() {
  return impl_->flush();
}
void connection::flush_async(done_handler done) {
  impl_->flush_async(std::move(done));
}
outcome<void> connection::drain() {
  return impl_->drain();
}
void connection::close() {
  impl_->close();
}

}  // namespace keyway::client
