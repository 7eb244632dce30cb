#include "tests/support/raw_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <sstream>

namespace keyway::itest {

namespace wire = proto::wire;

namespace {

std::string text(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}
std::string data(capnp::Data::Reader d) {
  return std::string(reinterpret_cast<const char*>(d.begin()), d.size());
}

std::string errno_text(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

int poll_ms(steady::time_point deadline) {
  const auto left = std::chrono::ceil<ms>(deadline - steady::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

}  // namespace

std::string describe(const server_frame& f) {
  std::ostringstream os;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, welcome_frame>) {
          os << "welcome{server " << v.server_id << " v" << v.protocol_version << " workers "
             << v.worker_count << "}";
        } else if constexpr (std::is_same_v<T, message_frame>) {
          os << "message{sid " << v.sid << " subject '" << v.subject << "' key '" << v.key
             << "' payload " << v.payload.size() << " bytes core " << v.owner_core << " seq "
             << v.seq << "}";
        } else if constexpr (std::is_same_v<T, ack_frame>) {
          os << "ack{id " << v.request_id << " delivered " << v.delivered << "}";
        } else if constexpr (std::is_same_v<T, error_frame>) {
          os << "error{" << proto::to_string(v.code) << (v.fatal ? " fatal" : " non-fatal")
             << " id " << v.request_id << " '" << v.message << "'}";
        } else if constexpr (std::is_same_v<T, ping_frame>) {
          os << "ping{" << v.id << "}";
        } else if constexpr (std::is_same_v<T, pong_frame>) {
          os << "pong{" << v.id << "}";
        } else if constexpr (std::is_same_v<T, draining_frame>) {
          os << "draining{grace " << v.grace_ms << " ms '" << v.reason << "'}";
        } else {
          os << "other{kind " << v.which << "}";
        }
      },
      f);
  return os.str();
}

std::string describe_deliveries(const std::vector<message_frame>& ms) {
  if (ms.empty()) return "no deliveries";
  return std::to_string(ms.size()) + " deliveries, the first " + describe(ms.front());
}

std::vector<std::byte> batch_entries(std::span<const batch_item> items) {
  std::size_t size = 0;
  for (const auto& e : items) size += proto::batch_entry_size(e.key.size(), e.payload.size());
  std::vector<std::byte> v(size);
  std::byte* at = v.data();
  for (const auto& e : items)
    at = proto::write_batch_entry(at, as_bytes(e.key), as_bytes(e.payload));
  return v;
}

// ---- life ----------------------------------------------------------------------

raw_client::raw_client(int fd)
    : fd_(fd), dec_(std::make_unique<proto::decoder>()), enc_(std::make_unique<proto::encoder>()) {}

raw_client::raw_client(raw_client&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      dec_(std::move(o.dec_)),
      enc_(std::move(o.enc_)),
      out_(std::move(o.out_)),
      backlog_(std::move(o.backlog_)),
      unbatched_(std::move(o.unbatched_)),
      message_batches_(o.message_batches_),
      eof_(o.eof_),
      reset_(o.reset_),
      bytes_in_(o.bytes_in_),
      next_id_(o.next_id_) {}

raw_client& raw_client::operator=(raw_client&& o) noexcept {
  if (this != &o) {
    close_fd();
    fd_ = std::exchange(o.fd_, -1);
    dec_ = std::move(o.dec_);
    enc_ = std::move(o.enc_);
    out_ = std::move(o.out_);
    backlog_ = std::move(o.backlog_);
    unbatched_ = std::move(o.unbatched_);
    message_batches_ = o.message_batches_;
    eof_ = o.eof_;
    reset_ = o.reset_;
    bytes_in_ = o.bytes_in_;
    next_id_ = o.next_id_;
  }
  return *this;
}

raw_client::~raw_client() {
  close_fd();
}

void raw_client::close() noexcept {
  close_fd();
  eof_ = true;
}

void raw_client::close_fd() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

raw_client raw_client::connect(std::string_view url, int rcvbuf) {
  int fd = -1;
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool tcp = false;
  if (url.starts_with("unix://")) {
    const std::string path(url.substr(7));
    sockaddr_un sa{};
    if (path.size() >= sizeof sa.sun_path) throw io_error("unix path too long: " + path);
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    std::memcpy(&ss, &sa, sizeof sa);
    len = sizeof sa;
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  } else if (url.starts_with("tcp://")) {
    tcp = true;
    const std::string_view rest = url.substr(6);
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) throw io_error("no port in " + std::string(url));
    std::string host(rest.substr(0, colon));
    const int port = std::stoi(std::string(rest.substr(colon + 1)));
    if (host.size() > 2 && host.front() == '[') {
      host = host.substr(1, host.size() - 2);
      sockaddr_in6 sa{};
      sa.sin6_family = AF_INET6;
      sa.sin6_port = htons(static_cast<std::uint16_t>(port));
      if (::inet_pton(AF_INET6, host.c_str(), &sa.sin6_addr) != 1)
        throw io_error("bad host in " + std::string(url));
      std::memcpy(&ss, &sa, sizeof sa);
      len = sizeof sa;
      fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    } else {
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_port = htons(static_cast<std::uint16_t>(port));
      if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1)
        throw io_error("bad host in " + std::string(url));
      std::memcpy(&ss, &sa, sizeof sa);
      len = sizeof sa;
      fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    }
  } else {
    throw io_error("unknown URL scheme: " + std::string(url));
  }
  if (fd < 0) throw io_error(errno_text("socket"));
  raw_client c(fd);  // owns fd from here on
  if (rcvbuf > 0 && ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0)
    throw io_error(errno_text("setsockopt(SO_RCVBUF)"));
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&ss), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) throw io_error(errno_text(("connect to " + std::string(url)).c_str()));
  if (tcp) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return c;
}

