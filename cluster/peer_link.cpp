#include "cluster/peer_link.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <asio/connect.hpp>
#include <asio/post.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <cstring>

#include "cluster/peer.capnp.h"
#include "core/overloaded.hpp"
#include "proto/capnp_views.hpp"

namespace keyway::cluster {

namespace {

using core::overloaded;

using clock_type = std::chrono::steady_clock;

std::string text(capnp::Text::Reader t) {
  return std::string(t.begin(), t.size());
}

std::string ms(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

/// A heartbeat timer armed at `armed` that fires much later than one
/// heartbeat means this process was not running (a loaded machine, a stop):
/// what the peer sent meanwhile may be unread in the socket, so silence is
/// not judged on this tick.
bool fired_late(clock_type::time_point armed, std::chrono::milliseconds heartbeat) {
  return clock_type::now() - armed > 2 * heartbeat;
}

capnp::Data::Reader bytes_of(std::span<const std::byte> b) {
  return {reinterpret_cast<const capnp::byte*>(b.data()), b.size()};
}

void set_message(wire::Message::Builder o, const peer_message_view& m) {
  o.setSubject(capnp::Text::Reader(m.subject.data(), m.subject.size()));
  o.setKey(bytes_of(m.key));
  o.setPayload(bytes_of(m.payload));
  o.setReplyTo(capnp::Text::Reader(m.reply_to.data(), m.reply_to.size()));
  if (m.headers.empty()) return;
  auto hs = o.initHeaders(static_cast<unsigned>(m.headers.size()));
  for (unsigned i = 0; i < m.headers.size(); ++i) {
    hs[i].setName(capnp::Text::Reader(m.headers[i].first.data(), m.headers[i].first.size()));
    hs[i].setValue(bytes_of(m.headers[i].second));
  }
}

/// Views of the frame's bytes: no copy.
peer_message_view read_message(wire::Message::Reader r) {
  peer_message_view m{proto::as_string_view(r.getSubject()),
                      proto::as_bytes(r.getKey()),
                      proto::as_bytes(r.getPayload()),
                      proto::as_string_view(r.getReplyTo()),
                      {}};
  if (r.hasHeaders())
    for (const auto h : r.getHeaders())
      m.headers.emplace_back(proto::as_string_view(h.getName()), proto::as_bytes(h.getValue()));
  return m;
}

/// Appends `msg` in standard stream framing straight from its segments (no
/// intermediate flat array).
void append_flat(std::string& out, capnp::MessageBuilder& msg) {
  const auto segments = msg.getSegmentsForOutput();
  const std::size_t table_words = (segments.size() + 2) / 2;  // count + sizes, padded to a word
  std::size_t total = table_words * 8;
  for (const auto& s : segments) total += s.size() * 8;
  const std::size_t at = out.size();
  out.resize(at + total);
  char* p = out.data() + at;
  std::memset(p, 0, table_words * 8);
  const auto count_minus_one = static_cast<std::uint32_t>(segments.size() - 1);
  std::memcpy(p, &count_minus_one, 4);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const auto words = static_cast<std::uint32_t>(segments[i].size());
    std::memcpy(p + 4 + 4 * i, &words, 4);
  }
  p += table_words * 8;
  for (const auto& s : segments) {
    std::memcpy(p, s.begin(), s.size() * 8);
    p += s.size() * 8;
  }
}

/// Words for a frame's first segment, so that a batch is built in one (the
/// default is 1024 words, zeroed per message: most of a small frame's cost).
unsigned words_for(std::size_t bytes, std::size_t items) {
  return static_cast<unsigned>(bytes / 8 + items * 16 + 16);
}

}  // namespace

std::uint32_t peer_protocol_version() noexcept {
  return wire::PEER_PROTOCOL_VERSION;
}

std::size_t encoded_size(const peer_message_view& m) {
  // Blobs round up to words, and each header is a struct with two pointers.
  std::size_t bytes = m.subject.size() + m.key.size() + m.payload.size() + m.reply_to.size() + 32;
  for (const auto& [name, value] : m.headers) bytes += name.size() + value.size() + 40;
  return bytes;
}

void encode_forwards(std::string& out, std::span<const peer_forward> items) {
  std::size_t bytes = 0;
  for (const auto& f : items) bytes += encoded_size(f.msg);
  capnp::MallocMessageBuilder msg(words_for(bytes, items.size()));
  auto list = msg.initRoot<wire::PeerFrame>().initForwards(static_cast<unsigned>(items.size()));
  for (unsigned i = 0; i < items.size(); ++i) {
    auto o = list[i];
    set_message(o.initMessage(), items[i].msg);
    o.setConn(items[i].conn);
    o.setAckId(items[i].ack_id);
    o.setEpoch(items[i].epoch);
  }
  append_flat(out, msg);
}

void encode_delivers(std::string& out, std::span<const peer_deliver> items) {
  std::size_t bytes = 0;
  for (const auto& d : items) bytes += encoded_size(d.msg) + d.targets.size() * 16;
  capnp::MallocMessageBuilder msg(words_for(bytes, items.size()));
  auto list = msg.initRoot<wire::PeerFrame>().initDelivers(static_cast<unsigned>(items.size()));
  for (unsigned i = 0; i < items.size(); ++i) {
    const peer_deliver& d = items[i];
    auto o = list[i];
    set_message(o.initMessage(), d.msg);
    o.setSeq(d.seq);
    o.setOwnerCore(d.owner_core);
    o.setEpoch(d.epoch);
    auto ts = o.initTargets(static_cast<unsigned>(d.targets.size()));
    for (unsigned t = 0; t < d.targets.size(); ++t) {
      ts[t].setConn(d.targets[t].conn);
      ts[t].setSid(d.targets[t].sid);
    }
  }
  append_flat(out, msg);
}

std::string encode_peer_frame(const peer_frame& f) {
  std::string out;
  if (const auto* fw = std::get_if<peer_forwards>(&f)) {
    encode_forwards(out, fw->items);
    return out;
  }
  if (const auto* d = std::get_if<peer_delivers>(&f)) {
    encode_delivers(out, d->items);
    return out;
  }
  capnp::MallocMessageBuilder msg;
  auto root = msg.initRoot<wire::PeerFrame>();
  std::visit(overloaded{
                 [&](const peer_hello& h) {
                   auto o = root.initHello();
                   o.setCluster(h.cluster);
                   o.setNodeId(h.node_id);
                   o.setIncarnation(h.incarnation);
                   o.setEpoch(h.epoch);
                   o.setWorker(h.worker);
                   o.setProtocolVersion(wire::PEER_PROTOCOL_VERSION);
                 },
                 [&](const peer_welcome& w) {
                   auto o = root.initWelcome();
                   o.setNodeId(w.node_id);
                   o.setIncarnation(w.incarnation);
                   o.setEpoch(w.epoch);
                   o.setWorkers(w.workers);
                 },
                 [&](const peer_refused& r) { root.initRefused().setReason(r.reason); },
                 [&](const peer_ping& p) { root.setPing(p.id); },
                 [&](const peer_pong& p) { root.setPong(p.id); },
                 // Data frames: encode_forward / encode_deliver, below.
                 [](const peer_forwards&) {},
                 [](const peer_delivers&) {},
                 [&](const peer_interest& in) {
                   auto o = root.initInterest();
                   o.setSnapshotDone(in.snapshot_done);
                   auto cs = o.initChanges(static_cast<unsigned>(in.changes.size()));
                   for (unsigned i = 0; i < in.changes.size(); ++i) {
                     const auto& c = in.changes[i];
                     cs[i].setAdd(c.add);
                     cs[i].setPattern(c.pattern);
                     cs[i].setGroup(c.group);
                     cs[i].setUid(c.uid);
                     cs[i].setConn(c.conn);
                     cs[i].setSid(c.sid);
                     cs[i].setRequestId(c.request_id);
                   }
                 },
                 [&](const peer_interest_applied& a) {
                   auto o = root.initInterestApplied();
                   o.setConn(a.conn);
                   o.setRequestId(a.request_id);
                   o.setSid(a.sid);
                   o.setUid(a.uid);
                   o.setRefused(a.refused);
                 },
                 [&](const peer_fence& fe) {
                   auto o = root.initFence();
                   o.setStage(static_cast<wire::FenceStage>(fe.stage));
                   o.setEpoch(fe.epoch);
                   o.setWorker(fe.worker);
                 },
                 [&](const peer_barrier& b) {
                   auto o = root.initBarrier();
                   o.setConn(b.conn);
                   o.setRound(b.round);
                   o.setAnswer(b.answer);
                 },
                 [&](const peer_reply& r) {
                   auto o = root.initReply();
                   o.setConn(r.conn);
                   o.setAckId(r.ack_id);
                   o.setDelivered(r.delivered);
                   o.setSubject(r.subject);
                   o.setReplyTo(r.reply_to);
                   o.setRefused(r.refused);
                 },
             },
             f);
  append_flat(out, msg);
  return out;
}

result<std::optional<peer_frame>, std::string> peer_frame_reader::next() {
  constexpr std::size_t max_segments = 64;
  const char* const at = buffer_.data() + consumed_;
  const std::size_t avail = buffer_.size() - consumed_;
  if (avail < 4) return std::optional<peer_frame>{};
  std::uint32_t count_minus_one = 0;
  std::memcpy(&count_minus_one, at, 4);
  const std::size_t segments = std::size_t{count_minus_one} + 1;
  if (segments > max_segments)
    return "a peer frame announces " + std::to_string(segments) + " segments; at most " +
           std::to_string(max_segments);
  const std::size_t header = ((4 + 4 * segments) + 7) & ~std::size_t{7};
  if (avail < header) return std::optional<peer_frame>{};
  std::size_t total = header;
  for (std::size_t i = 0; i < segments; ++i) {
    std::uint32_t words = 0;
    std::memcpy(&words, at + 4 + 4 * i, 4);
    total += std::size_t{words} * 8;
  }
  if (total > max_frame_)
    return "a peer frame of " + std::to_string(total) + " bytes exceeds the limit of " +
           std::to_string(max_frame_) + " bytes";
  if (avail < total) return std::optional<peer_frame>{};
  consumed_ += total;
  const kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(at), total / 8);
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = total / 8 * 4 + 64;
    capnp::FlatArrayMessageReader reader(words, options);
    const auto root = reader.getRoot<wire::PeerFrame>();
    switch (root.which()) {
      case wire::PeerFrame::HELLO: {
        const auto h = root.getHello();
        return std::optional<peer_frame>(peer_hello{text(h.getCluster()), text(h.getNodeId()),
                                                    h.getIncarnation(), h.getEpoch(), h.getWorker(),
                                                    h.getProtocolVersion()});
      }
      case wire::PeerFrame::WELCOME: {
        const auto w = root.getWelcome();
        return std::optional<peer_frame>(
            peer_welcome{text(w.getNodeId()), w.getIncarnation(), w.getEpoch(), w.getWorkers()});
      }
      case wire::PeerFrame::REFUSED:
        return std::optional<peer_frame>(peer_refused{text(root.getRefused().getReason())});
      case wire::PeerFrame::PING:
        return std::optional<peer_frame>(peer_ping{root.getPing()});
      case wire::PeerFrame::PONG:
        return std::optional<peer_frame>(peer_pong{root.getPong()});
      case wire::PeerFrame::FORWARDS: {
        const auto list = root.getForwards();
        peer_forwards out;
        out.items.reserve(list.size());
        for (const auto f : list) {
          out.items.push_back(
              {read_message(f.getMessage()), f.getConn(), f.getAckId(), f.getEpoch()});
          out.newest_epoch = std::max(out.newest_epoch, out.items.back().epoch);
        }
        return std::optional<peer_frame>(std::move(out));
      }
      case wire::PeerFrame::DELIVERS: {
        const auto list = root.getDelivers();
        peer_delivers out;
        std::size_t targets = 0;
        for (const auto d : list) targets += d.getTargets().size();
        out.targets.reserve(targets);  // filled first: items point into it
        for (const auto d : list)
          for (const auto t : d.getTargets()) out.targets.push_back({t.getConn(), t.getSid()});
        out.items.reserve(list.size());
        std::size_t at = 0;
        for (const auto d : list) {
          const std::size_t n = d.getTargets().size();
          out.items.push_back({read_message(d.getMessage()), d.getSeq(), d.getOwnerCore(),
                               d.getEpoch(), std::span(out.targets).subspan(at, n)});
          out.newest_epoch = std::max(out.newest_epoch, out.items.back().epoch);
          at += n;
        }
        return std::optional<peer_frame>(std::move(out));
      }
      case wire::PeerFrame::FORWARD:
      case wire::PeerFrame::DELIVER:
        return std::string("a peer frame of peer protocol 1 (single forward or deliver)");
      case wire::PeerFrame::INTEREST: {
        const auto in = root.getInterest();
        peer_interest out;
        out.snapshot_done = in.getSnapshotDone();
        out.changes.reserve(in.getChanges().size());
        for (const auto c : in.getChanges())
          out.changes.push_back({c.getAdd(), text(c.getPattern()), text(c.getGroup()), c.getUid(),
                                 c.getConn(), c.getSid(), c.getRequestId()});
        return std::optional<peer_frame>(std::move(out));
      }
      case wire::PeerFrame::INTEREST_APPLIED: {
        const auto a = root.getInterestApplied();
        return std::optional<peer_frame>(peer_interest_applied{
            a.getConn(), a.getRequestId(), a.getSid(), a.getUid(), text(a.getRefused())});
      }
      case wire::PeerFrame::FENCE: {
        const auto fe = root.getFence();
        const auto stage = static_cast<unsigned>(fe.getStage());
        if (stage > static_cast<unsigned>(fence_stage::drained))
          return "a fence of an unknown stage " + std::to_string(stage);
        return std::optional<peer_frame>(
            peer_fence{static_cast<fence_stage>(stage), fe.getEpoch(), fe.getWorker()});
      }
      case wire::PeerFrame::BARRIER: {
        const auto b = root.getBarrier();
        return std::optional<peer_frame>(peer_barrier{b.getConn(), b.getRound(), b.getAnswer()});
      }
      case wire::PeerFrame::REPLY: {
        const auto r = root.getReply();
        return std::optional<peer_frame>(peer_reply{r.getConn(), r.getAckId(), r.getDelivered(),
                                                    text(r.getSubject()), text(r.getReplyTo()),
                                                    text(r.getRefused())});
      }
    }
    return "a peer frame of an unknown kind " + std::to_string(static_cast<unsigned>(root.which()));
  } catch (const kj::Exception& e) {
    return "a malformed peer frame: " + std::string(e.getDescription().cStr());
  }
}

