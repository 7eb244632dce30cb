// The IO-thread half of keyway::client::connection_impl: connect and the
// hello/welcome handshake, reconnect, the read loop and frame dispatch, the
// write loop, deadlines, and closing. Everything here runs on the connection's IO thread.
// User callbacks are called without mu_ held, inside try/catch: nothing a
// callback throws escapes into the io_context.
#include <pthread.h>

#include <asio/connect.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <charconv>
#include <cstring>

#include "client/connection_impl.hpp"
#include "proto/validate.hpp"

namespace keyway::client {
namespace {

namespace wire = proto::wire;

constexpr std::size_t max_handshake_frame = 1u << 20;

std::uint32_t load_u32(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Bytes of the frame that starts `bytes`, as far as it can be told: 8 until
/// the first word is in, then the segment table, then the whole frame. 0 if
/// the frame is not a sane handshake frame.
std::size_t handshake_needed(const std::vector<std::byte>& bytes) {
  if (bytes.size() < 8) return 8;
  const std::uint64_t count = std::uint64_t{load_u32(bytes.data())} + 1;
  if (count > 64) return 0;
  const std::size_t table = (4 + 4 * static_cast<std::size_t>(count) + 7) & ~std::size_t{7};
  if (bytes.size() < table) return table;
  std::uint64_t total = table;
  for (std::size_t i = 0; i < count; ++i)
    total += std::uint64_t{load_u32(bytes.data() + 4 + 4 * i)} * 8;
  return total > max_handshake_frame ? 0 : static_cast<std::size_t>(total);
}

/// The server's announced limits; a 0 keeps the client's default.
proto::limits limits_from(wire::Limits::Reader l) {
  proto::limits out =
      l.getMaxPayload() != 0 ? proto::limits::with_max_payload(l.getMaxPayload()) : proto::limits{};
  if (l.getMaxFrame() != 0) out.max_frame = l.getMaxFrame();
  if (l.getMaxSubject() != 0) out.max_subject = l.getMaxSubject();
  if (l.getMaxKey() != 0) out.max_key = l.getMaxKey();
  if (l.getMaxHeaders() != 0) out.max_headers = l.getMaxHeaders();
  if (l.getMaxHeaderBytes() != 0) out.max_header_bytes = l.getMaxHeaderBytes();
  if (l.getMaxSegments() != 0) out.max_segments = l.getMaxSegments();
  return out;
}

void assign(std::string& out, std::span<const std::byte> bytes) {
  out.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

template <class F>
void guarded(F&& f, const std::function<void(const error&)>& on_error) noexcept {
  try {
    f();
    return;
  } catch (const std::exception& e) {
    if (on_error) {
      try {
        on_error(error{errc::handler_failed, std::string("a callback threw: ") + e.what(), false});
      } catch (...) {
      }
    }
  } catch (...) {
    if (on_error) {
      try {
        on_error(error{errc::handler_failed, "a callback threw a non-std exception", false});
      } catch (...) {
      }
    }
  }
}

}  // namespace

void connection_impl::run_io() {
  pthread_setname_np(pthread_self(), "keyway-io");
  io_thread_id_.store(std::this_thread::get_id());
  for (;;) {
    try {
      io_.run();
      return;
    } catch (const std::exception& e) {
      // Handlers catch what user code throws; this is a last resort.
      report(error{errc::handler_failed, std::string("client IO thread: ") + e.what(), false});
    } catch (...) {
      report(error{errc::handler_failed, "client IO thread: unknown exception", false});
    }
  }
}

template <class... A, class F>
void connection_impl::call(const F& callback, A&&... args) {
  if (!callback) return;
  guarded([&] { callback(std::forward<A>(args)...); }, options_.on_error);
}

void connection_impl::report(const error& e) {
  guarded(
      [&] {
        if (options_.on_error) options_.on_error(e);
      },
      {});
}

// ---- connect and handshake -----------------------------------------------------

void connection_impl::try_servers(std::size_t left, std::string failures) {
  server_url url;
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closing || state_ == state::closed) return;
    // A server that announced lame duck comes last: skip it while another is left.
    const std::size_t n = servers_.size();
    std::size_t pick = next_server_ % n;
    for (std::size_t i = 0; i < n && servers_[pick].draining; ++i) pick = (pick + 1) % n;
    next_server_ = pick + 1;
    url = servers_[pick].url;
  }
  start_link(url, [this, left, failures = std::move(failures)](outcome<void> r) mutable {
    if (r) return link_up();
    failures += (failures.empty() ? "" : "; ") + r.error().to_string();
    {
      std::lock_guard lock(mu_);
      if (state_ == state::closing || state_ == state::closed) return;
    }
    if (left > 1) return try_servers(left - 1, std::move(failures));
    error e = r.error();
    if (servers_.size() > 1) e.message = "no server answered: " + failures;
    link_failed(std::move(e));
  });
}

void connection_impl::start_link(const server_url& url, std::function<void(outcome<void>)> done) {
  const std::uint64_t link = ++link_id_;
  link_url_ = url;
  connect_done_ = std::move(done);
  fallback_from_.clear();
  hello_version_ = proto::protocol_version;
  std::error_code ignored;
  socket_.close(ignored);
  connect_timer_.expires_after(options_.connect_timeout);
  connect_timer_.async_wait([this, link](std::error_code ec) {
    if (ec || link != link_id_ || !connect_done_) return;
    finish_handshake(error{errc::timeout,
                           "connecting to " + link_url_.to_string() + " timed out after " +
                               std::to_string(options_.connect_timeout.count()) +
                               " ms (connect timeout); is keywayd running there and reachable?",
                           false});
  });
  const auto connected = [this, link](std::error_code ec) {
    if (link == link_id_) on_connected(ec);
  };
  if (url.type == server_url::kind::unix_path) {
    socket_.async_connect(
        asio::generic::stream_protocol::endpoint(asio::local::stream_protocol::endpoint(url.path)),
        connected);
    return;
  }
  resolver_.async_resolve(
      url.host, std::to_string(url.port),
      [this, link, connected](std::error_code ec,
                              const asio::ip::tcp::resolver::results_type& results) {
        if (link != link_id_ || !connect_done_) return;
        if (ec) {
          finish_handshake(error{errc::connect_failed,
                                 "cannot resolve " + link_url_.host + " (" + link_url_.to_string() +
                                     "): " + ec.message(),
                                 false});
          return;
        }
        std::vector<asio::generic::stream_protocol::endpoint> endpoints;
        for (const auto& r : results) endpoints.emplace_back(r.endpoint());
        asio::async_connect(
            socket_, endpoints,
            [connected](std::error_code e, const asio::generic::stream_protocol::endpoint&) {
              connected(e);
            });
      });
}

void connection_impl::on_connected(std::error_code ec) {
  if (!connect_done_) return;
  if (ec) {
    finish_handshake(error{errc::connect_failed,
                           "cannot connect to " + link_url_.to_string() + ": " + ec.message() +
                               "; is keywayd running there?",
                           false});
    return;
  }
  std::error_code ignored;
  if (link_url_.type == server_url::kind::tcp)
    socket_.set_option(asio::ip::tcp::no_delay(true), ignored);  // we batch writes ourselves
  peer_ = socket_.remote_endpoint(ignored);
  send_hello();
}

/// A version-1 server refused our hello: connect again to the address that
/// answered and say 1. False when the connection is being closed.
bool connection_impl::retry_with_version_1(std::string_view refusal) {
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closing || state_ == state::closed) return false;
  }
  std::error_code ec;
  fallback_from_ = "the server refused protocol version " + std::to_string(hello_version_) + " (" +
                   std::string(refusal) + ") and the client tried again with 1";
  hello_version_ = proto::min_protocol_version;
  socket_.close(ec);
  socket_.async_connect(peer_, [this, link = link_id_](std::error_code e) {
    if (link == link_id_) on_connected(e);
  });
  return true;
}

