// The calling-thread half of keyway::client::connection: argument checks,
// encoding under mu_, pending-call bookkeeping and the blocking wrappers.
// The IO thread's half (socket, handshake, dispatch, timers) is client_io.cpp.
#include "client/client.hpp"

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

connection::connection(server_url url, connect_options options)
    : url_(std::move(url)),
      options_(std::move(options)),
      inbox_prefix_("_INBOX." + random_token() + "."),
      socket_(io_),
      resolver_(io_),
      connect_timer_(io_),
      deadline_timer_(io_),
      close_timer_(io_),
      writing_(64 * 1024),
      out_(64 * 1024) {}

connection::~connection() {
  close();
}

outcome<std::unique_ptr<connection>> connection::connect(std::string_view url,
                                                         connect_options options) {
  auto parsed = parse_url(url);
  if (!parsed) return parsed.error();
  if (options.connect_timeout.count() <= 0 || options.op_timeout.count() <= 0)
    return error{errc::invalid_argument,
                 "connect_options: connect_timeout and op_timeout must be positive", false};
  if (options.max_pending_bytes == 0)
    return error{errc::invalid_argument, "connect_options: max_pending_bytes must be positive",
                 false};
  const auto timeout = options.connect_timeout;
  std::unique_ptr<connection> c(new connection(std::move(*parsed), std::move(options)));

  auto promise = std::make_shared<std::promise<outcome<void>>>();
  auto future = promise->get_future();
  c->work_.emplace(c->io_.get_executor());
  asio::post(c->io_, [conn = c.get(), promise] {
    conn->start_connect([promise](outcome<void> r) { promise->set_value(std::move(r)); });
  });
  c->io_thread_ = std::thread([conn = c.get()] { conn->run_io(); });
  c->io_thread_id_.store(c->io_thread_.get_id());

  auto r = wait_for(future, timeout, "connect to " + c->url_.to_string());
  if (!r) {
    c->close();
    return r.error();
  }
  return c;
}

// ---- helpers (mu_ held where the name says so) --------------------------------

error connection::closed_error() const {
  std::lock_guard lock(mu_);
  return closed_error_locked();
}

error connection::closed_error_locked() const {
  std::string why = "connection to " + url_.to_string() + " is closed";
  if (!close_reason_.empty()) why += " (" + close_reason_ + ")";
  return error{errc::closed, std::move(why), false};
}