// ---- listener --------------------------------------------------------------------

struct peer_listener::session : std::enable_shared_from_this<session> {
  session(peer_listener& l, asio::ip::tcp::socket s)
      : owner(&l), socket(std::move(s)), timer(l.io_), retry(l.io_), reader(l.opt_.max_frame) {}

  void start() {
    last_rx = clock_type::now();
    timer.expires_after(owner->opt_.handshake_timeout);
    timer.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec || self->admitted || self->closed) return;
      self->refuse("no hello within " + ms(self->owner->opt_.handshake_timeout));
    });
    read_more();
  }

  void read_more() {
    socket.async_read_some(asio::buffer(buf),
                           [self = shared_from_this()](std::error_code ec, std::size_t n) {
                             if (self->closed) return;
                             if (ec) return self->close();
                             self->last_rx = clock_type::now();
                             self->reader.append(self->buf.data(), n);
                             self->drain();
                           });
  }

  /// Hands on every complete frame read, then reads more; stops at a frame
  /// the owner takes `later` (held, offered again) and reads nothing behind it
  /// until it is taken: the reader's buffer, which held's views point into, is
  /// not appended to meanwhile.
  void drain() {
    // Nothing more is read once a refusal is on its way.
    while (!closed && !close_after_write) {
      auto f = reader.next();
      if (!f) return refuse(f.error());
      if (!*f) break;
      on_frame(**f);
      if (held) return offer_later();
    }
    if (!closed && !close_after_write) read_more();
  }

  void offer_later() {
    retry.expires_after(owner->opt_.retry);
    retry.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec || self->closed) return;
      peer_frame f = std::move(*self->held);
      self->held.reset();
      self->hand_on(f);
      if (self->held)
        self->offer_later();
      else
        self->drain();
    });
  }

  void hand_on(peer_frame& f) {
    switch (owner->on_data_(hello, tag, f)) {
      case taken::yes:
        return;
      case taken::later:
        held.emplace(std::move(f));
        return;
      case taken::close:
        return close();
    }
  }

  void on_frame(peer_frame& f) {
    if (const auto* h = std::get_if<peer_hello>(&f)) {
      if (admitted) return refuse("a second hello on an open link");
      auto admitted_as = owner->admit_(*h);
      if (!admitted_as) return refuse(admitted_as.error());
      admitted = true;
      hello = *h;
      tag = admitted_as->tag;
      owner->up_.fetch_add(1, std::memory_order_relaxed);
      send(encode_peer_frame(admitted_as->welcome));
      watch();
      return;
    }
    if (!admitted) return refuse("the first frame on a peer link must be hello");
    if (const auto* p = std::get_if<peer_ping>(&f))
      return send(encode_peer_frame(peer_pong{p->id}));
    if (std::holds_alternative<peer_pong>(f)) return;
    if (std::holds_alternative<peer_welcome>(f) || std::holds_alternative<peer_refused>(f))
      return refuse("a welcome or refusal sent to the listening side of a link");
    if (owner->on_data_) hand_on(f);
  }

  /// Three heartbeats without a frame: the dialler is gone.
  void watch() {
    timer.expires_after(owner->opt_.heartbeat);
    timer.async_wait([self = shared_from_this(), armed = clock_type::now()](std::error_code ec) {
      if (ec || self->closed) return;
      const auto hb = self->owner->opt_.heartbeat;
      if (!fired_late(armed, hb) && clock_type::now() - self->last_rx > 3 * hb)
        return self->close();
      self->watch();
    });
  }

  void refuse(const std::string& why) {
    if (close_after_write) return;  // one refusal per link
    close_after_write = true;
    send(encode_peer_frame(peer_refused{why}));
  }

  void send(std::string bytes) {
    out.push_back(std::make_shared<std::string>(std::move(bytes)));
    if (!writing) write_next();
  }

  void write_next() {
    if (out.empty()) {
      if (close_after_write) close();
      return;
    }
    writing = true;
    auto data = out.front();
    out.pop_front();
    asio::async_write(socket, asio::buffer(*data),
                      [self = shared_from_this(), data](std::error_code ec, std::size_t) {
                        self->writing = false;
                        if (self->closed) return;
                        if (ec) return self->close();
                        self->write_next();
                      });
  }

  void close() {
    if (closed) return;
    closed = true;
    if (admitted) owner->up_.fetch_sub(1, std::memory_order_relaxed);
    std::error_code ignored;
    timer.cancel();
    retry.cancel();
    socket.close(ignored);
  }

  peer_listener* owner;
  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  asio::steady_timer retry;  // offers `held` again
  peer_frame_reader reader;
  std::optional<peer_frame> held;  // taken `later`: its views point into reader's buffer
  std::array<char, 65536> buf{};   // data frames arrive here, many per read
  std::deque<std::shared_ptr<std::string>> out;
  bool writing = false;
  bool admitted = false;
  bool closed = false;
  bool close_after_write = false;
  clock_type::time_point last_rx{};
  peer_hello hello;       // the admitted dialler's
  std::uint32_t tag = 0;  // the admission's
};