void connection_impl::send_hello() {
  proto::limits small;
  small.max_frame = 64 * 1024;
  proto::encoder enc(small);
  proto::hello_fields h;
  h.protocol_version = hello_version_;
  h.client_name = options_.client_name;
  h.auth_token = options_.auth_token;
  if (auto r = enc.hello(writing_, h); !r) {
    finish_handshake(error{errc::invalid_argument,
                           "cannot encode hello (client name of " +
                               std::to_string(h.client_name.size()) + " bytes, auth token of " +
                               std::to_string(h.auth_token.size()) +
                               " bytes): " + r.error().message(),
                           false});
    return;
  }
  const auto bytes = writing_.front();
  asio::async_write(
      socket_, asio::buffer(bytes.data(), bytes.size()),
      [this, link = link_id_](std::error_code ec, std::size_t n) {
        if (link != link_id_ || !connect_done_) return;
        if (ec) {
          writing_.clear();
          finish_handshake(error{errc::connect_failed,
                                 "sending hello to " + link_url_.to_string() + ": " + ec.message(),
                                 false});
          return;
        }
        writing_.consume(n);
        handshake_bytes_.clear();
        read_handshake_frame(0, 8);
      });
}

// The welcome is read with exact reads, frame by frame, so that no byte after
// it lands in a decoder made before the server's limits are known.
void connection_impl::read_handshake_frame(std::size_t have, std::size_t need) {
  handshake_bytes_.resize(need);
  asio::async_read(
      socket_, asio::buffer(handshake_bytes_.data() + have, need - have),
      [this, need, link = link_id_](std::error_code ec, std::size_t) {
        if (link != link_id_ || !connect_done_) return;
        if (ec) {
          const std::string why = ec == asio::error::eof
                                      ? std::string("the server closed the connection")
                                      : ec.message();
          finish_handshake(error{errc::connect_failed,
                                 "handshake with " + link_url_.to_string() + " failed: " + why +
                                     " before sending welcome",
                                 false});
          return;
        }
        const std::size_t total = handshake_needed(handshake_bytes_);
        if (total == 0) {
          finish_handshake(error{errc::bad_server_frame,
                                 "the server at " + link_url_.to_string() +
                                     " did not answer with a keyway frame; is it keywayd?",
                                 false});
          return;
        }
        if (total > need) return read_handshake_frame(need, total);
        on_handshake_frame();
      });
}