// ---- sending -------------------------------------------------------------------

void raw_client::send_raw(std::span<const std::byte> bytes, ms timeout) {
  if (fd_ < 0) throw io_error("send on a closed client");
  const auto deadline = steady::now() + timeout;
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (steady::now() >= deadline)
        throw io_error("send timed out with " + std::to_string(off) + " of " +
                       std::to_string(bytes.size()) +
                       " bytes written (the server stopped reading)");
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, poll_ms(deadline));
      continue;
    }
    throw io_error(errno_text("send"));
  }
}

void raw_client::check(const result<std::size_t>& r, const char* what) {
  if (!r) throw io_error(std::string("cannot encode ") + what + ": " + r.error().message());
}

void raw_client::queue_hello(const proto::hello_fields& f) {
  check(enc_->hello(out_, f), "hello");
}
void raw_client::queue_publish(const proto::publish_fields& f) {
  check(enc_->publish(out_, f), "publish");
}
void raw_client::queue_subscribe(const proto::subscribe_fields& f) {
  check(enc_->subscribe(out_, f), "subscribe");
}
void raw_client::queue_unsubscribe(std::uint32_t sid, std::uint64_t request_id) {
  check(enc_->unsubscribe(out_, sid, request_id), "unsubscribe");
}
void raw_client::queue_ping(std::uint64_t id) {
  check(enc_->ping(out_, id), "ping");
}
void raw_client::queue_publish_batch(std::string_view subject, std::uint32_t count,
                                     std::span<const std::byte> entries) {
  check(enc_->publish_batch(out_, subject, count, entries), "publishBatch");
}

void raw_client::flush(ms timeout) {
  const auto deadline = steady::now() + timeout;
  std::span<const std::byte> pieces[16];
  while (!out_.empty()) {
    const std::size_t n = out_.gather(pieces);
    std::size_t taken = 0;
    for (std::size_t i = 0; i < n; ++i) {
      send_raw(pieces[i], std::max(ms(0), std::chrono::ceil<ms>(deadline - steady::now())));
      taken += pieces[i].size();
    }
    out_.consume(taken);
  }
}

void raw_client::send_hello(std::uint32_t version, std::string_view name) {
  queue_hello({version, name, {}});
  flush();
}

void raw_client::send_publish_batch(std::string_view subject, std::span<const batch_item> items,
                                    std::optional<std::uint32_t> count_override) {
  const std::vector<std::byte> entries = batch_entries(items);
  queue_publish_batch(subject, count_override.value_or(static_cast<std::uint32_t>(items.size())),
                      entries);
  flush();
}