peer_listener::peer_listener(asio::io_context& io, const asio::ip::tcp::endpoint& at,
                             admit_fn admit, peer_link_options opt, data_fn on_data)
    : peer_listener(io, asio::ip::tcp::acceptor(io, at), std::move(admit), opt,
                    std::move(on_data)) {}

peer_listener::peer_listener(asio::io_context& io, asio::ip::tcp::acceptor bound, admit_fn admit,
                             peer_link_options opt, data_fn on_data)
    : io_(io),
      acceptor_(std::move(bound)),
      admit_(std::move(admit)),
      opt_(opt),
      on_data_(std::move(on_data)) {
  port_ = acceptor_.local_endpoint().port();
  accept_next();
}

peer_listener::~peer_listener() {
  close();
}

void peer_listener::accept_next() {
  acceptor_.async_accept([this](std::error_code ec, asio::ip::tcp::socket s) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      std::error_code ignored;
      s.set_option(asio::ip::tcp::no_delay(true), ignored);
      auto sess = std::make_shared<session>(*this, std::move(s));
      std::erase_if(sessions_, [](const auto& w) { return w.expired(); });
      sessions_.push_back(sess);
      sess->start();
    }
    accept_next();
  });
}

std::size_t peer_listener::close_if(const std::function<bool(const peer_hello&)>& stale) {
  std::size_t closed = 0;
  for (auto& w : sessions_)
    if (auto s = w.lock(); s && s->admitted && !s->closed && stale(s->hello)) {
      s->close();
      ++closed;
    }
  return closed;
}