void connection_impl::on_handshake_frame() {
  proto::decoder dec(proto::limits{}, handshake_bytes_.size());
  dec.feed(handshake_bytes_);
  auto next = dec.next();
  if (!next || !next->has_value()) {
    finish_handshake(error{errc::bad_server_frame,
                           "the server at " + link_url_.to_string() +
                               " sent an unreadable handshake frame: " + dec.error().message(),
                           false});
    return;
  }
  const wire::Frame::Reader root = (**next).root();
  switch (root.which()) {
    case wire::Frame::WELCOME: {
      const auto w = root.getWelcome();
      if (w.getProtocolVersion() < proto::min_protocol_version ||
          w.getProtocolVersion() > proto::protocol_version) {
        finish_handshake(
            error{proto::errc::unsupported_version,
                  "the server chose protocol version " + std::to_string(w.getProtocolVersion()) +
                      ", this client speaks " + std::to_string(proto::min_protocol_version) +
                      " to " + std::to_string(proto::protocol_version),
                  false});
        return;
      }
      server_info& info = welcome_info_;
      info = {};
      info.url = link_url_.to_string();
      info.server_id = std::string(proto::as_string_view(w.getServerId()));
      info.server_version = std::string(proto::as_string_view(w.getServerVersion()));
      info.protocol_version = w.getProtocolVersion();
      info.worker_count = w.getWorkerCount();
      welcome_limits_ = limits_from(w.getLimits());
      const proto::limits& l = welcome_limits_;
      info.limits = {l.max_payload, l.max_frame,        l.max_subject, l.max_key,
                     l.max_headers, l.max_header_bytes, l.max_segments};
      info.max_subscriptions = w.getLimits().getMaxSubscriptions();
      info.max_pending_bytes = w.getLimits().getMaxPendingBytes();
      for (const auto url : w.getConnectUrls())
        info.connect_urls.emplace_back(proto::as_string_view(url));
      decoder_.emplace(welcome_limits_, 64 * 1024);
      finish_handshake({});
      return;
    }
    case wire::Frame::ERROR: {
      const auto e = root.getError();
      // Servers of protocol version 2 and later answer a higher hello with
      // the version both speak; a version-1 server refused anything but 1
      // with a fatal unsupportedVersion and closed. Say 1 to it on a new
      // connection, within the same connect timeout.
      if (proto::from_wire(e.getCode()) == proto::errc::unsupported_version && e.getFatal() &&
          hello_version_ > proto::min_protocol_version &&
          retry_with_version_1(proto::as_string_view(e.getMessage())))
        return;
      finish_handshake(error{proto::make_error_code(proto::from_wire(e.getCode())),
                             std::string(proto::as_string_view(e.getMessage())), true});
      return;
    }
    default:
      finish_handshake(error{errc::bad_server_frame,
                             "the server at " + link_url_.to_string() + " sent '" +
                                 std::string(proto::kind_name(root.which())) +
                                 "' instead of welcome",
                             false});
  }
}

void connection_impl::finish_handshake(outcome<void> result) {
  auto done = std::move(connect_done_);
  connect_done_ = nullptr;
  handshake_bytes_ = {};
  connect_timer_.cancel();
  if (!result && !fallback_from_.empty()) {
    error e = result.error();
    e.message += " (" + fallback_from_ + ")";
    result = std::move(e);
  }
  if (!result) {
    std::error_code ignored;
    resolver_.cancel();
    socket_.close(ignored);
  }
  done(std::move(result));
}

