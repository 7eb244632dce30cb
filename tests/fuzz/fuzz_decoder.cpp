// fuzz_decoder: a byte stream into proto::decoder as a connection reads it,
// and every frame out of it through the checks and reads the daemon's
// connection (daemon/connection.cpp) does, or in client mode the client
// library's (client/client_io.cpp).
//
// Input: one control byte, then the stream.
//   bits 0-2  how the stream is cut into reads: 0 all at once; 1..7 random
//             sizes up to 1, 3, 8, 64, 512, 4096, 65536 bytes
//   bit 3     small limits (every limit low, still valid) instead of the defaults
//   bit 4     a decoder with a 64-byte initial buffer (growth, sliding)
//   bit 5     client mode: frames as a server sends them
//   bits 6-7  seed of the read-size generator
//
// Besides the sanitizers, the oracles are:
//   - no kj::Exception from any read the daemon does without a try (the
//     decoder promises frames it returns read without one);
//   - a publish or delivery the decoder read into a view (by hand or with
//     capnp) reads the same through frame::root() with capnp;
//   - the fast subject check agrees with the one that names the problem.
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/decoder.hpp"
#include "proto/fields.hpp"
#include "proto/limits.hpp"
#include "proto/subject.hpp"
#include "proto/validate.hpp"

namespace {

using namespace keyway;
namespace wire = proto::wire;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_decoder: %s\n", what);
  std::abort();
}

volatile std::uint8_t sink;
void touch(std::span<const std::byte> bytes) {
  std::uint8_t x = 0;
  for (const std::byte b : bytes) x ^= static_cast<std::uint8_t>(b);
  sink = x;
}
void touch(std::string_view s) {
  touch(std::as_bytes(std::span(s.data(), s.size())));
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

/// The smallest limits a keyway.toml can set: limits.max_payload = 64 (the
/// other proto limits are not configurable; with_max_payload derives max_frame).
proto::limits small_limits() {
  const proto::limits l = proto::limits::with_max_payload(64);
  if (!proto::validate_limits(l).ok()) fail("the small limits are not valid limits");
  return l;
}

/// A frame's bytes read again by a reader of its own (capnp's defaults, no
/// budget shared with the decoder's): the reference the views are compared to.
class reference {
 public:
  explicit reference(std::span<const std::uint8_t> frame) : words_((frame.size() + 7) / 8) {
    std::memcpy(static_cast<void*>(words_.data()), frame.data(), frame.size());
    try {
      reader_.emplace(kj::arrayPtr(words_.data(), words_.size()));
      root_ = reader_->getRoot<wire::Frame>();
    } catch (const kj::Exception& e) {
      std::fprintf(stderr, "%s\n", e.getDescription().cStr());
      fail("capnp refuses a frame the decoder returned");
    }
  }
  wire::Frame::Reader root() const { return root_; }

 private:
  std::vector<capnp::word> words_;
  std::optional<capnp::FlatArrayMessageReader> reader_;
  wire::Frame::Reader root_;
};

/// Every field of a view, and a capnp reading of the same frame compared.
template <class Reader>
void check_view(const proto::publish_view& v, Reader capnp_side, const proto::limits& lim) {
  touch(v.subject);
  touch(v.key);
  touch(v.payload);
  touch(v.reply_to);
  for (const proto::header& h : v.headers) {
    touch(h.name);
    touch(h.value);
  }
  if (v.headers.size() != 0 && v.headers.size() != v.header_count) fail("headers read in part");
  if (proto::is_valid_publish_subject(v.subject, lim) !=
      proto::validate_publish_subject(v.subject, lim).ok())
    fail("is_valid_publish_subject and validate_publish_subject disagree");
  try {
    if (proto::as_string_view(capnp_side.getSubject()) != v.subject)
      fail("subject differs from capnp's");
    if (!same(proto::as_bytes(capnp_side.getKey()), v.key)) fail("key differs from capnp's");
    if (!same(proto::as_bytes(capnp_side.getPayload()), v.payload))
      fail("payload differs from capnp's");
    if (proto::as_string_view(capnp_side.getReplyTo()) != v.reply_to)
      fail("replyTo differs from capnp's");
    const std::uint32_t hs = capnp_side.hasHeaders() ? capnp_side.getHeaders().size() : 0;
    if (hs != v.header_count) fail("header count differs from capnp's");
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "%s\n", e.getDescription().cStr());
    fail("capnp refuses a publish or delivery the decoder returned");
  }
}

enum class state { handshake, open, closed };