void peer_listener::close() {
  std::error_code ignored;
  acceptor_.close(ignored);
  for (auto& w : sessions_)
    if (auto s = w.lock()) s->close();
  sessions_.clear();
}

// ---- dialer ----------------------------------------------------------------------

peer_dialer::peer_dialer(asio::io_context& io, asio::ip::tcp::endpoint peer, peer_hello hello,
                         events ev, peer_link_options opt)
    : io_(io),
      peer_(std::move(peer)),
      hello_(std::move(hello)),
      ev_(std::move(ev)),
      opt_(opt),
      socket_(io),
      timer_(io),
      reader_(opt.max_frame),
      backoff_(opt.backoff_min) {}

std::shared_ptr<peer_dialer> peer_dialer::start(asio::io_context& io, asio::ip::tcp::endpoint peer,
                                                peer_hello hello, events ev,
                                                peer_link_options opt) {
  auto d = std::make_shared<peer_dialer>(io, std::move(peer), std::move(hello), std::move(ev), opt);
  asio::post(io, [d] { d->dial(); });
  return d;
}

void peer_dialer::stop() {
  state_.store(link_state::stopped, std::memory_order_relaxed);
  ++attempt_;
  std::error_code ignored;
  timer_.cancel();
  socket_.close(ignored);
}