void connection_impl::link_up() {
  bool first = false;
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closing || state_ == state::closed) return;
    first = state_ == state::connecting;
    const proto::limits encoded_with = limits_;  // what out_'s frames were checked against
    info_ = welcome_info_;
    limits_ = welcome_limits_;
    // Servers the welcome announced join the list (after the configured ones).
    for (const std::string& announced : info_.connect_urls) {
      auto u = parse_url(announced);
      if (!u) continue;
      const std::string canonical = u->to_string();
      bool known = false;
      for (const server_entry& e : servers_) known = known || e.url.to_string() == canonical;
      if (!known) servers_.push_back({std::move(*u), true, false});
    }
    for (server_entry& e : servers_)
      if (e.url.to_string() == info_.url) e.draining = false;
    encoder_.emplace(limits_);
    if (first)
      state_ = state::open;
    else
      restore_link_locked(encoded_with);
  }
  open_.store(true, std::memory_order_release);
  failed_attempts_ = 0;
  reconnect_round_ = 0;
  was_up_ = true;
  start_read();
  if (first) {
    auto done = std::move(initial_done_);
    initial_done_ = nullptr;
    if (done) done(outcome<void>{});
    return;
  }
  if (restore_left_ == 0) return finish_restore();
  std::lock_guard lock(mu_);
  kick_locked();  // the subscribes in writing_
}

// The new link's first frames: a subscribe for every live subscription (the
// reply inbox included), written from writing_ while state_ stays
// `reconnecting` (publishers keep buffering). What out_ held waits in held_,
// minus the frames that belonged to the old link (its subscribes and
// unsubscribes, which subs_ now stands for, and pongs). A subscribe call that
// was waiting for its ack is answered by its subscription's new ack.
void connection_impl::restore_link_locked(const proto::limits& encoded_with) {
  std::vector<std::byte> all;
  (void)out_locked();  // seal a staged batch
  out_.drain_to(all);
  held_.clear();
  if (!all.empty()) {
    proto::decoder frames(encoded_with, all.size());
    frames.feed(all);
    std::size_t at = 0;
    for (;;) {
      auto next = frames.next();
      if (!next || !next->has_value()) break;  // our own frames: always readable
      const proto::frame& f = **next;
      const auto w = f.which();
      if (w == wire::Frame::PUBLISH || w == wire::Frame::PUBLISH_BATCH || w == wire::Frame::PING)
        held_.insert(held_.end(), all.begin() + static_cast<std::ptrdiff_t>(at),
                     all.begin() + static_cast<std::ptrdiff_t>(at + f.wire_size()));
      at += f.wire_size();
    }
  }
  restoring_ = true;
  restore_left_ = 0;
  const std::uint64_t link = link_id_;
  const auto resubscribe = [&](std::uint32_t sid, const std::string& pattern,
                               const std::string& group,
                               std::function<void(outcome<std::uint32_t>)> then) {
    pending_op op;
    op.kind = op_kind::resubscribe;
    op.what = "subscribe again to " + proto::quote(pattern);
    op.timeout = options_.op_timeout;
    op.on_ack = [this, link, then = std::move(then)](outcome<std::uint32_t> r) {
      if (link != link_id_) return;  // that link is gone too
      then(std::move(r));
      if (--restore_left_ == 0) finish_restore();
    };
    const std::uint64_t id = add_pending_locked(std::move(op));
    if (auto r = encoder_->subscribe(
            writing_, {.sid = sid, .pattern = pattern, .queue_group = group, .request_id = id});
        !r) {
      auto failed = take_pending_locked(id);
      asio::post(io_, [this, failed = std::move(*failed), id, e = r.error()]() mutable {
        ++restore_left_;
        complete(failed, id, error{e, "cannot encode the subscribe", false});
      });
      return;
    }
    ++restore_left_;
  };
  if (inbox_ != inbox_state::none) {
    resubscribe(inbox_sid_.load(std::memory_order_relaxed), inbox_prefix_ + "*", {},
                [this](outcome<std::uint32_t> r) {
                  std::optional<pending_op> first;
                  {
                    std::lock_guard lock(mu_);
                    if (inbox_ == inbox_state::subscribing) first = take_pending_locked(inbox_op_);
                  }
                  if (first) return complete_inbox(std::move(r));
                  if (!r) report(r.error());
                });
  }
  for (const auto& [sid, e] : subs_) {
    resubscribe(sid, e.pattern, e.group, [this, sid = sid](outcome<std::uint32_t> r) {
      auto it = subs_.find(sid);
      if (it == subs_.end()) return;
      const std::uint64_t original = it->second.pending_op;
      if (!r) {
        report(error{r.error().code,
                     "subscription " + std::to_string(sid) + " to " +
                         proto::quote(it->second.pattern) + " could not be re-established on " +
                         info_.url + " and has ended: " + r.error().message,
                     r.error().from_server});
        remove_sub(sid);
      }
      std::optional<pending_op> op;
      if (original != 0) {
        std::lock_guard lock(mu_);
        op = take_pending_locked(original);
      }
      if (op) complete(*op, original, std::move(r));
    });
  }
}

void connection_impl::unhold_locked() {
  if (held_.empty()) return;
  std::vector<std::byte> since;
  (void)out_locked();
  out_.drain_to(since);
  out_.append(held_);
  out_.append(since);
  held_.clear();
}

