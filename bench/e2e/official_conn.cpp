// The official clients as conns, the peers of record in the suite's table:
//
// nats.c (Debian libnats-dev, the "nats" system). natsConnection with its
// default options, except that it does not reconnect (a failure must show).
// Publishes go through natsConnection_Publish / natsConnection_PublishRequest
// into nats.c's own buffer, which its flusher thread writes (or the publish
// itself, when the buffer is full), so out_size() is 0 and write_some() has
// nothing to do. Request/reply conns set SendAsap (make_conn, conn.hpp). Subscriptions are
// synchronous (natsConnection_SubscribeSync): nats.c's read thread parses MSG into the
// subscription's queue and the generator's subscriber thread takes them with
// natsSubscription_NextMsg, so the subscriber's thread does the counting and timing, as for every
// other system, and the hand-over between nats.c's thread and it is the client's cost. (An async
// subscription would add the same hand-over to nats.c's delivery thread, and the counts would live
// on a thread the generator does not own.) sync() is natsConnection_FlushTimeout: a PING/PONG round
// trip.
//
// hiredis (Debian libhiredis-dev, the "redis" system). A redisContext made
// with redisConnectNonBlock, driven the way hiredis's own async API drives
// it: redisAppendCommand("PUBLISH %b %b") formats into the context's output
// buffer, redisBufferWrite / redisBufferRead do the I/O, and redisGetReply
// takes each parsed reply (a redisReply allocated per reply, freed with
// freeReplyObject). Every PUBLISH reply is read. A subscriber is a separate
// context that sent SUBSCRIBE.
#include "bench/e2e/conn.hpp"

#include <hiredis.h>
#include <nats/nats.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