void peer_dialer::dial() {
  if (state() == link_state::stopped) return;
  const std::uint64_t a = ++attempt_;
  state_.store(link_state::connecting, std::memory_order_relaxed);
  std::error_code ignored;
  socket_.close(ignored);
  socket_ = asio::ip::tcp::socket(io_);
  reader_ = peer_frame_reader(opt_.max_frame);
  pending_.clear();
  inflight_.clear();
  writing_ = false;
  timer_.expires_after(opt_.handshake_timeout);
  timer_.async_wait([self = shared_from_this(), a](std::error_code ec) {
    if (ec || a != self->attempt_ || self->state() == link_state::up) return;
    self->fail(
        a, (self->state() == link_state::connecting ? "no connection to " : "no welcome from ") +
               self->peer_.address().to_string() + ":" + std::to_string(self->peer_.port()) +
               " within " + ms(self->opt_.handshake_timeout));
  });
  socket_.async_connect(peer_, [self = shared_from_this(), a](std::error_code ec) {
    if (a != self->attempt_) return;
    if (ec)
      return self->fail(a, "cannot connect to " + self->peer_.address().to_string() + ":" +
                               std::to_string(self->peer_.port()) + ": " + ec.message());
    std::error_code ignored;
    self->socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
    self->state_.store(link_state::handshaking, std::memory_order_relaxed);
    self->last_rx_ = clock_type::now();
    self->send(encode_peer_frame(self->hello_));
    self->read_more(a);
  });
}