void connection_impl::finish_restore() {
  {
    std::lock_guard lock(mu_);
    if (state_ != state::reconnecting || !restoring_) return;
    restoring_ = false;
    unhold_locked();
    state_ = state::open;
    kick_locked();
  }
  stats_.reconnects.add(1);
  call(options_.on_reconnected);
}

// ---- reading ---------------------------------------------------------------------

void connection_impl::start_read() {
  auto buf = decoder_->prepare(64 * 1024);
  socket_.async_read_some(asio::buffer(buf.data(), buf.size()),
                          [this, link = link_id_](std::error_code ec, std::size_t n) {
                            if (link == link_id_) on_read(ec, n);
                          });
}

void connection_impl::on_read(std::error_code ec, std::size_t n) {
  state st;
  {
    std::lock_guard lock(mu_);
    st = state_;
  }
  if (st == state::closed) return;
  if (ec) {
    if (st == state::closing) return finish_close();  // the server saw our half-close
    if (fatal_) return link_lost(*fatal_);
    if (ec == asio::error::eof)
      return link_lost(error{
          errc::closed, "the server closed the connection to " + link_url_.to_string(), false});
    return link_lost(error{
        errc::closed, "connection to " + link_url_.to_string() + " lost: " + ec.message(), false});
  }
  decoder_->commit(n);
  const std::uint64_t link = link_id_;
  for (;;) {
    auto next = decoder_->next();
    if (!next) {
      return link_lost(error{errc::bad_server_frame,
                             "the server sent an unreadable frame: " + decoder_->error().message(),
                             false});
    }
    if (!next->has_value()) break;
    const proto::frame& f = **next;
    if (auto v = proto::validate_server_frame(f, limits_); !v) {
      return link_lost(error{errc::bad_server_frame,
                             "the server sent an invalid '" +
                                 std::string(proto::kind_name(f.which())) +
                                 "' frame: " + v.message(),
                             false});
    }
    dispatch(f);
    if (link != link_id_) return;  // the link was given up (lame duck)
  }
  if (options_.on_batch_end) guarded(options_.on_batch_end, options_.on_error);
  start_read();
}

void connection_impl::dispatch(const proto::frame& f) {
  if (const proto::delivery_view* d = f.delivery()) return on_message(*d);
  if (const proto::message_batch_view* b = f.message_batch()) {
    proto::for_each_delivery(*b, [&](const proto::delivery_view& d) { on_message(d); });
    return;
  }
  const wire::Frame::Reader root = f.root();
  switch (root.which()) {
    case wire::Frame::ACK:
      on_ack(root.getAck().getRequestId(), root.getAck().getDelivered());
      return;
    case wire::Frame::ERROR:
      on_error_frame(root.getError());
      return;
    case wire::Frame::PING: {
      std::lock_guard lock(mu_);
      if (state_ == state::open && encoder_->pong(out_locked(), root.getPing().getId()))
        kick_locked();
      return;
    }
    case wire::Frame::PONG:
      on_ack(root.getPong().getId(), 0);
      return;
    case wire::Frame::DRAINING:
      on_draining(proto::as_string_view(root.getDraining().getReason()));
      return;
    default:
      return;  // a second welcome, or a newer server's kind: ignored
  }
}

void connection_impl::on_message(const proto::delivery_view& m) {
  rx_.subject.assign(m.subject);
  assign(rx_.key, m.key);
  assign(rx_.payload, m.payload);
  rx_.reply_to.assign(m.reply_to);
  rx_.headers.resize(m.headers.size());
  for (std::size_t i = 0; i < m.headers.size(); ++i) {
    rx_.headers[i].name.assign(m.headers[i].name);
    assign(rx_.headers[i].value, m.headers[i].value);
  }
  rx_.owner_core = m.owner_core;
  rx_.seq = m.seq;
  rx_.sid = m.sid;
  if (rx_.sid == inbox_sid_.load(std::memory_order_relaxed)) return on_inbox_reply();
  auto it = subs_.find(rx_.sid);
  if (it == subs_.end()) return;  // unsubscribed a moment ago
  stats_.in_msgs.add(1);
  stats_.in_bytes.add(rx_.payload.size());
  sub_entry& sub = it->second;
  const bool last = sub.max_messages != 0 && ++sub.delivered >= sub.max_messages;
  if (!last) {
    if (sub.max_messages == 0) ++sub.delivered;
    guarded([&] { sub.handler(rx_); }, options_.on_error);
    return;
  }
  // Auto-unsubscribe: this is the last one. The entry goes first, so that a
  // handler that subscribes again does not meet it.
  const message_handler handler = std::move(sub.handler);
  const std::uint32_t sid = rx_.sid;
  remove_sub(sid);
  {
    std::lock_guard lock(mu_);
    if (state_ == state::open && encoder_->unsubscribe(out_locked(), sid, 0)) kick_locked();
  }
  guarded([&] { handler(rx_); }, options_.on_error);
}