/// The daemon's side: daemon/connection.cpp's handle(), without the routing.
struct server_side {
  server_side(const proto::limits& l, proto::decoder& d) : lim(l), dec(d) {}
  const proto::limits& lim;
  proto::decoder& dec;
  state st = state::handshake;
  std::uint32_t version = 0;
  std::vector<std::string> names;  // what the connection copies out of frames

  void handle(const proto::frame& f, const reference& ref) {
    if (st == state::handshake && f.which() != wire::Frame::HELLO) {
      st = state::closed;
      return;
    }
    if (f.which() == wire::Frame::PUBLISH_BATCH && version < proto::batch_version) {
      st = state::closed;
      return;
    }
    if (const proto::status v = proto::validate_client_frame(f, lim); !v.ok()) {
      if (v.message().empty()) fail("a refusal without a message");
      const std::uint64_t id = f.publish() ? f.publish()->ack_id : proto::request_id_of(f.root());
      (void)id;
      if (proto::fatal_by_default(v.code())) st = state::closed;
      return;
    }
    switch (f.which()) {
      case wire::Frame::HELLO: {
        if (st != state::handshake) {
          st = state::closed;
          return;
        }
        const auto h = f.root().getHello();
        if (h.getProtocolVersion() < proto::min_protocol_version) {
          st = state::closed;
          return;
        }
        version = std::min(h.getProtocolVersion(), proto::protocol_version);
        touch(proto::as_string_view(h.getAuthToken()));
        names.emplace_back(proto::as_string_view(h.getClientName()));
        st = state::open;
        dec.lift_frame_cap();
        return;
      }
      case wire::Frame::PUBLISH: {
        const proto::publish_view& p = *f.publish();
        if (!proto::validate_publish_subject(p.subject, lim).ok())
          fail("a publish passed with a bad subject");
        check_view(p, ref.root().getPublish(), lim);
        if (ref.root().getPublish().getAckId() != p.ack_id) fail("ackId differs from capnp's");
        return;
      }
      case wire::Frame::PUBLISH_BATCH: {
        const proto::publish_batch_view& b = *f.publish_batch();
        touch(b.subject);
        proto::batch_cursor c(b.entries);
        proto::batch_entry e;
        std::uint32_t n = 0;
        while (c.next(e)) {
          touch(e.key);
          touch(e.payload);
          if (e.key.size() > lim.max_key || e.payload.size() > lim.max_payload)
            fail("a batch entry over the limits passed");
          ++n;
        }
        if (c.left() != 0 || n != b.count)
          fail("a publishBatch passed with entries that are not whole");
        return;
      }
      case wire::Frame::SUBSCRIBE: {
        const auto s = f.root().getSubscribe();
        (void)s.getSid();
        (void)s.getRequestId();
        const std::string_view pattern = proto::as_string_view(s.getPattern());
        const std::string_view group = proto::as_string_view(s.getQueueGroup());
        if (!proto::validate_pattern(pattern, lim).ok())
          fail("a subscribe passed with a bad pattern");
        (void)std::count(pattern.begin(), pattern.end(), '.');
        names.emplace_back(pattern);
        names.emplace_back(group);
        return;
      }
      case wire::Frame::UNSUBSCRIBE: {
        const auto u = f.root().getUnsubscribe();
        (void)u.getSid();
        (void)u.getRequestId();
        return;
      }
      case wire::Frame::PING:
        (void)f.root().getPing().getId();
        return;
      case wire::Frame::PONG:
        return;
      default:
        st = state::closed;  // "frame kind not accepted from a client"
        return;
    }
  }
};

/// The client library's side: client/client_io.cpp's handshake and dispatch.
struct client_side {
  explicit client_side(const proto::limits& l) : lim(l) {}
  const proto::limits& lim;
  state st = state::handshake;
  std::vector<std::string> texts;

  void message(const proto::delivery_view& d) {
    texts.emplace_back(d.subject);
    texts.emplace_back(d.reply_to);
    touch(d.key);
    touch(d.payload);
    for (const proto::header& h : d.headers) {
      touch(h.name);
      touch(h.value);
    }
  }