void peer_dialer::read_more(std::uint64_t a) {
  socket_.async_read_some(
      asio::buffer(read_buf_), [self = shared_from_this(), a](std::error_code ec, std::size_t n) {
        if (a != self->attempt_) return;
        if (ec)
          return self->fail(a, ec == asio::error::eof ? std::string("the peer closed the link")
                                                      : "reading from the peer: " + ec.message());
        self->last_rx_ = clock_type::now();
        self->reader_.append(self->read_buf_.data(), n);
        while (a == self->attempt_) {
          auto f = self->reader_.next();
          if (!f) return self->fail(a, f.error());
          if (!*f) break;
          self->on_frame(a, **f);
        }
        if (a == self->attempt_) self->read_more(a);
      });
}

void peer_dialer::on_frame(std::uint64_t a, peer_frame& f) {
  if (auto* w = std::get_if<peer_welcome>(&f)) {
    if (state() != link_state::handshaking) return fail(a, "a welcome on a link already up");
    state_.store(link_state::up, std::memory_order_relaxed);
    welcome_ = *w;
    backoff_ = opt_.backoff_min;
    heartbeat(a);
    if (ev_.up) ev_.up(*w);
    return;
  }
  if (auto* r = std::get_if<peer_refused>(&f)) return fail(a, "refused by the peer: " + r->reason);
  if (auto* p = std::get_if<peer_ping>(&f)) return send(encode_peer_frame(peer_pong{p->id}));
  if (std::holds_alternative<peer_pong>(f)) return;  // last_rx_ is all it is for
  return fail(a, "the peer sent its dialler a frame only a dialler sends");
}