outcome<void> connection::check_publish(std::string_view subject, std::string_view key,
                                        std::string_view payload, std::span<const header> headers,
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

bool connection::wait_room_locked(std::unique_lock<std::mutex>& lock) {
  if (!on_io_thread()) {
    room_cv_.wait(
        lock, [&] { return state_ != state::open || queued_locked() < options_.max_pending_bytes; });
  }
  return state_ == state::open;
}

proto::out_buffer& connection::out_locked() {
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

bool connection::stage_publish_locked(std::string_view subject, std::string_view key,
                                      std::string_view payload) {
  if (info_.protocol_version < proto::batch_version) return false;
  const std::size_t size = proto::batch_entry_size(key.size(), payload.size());
  // A batch stays under 64 KiB, and far under the server's frame limit.
  const std::size_t room = std::min<std::size_t>(
      max_batch_bytes, limits_.max_frame > 4096 + 2 * subject.size() ? limits_.max_frame / 2 - subject.size() : 0);
  if (size > room / 4) return false;
  if (batch_count_ != 0 && (subject != batch_subject_ || batch_entries_.size() + size > room)) (void)out_locked();
  if (batch_count_ == 0) batch_subject_.assign(subject);
  const std::size_t at = batch_entries_.size();
  batch_entries_.resize(at + size);
  proto::write_batch_entry(batch_entries_.data() + at, as_bytes(key), as_bytes(payload));
  ++batch_count_;
  return true;
}

outcome<void> connection::encode_publish_locked(std::string_view subject, std::string_view key,
                                                std::string_view payload,
                                                std::span<const header> headers,
                                                std::string_view reply_to, std::uint64_t ack_id) {
  // Plain publishes wait for the writer in one publishBatch frame, in order.
  if (headers.empty() && reply_to.empty() && ack_id == 0 && stage_publish_locked(subject, key, payload)) {
    kick_locked();
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
  kick_locked();
  return {};
}

std::uint64_t connection::add_pending_locked(pending_op op) {
  const std::uint64_t id = next_id_++;
  const auto when = clock::now() + op.timeout;
  op.deadline = deadlines_.emplace(when, id);
  if (!timer_at_ || when < *timer_at_) {
    timer_at_ = when;
    asio::post(io_, [this] { arm_timer(); });
  }
  pending_.emplace(id, std::move(op));
  return id;
}

std::optional<connection::pending_op> connection::take_pending_locked(std::uint64_t id) {
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

void connection::kick_locked() {
  if (write_scheduled_) return;
  write_scheduled_ = true;
  asio::post(io_, [this] { start_write(); });
}

std::string connection::inbox_reply_to(std::uint64_t id) const {
  return inbox_prefix_ + std::to_string(id);
}

// ---- publish -------------------------------------------------------------------

outcome<void> connection::publish(std::string_view subject, std::string_view payload,
                                  const publish_options& options) {
  if (auto r = check_publish(subject, options.key, payload, options.headers, options.reply_to); !r)
    return r;
  std::unique_lock lock(mu_);
  if (!wait_room_locked(lock)) return closed_error_locked();
  return encode_publish_locked(subject, options.key, payload, options.headers, options.reply_to, 0);
}

void connection::publish_ack_async(std::string_view subject, std::string_view payload,
                                   const publish_options& options, ack_handler done) {
  if (auto r = check_publish(subject, options.key, payload, options.headers, options.reply_to);
      !r) {
    done(r.error());
    return;
  }
  std::unique_lock lock(mu_);
  if (!wait_room_locked(lock)) {
    auto e = closed_error_locked();
    lock.unlock();
    done(std::move(e));
    return;
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
    lock.unlock();
    failed->on_ack(r.error());
  }
}

outcome<std::uint32_t> connection::publish_ack(std::string_view subject, std::string_view payload,
                                               const publish_options& options) {
  if (on_io_thread()) return would_block("publish_ack");
  auto p = std::make_shared<std::promise<outcome<std::uint32_t>>>();
  auto f = p->get_future();
  publish_ack_async(subject, payload, options,
                    [p](outcome<std::uint32_t> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "publish_ack to " + proto::quote(subject));
}

// ---- subscribe -------------------------------------------------------------------

void connection::subscribe_async(std::string_view pattern, message_handler handler,
                                 const subscribe_options& options, subscribe_handler done) {
  if (auto st = proto::validate_pattern(pattern, limits_, "pattern"); !st)
    return done(local_error(st));
  if (auto st = proto::validate_queue_group(options.queue_group, limits_, "queue group"); !st)
    return done(local_error(st));
  if (!handler)
    return done(error{errc::invalid_argument,
                      "subscribe to " + proto::quote(pattern) + ": the handler is empty", false});
  if (!is_open()) return done(closed_error());
  const std::uint32_t sid = next_sid_.fetch_add(1, std::memory_order_relaxed);
  // Handlers live on the IO thread, so the registration happens there, before
  // the frame is queued: a delivery can never arrive for an unknown sid.
  asio::post(
      io_, [this, sid, pattern = std::string(pattern), group = std::string(options.queue_group),
            handler = std::move(handler), done = std::move(done)]() mutable {
        std::unique_lock lock(mu_);
        if (state_ != state::open) {
          auto e = closed_error_locked();
          lock.unlock();
          done(std::move(e));
          return;
        }
        subs_[sid] = std::move(handler);
        pending_op op;
        op.kind = op_kind::subscribe;
        op.what = "subscribe to " + proto::quote(pattern);
        op.timeout = options_.op_timeout;
        op.on_ack = [this, sid, done = std::move(done)](outcome<std::uint32_t> r) {
          if (r) return done(subscription{sid});
          subs_.erase(sid);
          if (r.error().code == errc::timeout) {
            // The server may still apply it: take it back (no ack wanted).
            std::lock_guard lk(mu_);
            if (state_ == state::open && encoder_->unsubscribe(out_locked(), sid, 0)) kick_locked();
          }
          done(r.error());
        };
        const std::uint64_t id = add_pending_locked(std::move(op));
        auto r = encoder_->subscribe(
            out_locked(), {.sid = sid, .pattern = pattern, .queue_group = group, .request_id = id});
        if (!r) {
          auto failed = take_pending_locked(id);
          lock.unlock();
          failed->on_ack(
              error{r.error(), "cannot encode the subscribe to " + proto::quote(pattern), false});
          return;
        }
        kick_locked();
      });
}

outcome<subscription> connection::subscribe(std::string_view pattern, message_handler handler,
                                            const subscribe_options& options) {
  if (on_io_thread()) return would_block("subscribe");
  auto p = std::make_shared<std::promise<outcome<subscription>>>();
  auto f = p->get_future();
  subscribe_async(pattern, std::move(handler), options,
                  [p](outcome<subscription> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "subscribe to " + proto::quote(pattern));
}

void connection::unsubscribe_async(subscription sub, done_handler done) {
  if (sub.sid == 0 || sub.sid == inbox_sid_.load(std::memory_order_relaxed))
    return done(error{errc::invalid_argument,
                      "unsubscribe: " + std::to_string(sub.sid) + " is not a subscription", false});
  if (!is_open()) return done(closed_error());
  asio::post(io_, [this, sid = sub.sid, done = std::move(done)]() mutable {
    const bool known = subs_.erase(sid) != 0;
    std::unique_lock lock(mu_);
    if (state_ != state::open) {
      auto e = closed_error_locked();
      lock.unlock();
      done(std::move(e));
      return;
    }
    if (!known) {
      lock.unlock();
      done(error{
          errc::invalid_argument,
          "unsubscribe: subscription " + std::to_string(sid) + " is not active on this connection",
          false});
      return;
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
      lock.unlock();
      failed->on_ack(error{errc::invalid_argument, "cannot encode the unsubscribe", false});
      return;
    }
    kick_locked();
  });
}

outcome<void> connection::unsubscribe(subscription sub) {
  if (on_io_thread()) return would_block("unsubscribe");
  auto p = std::make_shared<std::promise<outcome<void>>>();
  auto f = p->get_future();
  unsubscribe_async(sub, [p](outcome<void> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "unsubscribe of subscription " + std::to_string(sub.sid));
}

// ---- request / reply -------------------------------------------------------------

void connection::request_async(std::string_view subject, std::string_view payload,
                               std::chrono::milliseconds timeout, const request_options& options,
                               reply_handler done) {
  if (timeout.count() <= 0)
    return done(error{errc::invalid_argument,
                      "request to " + proto::quote(subject) + ": the timeout must be positive",
                      false});
  if (auto r = check_publish(subject, options.key, payload, options.headers, {}); !r)
    return done(r.error());
  std::unique_lock lock(mu_);
  if (!wait_room_locked(lock)) {
    auto e = closed_error_locked();
    lock.unlock();
    return done(std::move(e));
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
      lock.unlock();
      failed->on_reply(r.error());
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
          out_locked(), {.sid = sid, .pattern = pattern, .queue_group = {}, .request_id = inbox_op_})) {
    // Cannot happen with sane limits; leave the requests to their deadlines.
    return;
  }
  kick_locked();
}

outcome<message> connection::request(std::string_view subject, std::string_view payload,
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

void connection::flush_async(done_handler done) {
  std::unique_lock lock(mu_);
  if (state_ != state::open) {
    auto e = closed_error_locked();
    lock.unlock();
    return done(std::move(e));
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
    lock.unlock();
    failed->on_ack(error{errc::invalid_argument, "cannot encode a ping", false});
    return;
  }
  kick_locked();
}

outcome<void> connection::flush() {
  if (on_io_thread()) return would_block("flush");
  auto p = std::make_shared<std::promise<outcome<void>>>();
  auto f = p->get_future();
  flush_async([p](outcome<void> r) { p->set_value(std::move(r)); });
  return wait_for(f, options_.op_timeout, "flush");
}

void connection::close() {
  {
    std::lock_guard lock(mu_);
    if (state_ == state::open) {
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