namespace keyway::bench::e2e {
namespace {

/// Milliseconds until `deadline`, at least 1.
std::int64_t ms_until(clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  return std::max<std::int64_t>(left.count(), 1);
}

/// Milliseconds for a wait of `timeout`, rounded up (nats.c waits in ms).
std::int64_t ms_ceil(nanoseconds timeout) {
  return std::max<std::int64_t>((timeout.count() + 999'999) / 1'000'000, 1);
}

bool poll_fd(int fd, short events, nanoseconds timeout) {
  pollfd p{fd, events, 0};
  timeout = std::max(timeout, nanoseconds(0));
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  return ::ppoll(&p, 1, &ts, nullptr) > 0;
}

class natsc_conn final : public conn {
 public:
  natsc_conn(std::string url, bool send_asap) : url_(std::move(url)), send_asap_(send_asap) {}
  ~natsc_conn() override {
    if (pending_ != nullptr) natsMsg_Destroy(pending_);
    if (sub_ != nullptr) natsSubscription_Destroy(sub_);
    if (nc_ != nullptr) natsConnection_Destroy(nc_);  // closes it first
    if (opts_ != nullptr) natsOptions_Destroy(opts_);
  }

  void handshake(std::string_view name, clock::time_point deadline) override {
    const std::string n(name);
    check(natsOptions_Create(&opts_), "natsOptions_Create");
    check(natsOptions_SetURL(opts_, url_.c_str()), "natsOptions_SetURL");
    check(natsOptions_SetName(opts_, n.c_str()), "natsOptions_SetName");
    check(natsOptions_SetAllowReconnect(opts_, false), "natsOptions_SetAllowReconnect");
    check(natsOptions_SetTimeout(opts_, ms_until(deadline)), "natsOptions_SetTimeout");
    check(natsOptions_SetSendAsap(opts_, send_asap_), "natsOptions_SetSendAsap");
    check(natsConnection_Connect(&nc_, opts_), "nats.c connect to " + url_);
  }

  void subscribe(std::string_view subject, std::string_view group,
                 clock::time_point deadline) override {
    if (sub_ != nullptr) throw bench_error("a nats.c conn here holds one subscription");
    const std::string s(subject), g(group);
    // The default pending limits (65,536 messages, 64 MiB) are above the
    // generator's window, so nats.c never drops for the subscriber here.
    check(g.empty() ? natsConnection_SubscribeSync(&sub_, nc_, s.c_str())
                    : natsConnection_QueueSubscribeSync(&sub_, nc_, s.c_str(), g.c_str()),
          "nats.c subscribe to " + s);
    sync(deadline);  // the server has the subscription
  }

  void sync(clock::time_point deadline) override {
    check(natsConnection_FlushTimeout(nc_, ms_until(deadline)), "nats.c flush (PING/PONG)");
  }

  void queue_publish(std::string_view subject, std::span<const std::byte>,
                     std::span<const std::byte> payload, std::string_view reply_to) override {
    if (subject != subject_) subject_.assign(subject);  // nats.c takes C strings
    const int len = static_cast<int>(payload.size());
    natsStatus s;
    if (reply_to.empty()) {
      s = natsConnection_Publish(nc_, subject_.c_str(), payload.data(), len);
    } else {
      if (reply_to != reply_to_) reply_to_.assign(reply_to);
      s = natsConnection_PublishRequest(nc_, subject_.c_str(), reply_to_.c_str(), payload.data(),
                                        len);
    }
    if (s != NATS_OK) fail(std::string("nats.c publish: ") + natsStatus_GetText(s));
  }

  std::size_t out_size() const noexcept override { return 0; }
  bool write_some() noexcept override {
    if (!failed() && natsConnection_IsClosed(nc_)) fail("nats.c: the connection is closed");
    return !failed();
  }

  /// Takes every message nats.c has queued for the subscription (up to
  /// 4,096); the number taken.
  std::size_t read_some() noexcept override {
    if (sub_ == nullptr || failed()) return 0;
    std::size_t n = 0;
    std::uint64_t now = 0;
    for (; n < 4096; ++n) {
      natsMsg* m = std::exchange(pending_, nullptr);
      if (m == nullptr) {
        const natsStatus s = natsSubscription_NextMsg(&m, sub_, 0);
        if (s == NATS_TIMEOUT) break;
        if (s == NATS_SLOW_CONSUMER) {  // nats.c dropped messages; the loss shows in the counts
          server_error("nats.c: slow consumer, messages dropped in the client");
          continue;
        }
        if (s != NATS_OK) {
          fail(std::string("nats.c next message: ") + natsStatus_GetText(s));
          break;
        }
      }
      if (now == 0) now = now_ns();
      if (sink_ != nullptr) {
        const char* reply = natsMsg_GetReply(m);
        sink_->on_delivery({reinterpret_cast<const std::byte*>(natsMsg_GetData(m)),
                            static_cast<std::size_t>(natsMsg_GetDataLength(m))},
                           reply != nullptr ? std::string_view(reply) : std::string_view{}, now);
      }
      natsMsg_Destroy(m);
    }
    return n;
  }

  void wait(nanoseconds timeout) noexcept override {
    if (failed() || pending_ != nullptr) return;
    if (sub_ == nullptr) {
      std::this_thread::sleep_for(timeout);
      return;
    }
    const natsStatus s = natsSubscription_NextMsg(&pending_, sub_, ms_ceil(timeout));
    if (s != NATS_OK) pending_ = nullptr;
  }

 private:
  static void check(natsStatus s, const std::string& what) {
    if (s != NATS_OK) throw bench_error(what + ": " + natsStatus_GetText(s));
  }

  std::string url_;
  bool send_asap_;
  natsOptions* opts_ = nullptr;
  natsConnection* nc_ = nullptr;
  natsSubscription* sub_ = nullptr;
  natsMsg* pending_ = nullptr;  // taken by wait(), delivered by the next read_some()
  std::string subject_;
  std::string reply_to_;
};

class hiredis_conn final : public conn {
 public:
  explicit hiredis_conn(redisContext* c) : c_(c) {}
  ~hiredis_conn() override { redisFree(c_); }

  void handshake(std::string_view, clock::time_point deadline) override { sync(deadline); }

  void subscribe(std::string_view subject, std::string_view group,
                 clock::time_point deadline) override {
    if (!group.empty()) throw bench_error("Redis pub/sub has no queue groups");
    append(redisAppendCommand(c_, "SUBSCRIBE %b", subject.data(), subject.size()), "SUBSCRIBE");
    const std::uint64_t want = ++subscribes_wanted_;
    wait_until([&] { return subscribes_acked_ >= want; }, deadline, "redis SUBSCRIBE reply");
  }

  void sync(clock::time_point deadline) override {
    append(redisAppendCommand(c_, "PING"), "PING");
    const std::uint64_t want = ++pings_sent_;
    wait_until([&] { return pongs_received_ >= want; }, deadline, "redis PING round trip");
  }

  void queue_publish(std::string_view subject, std::span<const std::byte>,
                     std::span<const std::byte> payload, std::string_view reply_to) override {
    if (!reply_to.empty()) throw bench_error("Redis pub/sub has no request/reply");
    if (redisAppendCommand(c_, "PUBLISH %b %b", subject.data(), subject.size(), payload.data(),
                           payload.size()) != REDIS_OK)
      fail(std::string("hiredis PUBLISH: ") + c_->errstr);
  }

  std::size_t out_size() const noexcept override { return sdslen(c_->obuf); }

  bool write_some() noexcept override {
    while (!failed() && out_size() > 0) {
      const std::size_t before = out_size();
      int done = 0;
      if (redisBufferWrite(c_, &done) != REDIS_OK) {
        fail(std::string("hiredis write: ") + c_->errstr);
        break;
      }
      if (out_size() == before) break;  // the socket takes no more now
    }
    return !failed();
  }

  /// One redisBufferRead (one read() of up to 16 KiB), then every complete
  /// reply; the number of replies.
  std::size_t read_some() noexcept override {
    if (failed()) return 0;
    if (redisBufferRead(c_) != REDIS_OK) {
      fail(std::string("hiredis read: ") + c_->errstr);
      return 0;
    }
    std::size_t n = 0;
    std::uint64_t now = 0;
    for (;;) {
      void* r = nullptr;
      if (redisGetReply(c_, &r) != REDIS_OK) {
        fail(std::string("hiredis reply: ") + c_->errstr);
        break;
      }
      if (r == nullptr) break;
      if (now == 0) now = now_ns();
      dispatch(*static_cast<const redisReply*>(r), now);
      freeReplyObject(r);
      ++n;
    }
    return n;
  }

  void wait(nanoseconds timeout) noexcept override {
    if (!failed())
      poll_fd(c_->fd, static_cast<short>(POLLIN | (out_size() > 0 ? POLLOUT : 0)), timeout);
  }

 private:
  void append(int status, const char* what) {
    if (status != REDIS_OK) throw bench_error(std::string("hiredis ") + what + ": " + c_->errstr);
  }

  void dispatch(const redisReply& r, std::uint64_t now) {
    switch (r.type) {
      case REDIS_REPLY_INTEGER:
        ++publish_replies_;  // PUBLISH: receivers reached
        return;
      case REDIS_REPLY_STATUS:
        if (std::string_view(r.str, r.len) == "PONG") ++pongs_received_;
        return;
      case REDIS_REPLY_ERROR:
        server_error(std::string(r.str, r.len));
        return;
      case REDIS_REPLY_ARRAY:
        break;
      default:
        return;
    }
    if (r.elements == 0 || r.element[0]->type != REDIS_REPLY_STRING) return;
    const std::string_view kind(r.element[0]->str, r.element[0]->len);
    if (kind == "message" && r.elements == 3) {
      if (sink_ != nullptr)
        sink_->on_delivery({reinterpret_cast<const std::byte*>(r.element[2]->str),
                            static_cast<std::size_t>(r.element[2]->len)},
                           {}, now);
    } else if (kind == "subscribe") {
      ++subscribes_acked_;
    } else if (kind == "pong") {  // PING in subscribed mode
      ++pongs_received_;
    }
  }

  redisContext* c_;
  std::uint64_t pings_sent_ = 0;
  std::uint64_t pongs_received_ = 0;
  std::uint64_t subscribes_wanted_ = 0;
  std::uint64_t subscribes_acked_ = 0;
};

}  // namespace

std::string official_client_versions() {
  return std::string("nats.c ") + nats_GetVersion() + ", hiredis " + std::to_string(HIREDIS_MAJOR) +
         "." + std::to_string(HIREDIS_MINOR) + "." + std::to_string(HIREDIS_PATCH);
}

std::unique_ptr<conn> make_natsc_conn(const std::string& host, int port, bool send_asap) {
  return std::make_unique<natsc_conn>("nats://" + host + ":" + std::to_string(port), send_asap);
}

std::unique_ptr<conn> make_hiredis_conn(const std::string& host, int port,
                                        clock::time_point deadline) {
  // hiredis writes with write(), not send(MSG_NOSIGNAL): a server that closes
  // the connection must fail the write, not kill the generator.
  ::signal(SIGPIPE, SIG_IGN);
  redisContext* c = redisConnectNonBlock(host.c_str(), port);
  if (c == nullptr) throw bench_error("hiredis: cannot allocate a context");
  if (c->err != 0) {
    const std::string why = c->errstr;
    redisFree(c);
    throw bench_error("hiredis connect to " + host + ":" + std::to_string(port) + ": " + why);
  }
  auto conn = std::make_unique<hiredis_conn>(c);
  // The connect is under way: wait until the socket is writable, then check it worked.
  const bool ready = poll_fd(c->fd, POLLOUT, deadline - clock::now());
  int err = 0;
  socklen_t len = sizeof err;
  if (!ready || ::getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
    throw bench_error("hiredis connect to " + host + ":" + std::to_string(port) + ": " +
                      (ready ? std::strerror(err) : "timed out"));
  return conn;
}

}  // namespace keyway::bench::e2e