void peer_dialer::heartbeat(std::uint64_t a) {
  timer_.expires_after(opt_.heartbeat);
  timer_.async_wait([self = shared_from_this(), a, armed = clock_type::now()](std::error_code ec) {
    if (ec || a != self->attempt_) return;
    const auto quiet =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - self->last_rx_);
    if (!fired_late(armed, self->opt_.heartbeat) && quiet > 3 * self->opt_.heartbeat)
      return self->fail(a, "no frame from the peer for " + ms(quiet) + " (heartbeat " +
                               ms(self->opt_.heartbeat) + ")");
    self->send(encode_peer_frame(peer_ping{self->next_ping_++}));
    self->heartbeat(a);
  });
}

void peer_dialer::send_frames(std::string_view bytes) {
  if (!up()) return;
  send(bytes);
}

void peer_dialer::send(std::string_view bytes) {
  if (pending_.empty()) pending_since_ = clock_type::now();  // once per write, not per frame
  pending_.append(bytes);
  if (!writing_) write_next();
}

void peer_dialer::write_next() {
  inflight_.clear();
  if (pending_.empty()) return;
  writing_ = true;
  inflight_.swap(pending_);
  inflight_since_ = pending_since_;
  asio::async_write(socket_, asio::buffer(inflight_),
                    [self = shared_from_this(), a = attempt_](std::error_code ec, std::size_t) {
                      if (a != self->attempt_) return;
                      self->writing_ = false;
                      if (ec) return self->fail(a, "writing to the peer: " + ec.message());
                      self->write_next();
                    });
}

void peer_dialer::fail(std::uint64_t a, const std::string& why) {
  if (a != attempt_ || state() == link_state::stopped) return;
  ++attempt_;  // every handler of this attempt is now stale
  std::error_code ignored;
  socket_.close(ignored);
  pending_.clear();
  inflight_.clear();
  writing_ = false;
  state_.store(link_state::waiting, std::memory_order_relaxed);
  if (ev_.down) ev_.down(why);
  if (state() == link_state::stopped) return;  // down() stopped it
  // Jittered exponential backoff: a uniform pick in [backoff/2, backoff].
  std::uniform_int_distribution<std::int64_t> pick(backoff_.count() / 2, backoff_.count());
  const auto wait = std::chrono::milliseconds(pick(jitter_));
  backoff_ = std::min(backoff_ * 2, opt_.backoff_max);
  timer_.expires_after(wait);
  timer_.async_wait([self = shared_from_this(), b = attempt_](std::error_code ec) {
    if (ec || b != self->attempt_) return;
    self->dial();
  });
}

}  // namespace keyway::cluster