void raw_client::publish(std::string_view subject, std::string_view key, std::string_view payload,
                         std::string_view reply_to, std::uint64_t ack_id) {
  proto::publish_fields f;
  f.subject = subject;
  f.key = as_bytes(key);
  f.payload = as_bytes(payload);
  f.reply_to = reply_to;
  f.ack_id = ack_id;
  queue_publish(f);
  flush();
}

// ---- reading -------------------------------------------------------------------

bool raw_client::fill(steady::time_point deadline) {
  if (fd_ < 0) {
    eof_ = true;
    return true;
  }
  for (;;) {
    auto buf = dec_->prepare(64 * 1024);
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) {
      dec_->commit(static_cast<std::size_t>(n));
      bytes_in_ += static_cast<std::uint64_t>(n);
      return true;
    }
    if (n == 0) {
      eof_ = true;
      return true;
    }
    if (errno == EINTR) continue;
    if (errno == ECONNRESET || errno == EPIPE) {
      eof_ = reset_ = true;
      return true;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw io_error(errno_text("recv"));
    if (steady::now() >= deadline) return false;
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, 1, poll_ms(deadline));
  }
}

std::optional<server_frame> raw_client::decode_one() {
  if (!unbatched_.empty()) {
    server_frame f = std::move(unbatched_.front());
    unbatched_.pop_front();
    return f;
  }
  auto r = dec_->next();
  if (!r) throw io_error("the server sent an undecodable stream: " + dec_->error().message());
  if (!r->has_value()) return std::nullopt;
  const wire::Frame::Reader root = (*r)->root();
  switch (root.which()) {
    case wire::Frame::WELCOME: {
      auto w = root.getWelcome();
      auto l = w.getLimits();
      welcome_frame v;
      v.server_id = text(w.getServerId());
      v.server_version = text(w.getServerVersion());
      v.protocol_version = w.getProtocolVersion();
      v.worker_count = w.getWorkerCount();
      v.max_payload = l.getMaxPayload();
      v.max_frame = l.getMaxFrame();
      v.max_segments = l.getMaxSegments();
      v.max_pending_bytes = l.getMaxPendingBytes();
      for (auto url : w.getConnectUrls()) v.connect_urls.push_back(text(url));
      return v;
    }
    case wire::Frame::MESSAGE: {
      auto m = root.getMessage();
      message_frame v;
      v.sid = m.getSid();
      v.subject = text(m.getSubject());
      v.key = data(m.getKey());
      v.payload = data(m.getPayload());
      v.reply_to = text(m.getReplyTo());
      for (auto h : m.getHeaders()) v.headers.emplace_back(text(h.getName()), data(h.getValue()));
      v.owner_core = m.getOwnerCore();
      v.seq = m.getSeq();
      return v;
    }
    case wire::Frame::MESSAGE_BATCH: {
      // Checked here rather than trusted: the server's framing of entries.
      auto b = root.getMessageBatch();
      const std::string subject = text(b.getSubject());
      const capnp::Data::Reader entries = b.getEntries();
      proto::batch_cursor c({reinterpret_cast<const std::byte*>(entries.begin()), entries.size()},
                            proto::message_entry_head);
      proto::batch_entry e;
      std::uint32_t n = 0;
      for (; c.next(e); ++n) {
        message_frame v;
        v.sid = b.getSid();
        v.subject = subject;
        v.key.assign(reinterpret_cast<const char*>(e.key.data()), e.key.size());
        v.payload.assign(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
        v.owner_core = e.owner_core;
        v.seq = e.seq;
        unbatched_.push_back(std::move(v));
      }
      if (c.left() != 0 || n != b.getCount())
        throw io_error("the server sent a bad messageBatch: count " + std::to_string(b.getCount()) +
                       ", " + std::to_string(n) + " whole entries, " + std::to_string(c.left()) +
                       " bytes left over");
      ++message_batches_;
      return decode_one();  // its first entry (or the next frame, for an empty batch)
    }
    case wire::Frame::ACK: {
      auto a = root.getAck();
      return ack_frame{a.getRequestId(), a.getDelivered()};
    }
    case wire::Frame::ERROR: {
      auto e = root.getError();
      error_frame v;
      v.code = proto::from_wire(e.getCode());
      v.message = text(e.getMessage());
      v.request_id = e.getRequestId();
      v.fatal = e.getFatal();
      v.reply_to = text(e.getReplyTo());
      return v;
    }
    case wire::Frame::PING:
      return ping_frame{root.getPing().getId()};
    case wire::Frame::PONG:
      return pong_frame{root.getPong().getId()};
    case wire::Frame::DRAINING: {
      auto d = root.getDraining();
      return draining_frame{text(d.getReason()), d.getGraceMs()};
    }
    default:
      return other_frame{static_cast<int>(root.which())};
  }
}

std::optional<server_frame> raw_client::read_socket(steady::time_point deadline) {
  for (;;) {
    if (auto f = decode_one()) return f;
    if (eof_) return std::nullopt;
    if (!fill(deadline)) return std::nullopt;
  }
}

std::optional<server_frame> raw_client::read(ms timeout) {
  if (!backlog_.empty()) {
    server_frame f = std::move(backlog_.front());
    backlog_.pop_front();
    return f;
  }
  return read_socket(steady::now() + timeout);
}

std::vector<message_frame> raw_client::collect(std::size_t n, ms timeout) {
  const auto deadline = steady::now() + timeout;
  std::vector<message_frame> got;
  while (got.size() < n) {
    auto f =
        wait_for([](const server_frame& x) { return std::holds_alternative<message_frame>(x); },
                 std::max(ms(0), std::chrono::ceil<ms>(deadline - steady::now())));
    if (!f) break;
    got.push_back(std::get<message_frame>(std::move(*f)));
  }
  return got;
}

std::vector<message_frame> raw_client::collect_until_quiet(ms quiet, ms limit) {
  const auto deadline = steady::now() + limit;
  std::vector<message_frame> got;
  while (steady::now() < deadline) {
    auto f = wait_for(
        [](const server_frame& x) { return std::holds_alternative<message_frame>(x); }, quiet);
    if (!f) break;
    got.push_back(std::get<message_frame>(std::move(*f)));
  }
  return got;
}

bool raw_client::wait_closed(ms timeout, std::vector<server_frame>* seen) {
  const auto deadline = steady::now() + timeout;
  while (!backlog_.empty()) {
    if (seen) seen->push_back(std::move(backlog_.front()));
    backlog_.pop_front();
  }
  for (;;) {
    auto f = read_socket(deadline);
    if (f) {
      if (seen) seen->push_back(std::move(*f));
      continue;
    }
    return eof_;
  }
}

// ---- helpers -------------------------------------------------------------------

std::string raw_client::kept_back_summary() const {
  if (backlog_.empty()) return {};
  std::string s = "; frames kept back: " + std::to_string(backlog_.size());
  // The errors are what explains a failure; then the last frame.
  int shown = 0;
  for (const auto& f : backlog_) {
    if (std::holds_alternative<error_frame>(f) && shown++ < 3) s += "; " + describe(f);
  }
  s += "; last: " + describe(backlog_.back());
  return s;
}

welcome_frame raw_client::hello(std::string_view name, ms timeout) {
  return hello_version(proto::protocol_version, name, timeout);
}

welcome_frame raw_client::hello_version(std::uint32_t version, std::string_view name, ms timeout) {
  send_hello(version, name);
  auto f = read(timeout);
  if (!f)
    throw io_error(eof_ ? "connection closed before welcome" : "no welcome before the deadline");
  if (auto* w = std::get_if<welcome_frame>(&*f)) return *w;
  throw io_error("expected welcome, got " + describe(*f));
}

ack_frame raw_client::await_ack(std::uint64_t id, ms timeout) {
  auto f = wait_for(
      [id](const server_frame& x) {
        if (auto* a = std::get_if<ack_frame>(&x)) return a->request_id == id;
        if (auto* e = std::get_if<error_frame>(&x)) return e->request_id == id || e->fatal;
        return false;
      },
      timeout);
  if (!f)
    throw io_error("no ack for request " + std::to_string(id) +
                   (eof_ ? " (connection closed)" : " (timeout)") + kept_back_summary());
  if (auto* a = std::get_if<ack_frame>(&*f)) return *a;
  throw io_error("request " + std::to_string(id) + " answered with " + describe(*f));
}

error_frame raw_client::await_error(ms timeout) {
  auto f = wait_for([](const server_frame& x) { return std::holds_alternative<error_frame>(x); },
                    timeout);
  if (!f)
    throw io_error(std::string("no error frame came") +
                   (eof_ ? " (connection closed)" : " (timeout)") + kept_back_summary());
  return std::get<error_frame>(*f);
}

void raw_client::subscribe(std::uint32_t sid, std::string_view pattern, std::string_view group,
                           ms timeout) {
  const std::uint64_t id = next_id_++;
  queue_subscribe({sid, pattern, group, id});
  flush(timeout);
  (void)await_ack(id, timeout);
}

void raw_client::unsubscribe(std::uint32_t sid, ms timeout) {
  const std::uint64_t id = next_id_++;
  queue_unsubscribe(sid, id);
  flush(timeout);
  (void)await_ack(id, timeout);
}

ack_frame raw_client::publish_acked(std::string_view subject, std::string_view key,
                                    std::string_view payload, ms timeout) {
  const std::uint64_t id = next_id_++;
  publish(subject, key, payload, {}, id);
  return await_ack(id, timeout);
}

void raw_client::ping(ms timeout) {
  const std::uint64_t id = next_id_++;
  queue_ping(id);
  flush(timeout);
  auto f = wait_for(
      [id](const server_frame& x) {
        if (auto* p = std::get_if<pong_frame>(&x)) return p->id == id;
        return false;
      },
      timeout);
  if (!f)
    throw io_error("no pong for ping " + std::to_string(id) +
                   (eof_ ? " (connection closed)" : " (timeout)") + kept_back_summary());
}

std::vector<server_frame> raw_client::barrier(ms timeout) {
  const std::uint64_t id = next_id_++;
  queue_ping(id);
  flush(timeout);
  const auto deadline = steady::now() + timeout;
  std::vector<server_frame> before;
  for (;;) {
    auto f = read(std::max(ms(0), std::chrono::ceil<ms>(deadline - steady::now())));
    if (!f)
      throw io_error("no pong for barrier ping " + std::to_string(id) +
                     (eof_ ? " (connection closed)" : " (timeout)") + "; " +
                     std::to_string(before.size()) + " frames before it");
    if (const auto* p = std::get_if<pong_frame>(&*f); p && p->id == id) return before;
    before.push_back(std::move(*f));
  }
}

// ---- sentinels -------------------------------------------------------------------

sentinels::sentinels() {
  static std::atomic<std::uint64_t> counter{0};
  // Payloads no test writes: a NUL, then the tag.
  tag_ = std::string("\0sentinel ", 10) + std::to_string(++counter) + " ";
}

void sentinels::publish(raw_client& pub, std::string_view subject,
                        std::span<const std::string> keys) {
  for (const auto& key : keys) {
    const std::string payload = tag_ + std::to_string(count_++);
    proto::publish_fields f;
    f.subject = subject;
    f.key = as_bytes(key);
    f.payload = as_bytes(payload);
    pub.queue_publish(f);
    if (pub.queued_bytes() > 64 * 1024) pub.flush();
  }
  pub.flush();
}

void sentinels::publish(raw_client& pub, std::string_view subject, std::string_view key) {
  const std::string k(key);
  publish(pub, subject, std::span<const std::string>(&k, 1));
}

bool sentinels::is_sentinel(const message_frame& m) const {
  return m.payload.starts_with(tag_);
}

std::vector<message_frame> sentinels::await(raw_client& sub, ms timeout,
                                            std::size_t per_sentinel) const {
  const auto deadline = steady::now() + timeout;
  const std::size_t want = count_ * per_sentinel;
  std::size_t seen = 0;
  std::vector<message_frame> others;
  while (seen < want) {
    auto f =
        sub.wait_for([](const server_frame& x) { return std::holds_alternative<message_frame>(x); },
                     std::max(ms(0), std::chrono::ceil<ms>(deadline - steady::now())));
    if (!f)
      throw io_error("only " + std::to_string(seen) + " of " + std::to_string(want) +
                     " sentinels came" + (sub.eof() ? " (connection closed)" : " (timeout)") +
                     "; " + std::to_string(others.size()) + " other deliveries meanwhile");
    auto& m = std::get<message_frame>(*f);
    if (is_sentinel(m))
      ++seen;
    else
      others.push_back(std::move(m));
  }
  return others;
}

}  // namespace keyway::itest