  void handle(const proto::frame& f, const reference& ref) {
    if (st == state::handshake) {
      const auto root = f.root();
      if (root.which() == wire::Frame::WELCOME) {
        const auto w = root.getWelcome();
        texts.emplace_back(proto::as_string_view(w.getServerId()));
        texts.emplace_back(proto::as_string_view(w.getServerVersion()));
        (void)w.getProtocolVersion();
        (void)w.getWorkerCount();
        const auto l = w.getLimits();
        (void)(l.getMaxPayload() + l.getMaxFrame() + l.getMaxSubject() + l.getMaxKey() +
               l.getMaxHeaders() + l.getMaxHeaderBytes() + l.getMaxSegments() +
               l.getMaxSubscriptions() + l.getMaxPendingBytes());
        st = state::open;
      } else if (root.which() == wire::Frame::ERROR) {
        const auto e = root.getError();
        (void)proto::from_wire(e.getCode());
        (void)e.getFatal();
        texts.emplace_back(proto::as_string_view(e.getMessage()));
        st = state::closed;
      } else {
        st = state::closed;
      }
      return;
    }
    if (const proto::status v = proto::validate_server_frame(f, lim); !v.ok()) {
      st = state::closed;
      return;
    }
    if (const proto::delivery_view* d = f.delivery()) {
      check_view(*d, ref.root().getMessage(), lim);
      const auto m = ref.root().getMessage();
      if (m.getSid() != d->sid || m.getOwnerCore() != d->owner_core || m.getSeq() != d->seq)
        fail("sid, ownerCore or seq differs from capnp's");
      return message(*d);
    }
    if (const proto::message_batch_view* b = f.message_batch()) {
      proto::for_each_delivery(*b, [&](const proto::delivery_view& d) { message(d); });
      return;
    }
    const auto root = f.root();
    switch (root.which()) {
      case wire::Frame::ACK:
        (void)(root.getAck().getRequestId() + root.getAck().getDelivered());
        return;
      case wire::Frame::ERROR: {
        const auto e = root.getError();
        (void)proto::from_wire(e.getCode());
        texts.emplace_back(proto::as_string_view(e.getMessage()));
        (void)(e.getFatal() + e.getRequestId());
        return;
      }
      case wire::Frame::PING:
        (void)root.getPing().getId();
        return;
      case wire::Frame::PONG:
        (void)root.getPong().getId();
        return;
      default:
        return;
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const proto::limits defaults{};
  static const proto::limits small = small_limits();
  if (size < 1) return 0;
  const std::uint8_t ctl = data[0];
  const std::span<const std::uint8_t> stream(data + 1, size - 1);
  const proto::limits& lim = (ctl & 0x08) ? small : defaults;
  const bool client = (ctl & 0x20) != 0;
  proto::decoder dec(lim, (ctl & 0x10) ? 64 : proto::decoder::default_initial_capacity);
  if (!client) {
    dec.cap_frames(lim.hello_frame_limit(), "the limit before hello");
  }
  server_side server(lim, dec);
  client_side client_end(lim);
  auto closed = [&] {
    return client ? client_end.st == state::closed : server.st == state::closed;
  };

  static constexpr std::size_t max_read[8] = {0, 1, 3, 8, 64, 512, 4096, 65536};
  std::uint64_t rng = 0x9e3779b97f4a7c15ull * (1 + (ctl >> 6)) ^ size;
  auto next_read = [&]() -> std::size_t {
    if ((ctl & 7) == 0) return stream.size();
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return 1 + rng % max_read[ctl & 7];
  };

  std::size_t at = 0;
  std::size_t frame_at = 0;  // where the next frame starts in the stream
  while (at < stream.size() && !closed()) {
    // As connection::read_more: give memory back when idle, then read into
    // what prepare() offers.
    const std::size_t keep = proto::decoder::default_initial_capacity;
    if (dec.capacity() > 4 * keep && dec.buffered() == 0) (void)dec.shrink(keep);
    const std::size_t want = std::min(next_read(), stream.size() - at);
    const std::span<std::byte> room = dec.prepare(want);
    if (room.size() < want) fail("prepare() offered less than asked");
    std::memcpy(room.data(), stream.data() + at, want);
    dec.commit(want);
    at += want;
    while (!closed()) {
      auto next = dec.next();
      if (!next) {
        if (dec.error().message().empty()) fail("a decoder error without a message");
        if (dec.next()) fail("next() after an error did not fail again");
        return 0;
      }
      if (!next->has_value()) break;
      const proto::frame& f = **next;
      if (f.wire_size() == 0 || f.wire_size() % 8 != 0 || frame_at + f.wire_size() > at)
        fail("a frame of no, unaligned or more than the received size");
      const reference ref(stream.subspan(frame_at, f.wire_size()));
      frame_at += f.wire_size();
      if (ref.root().which() != f.which() || f.root().which() != f.which())
        fail("the frame's kind differs between the decoder, its root() and capnp");
      (void)proto::kind_name(f.which());
      if (client)
        client_end.handle(f, ref);
      else
        server.handle(f, ref);
    }
  }
  return 0;
}