// Lame duck: the server is shutting down. With another server to go to, move
// now (as for a lost link); else stay until the server closes the link, and
// reconnect then (to the same address, when it is back).
void connection_impl::on_draining(std::string_view reason) {
  bool elsewhere = false;
  {
    std::lock_guard lock(mu_);
    for (server_entry& e : servers_) {
      if (e.url.to_string() == info_.url)
        e.draining = true;
      else
        elsewhere = elsewhere || !e.draining;
    }
  }
  call(options_.on_lame_duck);
  if (elsewhere)
    link_lost(error{proto::errc::shutting_down,
                    "the server at " + info_.url + " is shutting down (" + std::string(reason) +
                        "); moving to another server",
                    true});
}

void connection_impl::remove_sub(std::uint32_t sid) {
  subs_.erase(sid);
  std::shared_ptr<sync_queue> queue;
  {
    std::lock_guard lock(mu_);
    if (auto it = sync_queues_.find(sid); it != sync_queues_.end()) queue = it->second;
  }
  if (!queue) return;
  std::lock_guard lock(queue->mu);
  queue->done = true;
  queue->cv.notify_all();
}

void connection_impl::on_inbox_reply() {
  const std::string_view subject = rx_.subject;
  if (!subject.starts_with(inbox_prefix_)) return;
  const std::string_view token = subject.substr(inbox_prefix_.size());
  std::uint64_t id = 0;
  const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
  if (ec != std::errc{} || end != token.data() + token.size()) return;
  std::optional<pending_op> op;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(id);
    if (it == pending_.end() || it->second.kind != op_kind::request)
      return;  // late: timed out already
    op = take_pending_locked(id);
  }
  guarded([&] { op->on_reply(message(rx_)); }, options_.on_error);
}

void connection_impl::on_ack(std::uint64_t id, std::uint32_t delivered) {
  std::optional<pending_op> op;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(id);
    // A request's ack only says how many responders got it; it waits for a reply.
    if (it == pending_.end() || it->second.kind == op_kind::request) return;
    op = take_pending_locked(id);
  }
  complete(*op, id, delivered);
}

void connection_impl::on_error_frame(wire::Error::Reader e) {
  error err{proto::make_error_code(proto::from_wire(e.getCode())),
            std::string(proto::as_string_view(e.getMessage())), true};
  if (e.getFatal()) fatal_ = err;  // reported when the server closes the socket
  if (const std::uint64_t id = e.getRequestId(); id != 0) {
    std::optional<pending_op> op;
    {
      std::lock_guard lock(mu_);
      op = take_pending_locked(id);
    }
    if (op) return complete(*op, id, std::move(err));
  }
  if (!e.getFatal()) report(err);
}

void connection_impl::complete(pending_op& op, std::uint64_t, outcome<std::uint32_t> result) {
  switch (op.kind) {
    case op_kind::request:
      if (!result) guarded([&] { op.on_reply(result.error()); }, options_.on_error);
      return;
    case op_kind::inbox:
      return complete_inbox(std::move(result));
    default:
      guarded([&] { op.on_ack(std::move(result)); }, options_.on_error);
  }
}

void connection_impl::complete_inbox(outcome<std::uint32_t> result) {
  std::vector<std::pair<pending_op, error>> failed;
  {
    std::lock_guard lock(mu_);
    if (result) {
      inbox_ = inbox_state::ready;
      for (const deferred_request& d : deferred_) {
        if (pending_.count(d.id) == 0) continue;  // timed out while waiting
        std::vector<header> headers;
        for (const auto& h : d.headers) headers.push_back({h.name, h.value});
        if (auto r = encode_publish_locked(d.subject, d.key, d.payload, headers,
                                           inbox_reply_to(d.id), d.id);
            !r)
          failed.emplace_back(std::move(*take_pending_locked(d.id)), r.error());
      }
    } else {
      inbox_ = inbox_state::none;
      inbox_sid_.store(0, std::memory_order_relaxed);
      const error e{result.error().code,
                    "cannot subscribe the reply inbox " + proto::quote(inbox_prefix_ + "*") + ": " +
                        result.error().message,
                    result.error().from_server};
      for (const deferred_request& d : deferred_) {
        if (auto op = take_pending_locked(d.id)) failed.emplace_back(std::move(*op), e);
      }
    }
    deferred_.clear();
  }
  for (auto& [op, e] : failed) guarded([&] { op.on_reply(e); }, options_.on_error);
}

// ---- writing ---------------------------------------------------------------------

void connection_impl::start_write() {
  bool closing = false;
  {
    std::lock_guard lock(mu_);
    const bool restoring = restoring_ && state_ == state::reconnecting;
    if (state_ != state::open && state_ != state::closing && !restoring) {
      // No link (connecting, reconnecting) or closed: link_up() kicks again.
      write_scheduled_ = false;
      return;
    }
    // Everything the callers queued since the last write goes out in one go
    // (while restoring, only the subscribes already in writing_).
    if (writing_.empty() && !restoring) {
      std::swap(out_locked(), writing_);
      writing_publishes_ = out_publishes_;
      out_publishes_ = 0;
      ++out_gen_;
    }
    if (writing_.empty()) {
      write_scheduled_ = false;
      closing = state_ == state::closing;
    }
  }
  room_cv_.notify_all();
  if (writing_.empty()) {
    if (closing) half_close();
    return;
  }
  std::span<const std::byte> pieces[16];
  const std::size_t n = writing_.gather(pieces);
  for (std::size_t i = 0; i < n; ++i) iov_[i] = asio::buffer(pieces[i].data(), pieces[i].size());
  socket_.async_write_some(std::span<const asio::const_buffer>(iov_.data(), n),
                           [this, link = link_id_](std::error_code ec, std::size_t written) {
                             if (link == link_id_) on_write(ec, written);
                           });
}

void connection_impl::on_write(std::error_code ec, std::size_t n) {
  if (ec) {
    state st;
    {
      std::lock_guard lock(mu_);
      st = state_;
      write_scheduled_ = false;
    }
    if (st == state::closed) return;
    if (st == state::closing) return finish_close();
    if (fatal_) return link_lost(*fatal_);
    return link_lost(error{
        errc::closed, "writing to " + link_url_.to_string() + " failed: " + ec.message(), false});
  }
  writing_.consume(n);
  if (writing_.empty()) {
    std::lock_guard lock(mu_);
    writing_publishes_ = 0;
  }
  start_write();
}

// ---- deadlines -------------------------------------------------------------------

void connection_impl::arm_timer() {
  clock::time_point when;
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closed || deadlines_.empty()) {
      timer_at_.reset();
      return;
    }
    when = deadlines_.begin()->first;
    timer_at_ = when;
  }
  deadline_timer_.expires_at(when);
  deadline_timer_.async_wait([this](std::error_code ec) {
    if (!ec) on_deadline();
  });
}

void connection_impl::on_deadline() {
  std::vector<std::pair<std::uint64_t, pending_op>> expired;
  {
    std::lock_guard lock(mu_);
    const auto now = clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      const std::uint64_t id = deadlines_.begin()->second;
      if (auto op = take_pending_locked(id))
        expired.emplace_back(id, std::move(*op));
      else
        deadlines_.erase(deadlines_.begin());
    }
  }
  for (auto& [id, op] : expired) {
    const std::string ms = std::to_string(op.timeout.count()) + " ms";
    std::string why = op.kind == op_kind::request
                          ? op.what + " timed out after " + ms + " without a reply"
                          : "no answer to " + op.what + " within " + ms;
    complete(op, id, error{errc::timeout, std::move(why), false});
  }
  arm_timer();
}

// ---- closing ---------------------------------------------------------------------

void connection_impl::begin_close() {
  bool idle = false;
  bool linked = false;
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closed) {
      // Already closed (a failed connect, a lost link, given up): just finish.
    } else if (state_ == state::connecting || state_ == state::reconnecting) {
      state_ = state::closing;
    } else {
      state_ = state::closing;
      idle = !write_scheduled_;
      linked = true;
    }
    open_.store(false, std::memory_order_release);
  }
  room_cv_.notify_all();
  reconnect_timer_.cancel();
  if (!linked || !socket_.is_open() || !decoder_ || connect_done_) return finish_close();
  close_timer_.expires_after(options_.op_timeout);
  close_timer_.async_wait([this](std::error_code ec) {
    if (!ec) finish_close();
  });
  if (idle) half_close();
}

// Everything is written: tell the server, and wait for it to close its side
// (on_read sees EOF), so that it has read every frame before the socket goes.
void connection_impl::half_close() {
  if (half_closed_) return;
  half_closed_ = true;
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_send, ignored);
}

void connection_impl::finish_close() {
  shut_down(error{errc::closed, "closed by the application", false});
  work_.reset();  // io_.run() returns once the cancelled operations have completed
}

// ---- losing a link, reconnecting -------------------------------------------------------

void connection_impl::link_lost(const error& reason) {
  state st;
  {
    std::lock_guard lock(mu_);
    st = state_;
  }
  if (st == state::closing) return finish_close();  // close() was under way
  if (st != state::open && !(st == state::reconnecting && restoring_)) return;
  if (!options_.reconnect.enabled || status() == connection_status::draining) {
    shut_down(reason);
    return;
  }
  ++link_id_;  // the old link's handlers return
  std::vector<std::pair<std::uint64_t, pending_op>> lost;
  std::vector<std::pair<std::uint64_t, pending_op>> done;
  {
    std::lock_guard lock(mu_);
    state_ = state::reconnecting;
    write_scheduled_ = false;
    restoring_ = false;
    unhold_locked();
    // Calls whose frames went to the lost socket: their fate is unknown.
    for (auto it = pending_.begin(); it != pending_.end();) {
      pending_op& op = it->second;
      const bool sent = op.gen < out_gen_;
      const bool fails = sent && (op.kind == op_kind::publish_ack || op.kind == op_kind::request ||
                                  op.kind == op_kind::ping);
      if (op.kind == op_kind::resubscribe) {  // the next link subscribes again
        if (op.deadline) deadlines_.erase(*op.deadline);
        it = pending_.erase(it);
        continue;
      }
      if (fails || op.kind == op_kind::unsubscribe) {
        if (op.deadline) deadlines_.erase(*op.deadline);
        op.deadline.reset();
        (fails ? lost : done).emplace_back(it->first, std::move(op));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    stats_.lost.add(writing_publishes_);
    writing_publishes_ = 0;
    for (server_entry& e : servers_)
      if (e.url.to_string() == info_.url)
        next_server_ = static_cast<std::size_t>(&e - servers_.data()) + 1;
  }
  room_cv_.notify_all();
  writing_.clear();
  fatal_.reset();
  half_closed_ = false;
  std::error_code ignored;
  socket_.close(ignored);
  const error failed{errc::connection_lost,
                     "the connection to " + link_url_.to_string() +
                         " was lost before the server answered (" + reason.to_string() +
                         "); it may or may not have taken effect",
                     false};
  for (auto& [id, op] : lost) complete(op, id, failed);
  // An unsubscribe needs no answer any more: no later link will subscribe it.
  for (auto& [id, op] : done) complete(op, id, std::uint32_t{0});
  call(options_.on_disconnected, reason);
  try_servers(servers_.size(), {});
}

void connection_impl::link_failed(error why) {
  bool initial = false;
  {
    std::lock_guard lock(mu_);
    initial = state_ == state::connecting;
  }
  if (initial) {
    auto done = std::move(initial_done_);
    initial_done_ = nullptr;
    {
      std::lock_guard lock(mu_);
      state_ = state::closed;
      close_reason_ = why.to_string();
    }
    if (done) done(std::move(why));
    return;
  }
  ++failed_attempts_;
  const int max = options_.reconnect.max_attempts;
  if (max >= 0 && failed_attempts_ > max) {
    why.message = "gave up reconnecting after " + std::to_string(failed_attempts_) +
                  " failed rounds (reconnect.max_attempts " + std::to_string(max) +
                  "): " + why.message;
    shut_down(why);
    return;
  }
  schedule_reconnect();
}

void connection_impl::schedule_reconnect() {
  const reconnect_options& o = options_.reconnect;
  const auto shift = std::min<std::uint32_t>(reconnect_round_++, 20);
  const std::chrono::milliseconds base =
      std::min<std::chrono::milliseconds>(o.max_wait, o.initial_wait * (std::int64_t{1} << shift));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const auto wait = std::chrono::milliseconds(
      static_cast<std::int64_t>(static_cast<double>(base.count()) * (1.0 - o.jitter * u(rng_))));
  reconnect_timer_.expires_after(wait);
  reconnect_timer_.async_wait([this](std::error_code ec) {
    if (!ec) try_servers(servers_.size(), {});
  });
}

void connection_impl::shut_down(const error& reason) {
  std::vector<std::pair<std::uint64_t, pending_op>> ops;
  std::vector<std::shared_ptr<sync_queue>> queues;
  {
    std::lock_guard lock(mu_);
    if (state_ == state::closed && pending_.empty() && !socket_.is_open()) return;
    state_ = state::closed;
    open_.store(false, std::memory_order_release);
    if (close_reason_.empty()) close_reason_ = reason.to_string();
    for (auto& [id, op] : pending_) ops.emplace_back(id, std::move(op));
    pending_.clear();
    deadlines_.clear();
    deferred_.clear();
    timer_at_.reset();
    out_.clear();
    batch_entries_.clear();
    batch_count_ = 0;
    inbox_ = inbox_state::none;
    for (auto& [sid, q] : sync_queues_) queues.push_back(q);
  }
  room_cv_.notify_all();
  ++link_id_;
  std::error_code ignored;
  resolver_.cancel();
  socket_.close(ignored);
  connect_timer_.cancel();
  deadline_timer_.cancel();
  close_timer_.cancel();
  reconnect_timer_.cancel();
  const error failed{errc::closed,
                     "connection to " + link_url_.to_string() + " closed: " + reason.to_string(),
                     false};
  for (auto& [id, op] : ops) complete(op, id, failed);
  subs_.clear();
  for (const auto& q : queues) {
    std::lock_guard lock(q->mu);
    q->done = true;
    q->cv.notify_all();
  }
  if (was_up_) {
    was_up_ = false;
    call(options_.on_closed, reason);
  }
}

}  // namespace keyway::client
