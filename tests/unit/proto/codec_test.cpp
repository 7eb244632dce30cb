#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <capnp/serialize.h>

#include <array>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

namespace {

// Encodes with `enc_fn(encoder, out)`, feeds the bytes to a fresh decoder and
// hands the single decoded frame to `check`.
template <class Enc, class Check>
void round_trip(Enc&& enc_fn, Check&& check, const limits& lim = {}) {
  encoder enc(lim);
  out_buffer out;
  auto n = enc_fn(enc, out);
  REQUIRE(n.has_value());
  CHECK(*n == out.size());
  const auto wire = drain(out);
  CHECK(wire.size() % 8 == 0);

  decoder dec(lim);
  dec.feed(wire);
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->wire_size() == wire.size());
  check((*r)->root());
  auto again = dec.next();
  REQUIRE(again.has_value());
  CHECK_FALSE(again->has_value());
  CHECK(dec.buffered() == 0);
}

std::vector<std::byte> pattern_bytes(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return v;
}

}  // namespace

TEST_CASE("round trip: hello") {
  round_trip(
      [](encoder& e, out_buffer& o) {
        return e.hello(o, {.client_name = "svc-a", .auth_token = "s3cret"});
      },
      [](W::Reader f) {
        REQUIRE(f.which() == W::HELLO);
        auto h = f.getHello();
        CHECK(h.getProtocolVersion() == protocol_version);
        CHECK(as_string_view(h.getClientName()) == "svc-a");
        CHECK(as_string_view(h.getAuthToken()) == "s3cret");
      });
}

TEST_CASE("round trip: welcome carries the limits") {
  limits server;
  server.max_payload = 12345;
  server.max_subject = 99;
  round_trip(
      [&](encoder& e, out_buffer& o) {
        return e.welcome(o, {.server_id = "node-1",
                             .server_version = "0.1.0",
                             .worker_count = 6,
                             .server_limits = server,
                             .max_subscriptions = 1000,
                             .max_pending_bytes = 64ull << 20});
      },
      [&](W::Reader f) {
        REQUIRE(f.which() == W::WELCOME);
        auto w = f.getWelcome();
        CHECK(as_string_view(w.getServerId()) == "node-1");
        CHECK(as_string_view(w.getServerVersion()) == "0.1.0");
        CHECK(w.getProtocolVersion() == protocol_version);
        CHECK(w.getWorkerCount() == 6);
        auto l = w.getLimits();
        CHECK(l.getMaxPayload() == 12345);
        CHECK(l.getMaxFrame() == server.max_frame);
        CHECK(l.getMaxSubject() == 99);
        CHECK(l.getMaxKey() == server.max_key);
        CHECK(l.getMaxHeaders() == server.max_headers);
        CHECK(l.getMaxHeaderBytes() == server.max_header_bytes);
        CHECK(l.getMaxSubscriptions() == 1000);
        CHECK(l.getMaxSegments() == server.max_segments);
        CHECK(l.getMaxPendingBytes() == (64ull << 20));
      });
}

TEST_CASE("round trip: publish with key, payload, headers, replyTo, ackId") {
  const auto payload = pattern_bytes(3000, 7);
  const header hs[] = {{"content-type", bytes_of("application/json")}, {"trace", bytes_of("")}};
  round_trip(
      [&](encoder& e, out_buffer& o) {
        return e.publish(o, {.subject = "orders.eu.created",
                             .key = bytes_of("customer-42"),
                             .payload = payload,
                             .headers = hs,
                             .reply_to = "_INBOX.c1.7",
                             .ack_id = 77});
      },
      [&](W::Reader f) {
        REQUIRE(f.which() == W::PUBLISH);
        auto p = f.getPublish();
        CHECK(as_string_view(p.getSubject()) == "orders.eu.created");
        CHECK(to_string(as_bytes(p.getKey())) == "customer-42");
        auto got = as_bytes(p.getPayload());
        REQUIRE(got.size() == payload.size());
        CHECK(std::memcmp(got.data(), payload.data(), payload.size()) == 0);
        REQUIRE(p.getHeaders().size() == 2);
        CHECK(as_string_view(p.getHeaders()[0].getName()) == "content-type");
        CHECK(to_string(as_bytes(p.getHeaders()[0].getValue())) == "application/json");
        CHECK(as_string_view(p.getHeaders()[1].getName()) == "trace");
        CHECK(p.getHeaders()[1].getValue().size() == 0);
        CHECK(as_string_view(p.getReplyTo()) == "_INBOX.c1.7");
        CHECK(p.getAckId() == 77);
        CHECK(validate_client_frame(f, limits{}).ok());
        CHECK(request_id_of(f) == 77);
      });
}

TEST_CASE("round trip: empty publish fields stay empty") {
  round_trip([](encoder& e, out_buffer& o) { return e.publish(o, {.subject = "a"}); },
             [](W::Reader f) {
               auto p = f.getPublish();
               CHECK(as_string_view(p.getSubject()) == "a");
               CHECK(p.getKey().size() == 0);
               CHECK(p.getPayload().size() == 0);
               CHECK(p.getHeaders().size() == 0);
               CHECK(p.getReplyTo().size() == 0);
               CHECK(p.getAckId() == 0);
             });
}

TEST_CASE("round trip: subscribe and unsubscribe") {
  round_trip(
      [](encoder& e, out_buffer& o) {
        return e.subscribe(
            o,
            {.sid = 9, .pattern = "orders.*.created", .queue_group = "billing", .request_id = 5});
      },
      [](W::Reader f) {
        REQUIRE(f.which() == W::SUBSCRIBE);
        auto s = f.getSubscribe();
        CHECK(s.getSid() == 9);
        CHECK(as_string_view(s.getPattern()) == "orders.*.created");
        CHECK(as_string_view(s.getQueueGroup()) == "billing");
        CHECK(s.getRequestId() == 5);
        CHECK(request_id_of(f) == 5);
      });
  round_trip([](encoder& e, out_buffer& o) { return e.unsubscribe(o, 9, 6); },
             [](W::Reader f) {
               REQUIRE(f.which() == W::UNSUBSCRIBE);
               CHECK(f.getUnsubscribe().getSid() == 9);
               CHECK(f.getUnsubscribe().getRequestId() == 6);
               CHECK(request_id_of(f) == 6);
             });
}

TEST_CASE("round trip: message delivery") {
  const auto payload = pattern_bytes(100, 3);
  const header hs[] = {{"h", bytes_of("v")}};
  round_trip(
      [&](encoder& e, out_buffer& o) {
        return e.message(o, {.sid = 3,
                             .subject = "orders.eu",
                             .key = bytes_of("k1"),
                             .payload = payload,
                             .headers = hs,
                             .reply_to = "_INBOX.x",
                             .owner_core = 5,
                             .seq = 1234567890123ull});
      },
      [&](W::Reader f) {
        REQUIRE(f.which() == W::MESSAGE);
        auto m = f.getMessage();
        CHECK(m.getSid() == 3);
        CHECK(as_string_view(m.getSubject()) == "orders.eu");
        CHECK(to_string(as_bytes(m.getKey())) == "k1");
        CHECK(to_string(as_bytes(m.getPayload())) == to_string(payload));
        REQUIRE(m.getHeaders().size() == 1);
        CHECK(as_string_view(m.getHeaders()[0].getName()) == "h");
        CHECK(as_string_view(m.getReplyTo()) == "_INBOX.x");
        CHECK(m.getOwnerCore() == 5);
        CHECK(m.getSeq() == 1234567890123ull);
        CHECK(validate_server_frame(f, limits{}).ok());
      });
}

TEST_CASE("round trip: ack, error, ping, pong") {
  round_trip([](encoder& e, out_buffer& o) { return e.ack(o, 77, 3); },
             [](W::Reader f) {
               REQUIRE(f.which() == W::ACK);
               CHECK(f.getAck().getRequestId() == 77);
               CHECK(f.getAck().getDelivered() == 3);
             });
  round_trip(
      [](encoder& e, out_buffer& o) {
        return e.error(o, {.code = errc::no_responders,
                           .message = "no subscriber for 'svc.echo'",
                           .request_id = 8,
                           .fatal = false,
                           .reply_to = "_INBOX.c1.8"});
      },
      [](W::Reader f) {
        REQUIRE(f.which() == W::ERROR);
        auto e = f.getError();
        CHECK(e.getCode() == wire::ErrorCode::NO_RESPONDERS);
        CHECK(from_wire(e.getCode()) == errc::no_responders);
        CHECK(as_string_view(e.getMessage()) == "no subscriber for 'svc.echo'");
        CHECK(e.getRequestId() == 8);
        CHECK_FALSE(e.getFatal());
        CHECK(as_string_view(e.getReplyTo()) == "_INBOX.c1.8");
      });
  round_trip([](encoder& e,
                out_buffer& o) { return e.error(o, status(errc::auth_failed, "bad token"), 0); },
             [](W::Reader f) {
               auto e = f.getError();
               CHECK(e.getCode() == wire::ErrorCode::AUTH_FAILED);
               CHECK(e.getFatal());  // fatal_by_default(auth_failed)
               CHECK(as_string_view(e.getMessage()) == "bad token");
             });
  round_trip([](encoder& e, out_buffer& o) { return e.ping(o, 7); },
             [](W::Reader f) {
               REQUIRE(f.which() == W::PING);
               CHECK(f.getPing().getId() == 7);
             });
  round_trip([](encoder& e, out_buffer& o) { return e.pong(o, 8); },
             [](W::Reader f) {
               REQUIRE(f.which() == W::PONG);
               CHECK(f.getPong().getId() == 8);
             });
}

TEST_CASE("our framing is standard Cap'n Proto stream framing, both ways") {
  // Ours -> capnp's reader.
  encoder enc;
  out_buffer out;
  REQUIRE(
      enc.publish(out, {.subject = "a.b", .payload = bytes_of("hello"), .ack_id = 1}).has_value());
  const auto wire = drain(out);
  kj::Array<capnp::word> aligned = kj::heapArray<capnp::word>(wire.size() / 8);
  std::memcpy(aligned.begin(), wire.data(), wire.size());
  capnp::FlatArrayMessageReader reader(aligned);
  auto f = reader.getRoot<W>();
  REQUIRE(f.which() == W::PUBLISH);
  CHECK(as_string_view(f.getPublish().getSubject()) == "a.b");

  // capnp's writer -> ours.
  const auto theirs = capnp_frame([](W::Builder b) { b.initPing().setId(99); });
  decoder dec;
  dec.feed(theirs);
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->root().getPing().getId() == 99);
}

TEST_CASE("multi-segment frames decode, and more segments than max_segments are refused") {
  // A builder with a tiny first segment and fixed-size growth spreads one
  // publish over many segments, each reached through far pointers.
  capnp::MallocMessageBuilder msg(4, capnp::AllocationStrategy::FIXED_SIZE);
  auto p = msg.initRoot<W>().initPublish();
  p.setSubject("multi.seg");
  const auto payload = pattern_bytes(200, 1);
  p.setPayload(
      capnp::Data::Reader(reinterpret_cast<const kj::byte*>(payload.data()), payload.size()));
  auto hs = p.initHeaders(3);
  const char* names[] = {"h0", "h1", "h2"};
  for (unsigned i = 0; i < 3; ++i) hs[i].setName(names[i]);
  const auto segs = msg.getSegmentsForOutput().size();
  REQUIRE(segs > 3);
  auto flat = capnp::messageToFlatArray(msg);
  std::vector<std::byte> wire(flat.asBytes().size());
  std::memcpy(wire.data(), flat.asBytes().begin(), wire.size());

  limits lim;
  lim.max_segments = static_cast<std::uint32_t>(segs);
  decoder ok(lim);
  ok.feed(wire);
  auto r = ok.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->segment_count() == segs);
  auto got = (*r)->root().getPublish();
  CHECK(as_string_view(got.getSubject()) == "multi.seg");
  CHECK(to_string(as_bytes(got.getPayload())) == to_string(payload));
  CHECK(as_string_view(got.getHeaders()[2].getName()) == "h2");

  lim.max_segments = static_cast<std::uint32_t>(segs - 1);
  decoder strict(lim);
  strict.feed(wire);
  auto bad = strict.next();
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error() == errc::frame_too_large);
  CHECK(strict.error().message().find("limits.max_segments") != std::string::npos);
}

TEST_CASE("byte-by-byte feeding yields the same frames in order") {
  encoder enc;
  out_buffer out;
  std::vector<W::Which> kinds;
  for (std::uint64_t i = 0; i < 12; ++i) {
    switch (i % 4) {
      case 0:
        REQUIRE(enc.ping(out, i).has_value());
        kinds.push_back(W::PING);
        break;
      case 1:
        REQUIRE(enc.publish(out, {.subject = "s.t", .payload = bytes_of("x"), .ack_id = i})
                    .has_value());
        kinds.push_back(W::PUBLISH);
        break;
      case 2:
        REQUIRE(enc.subscribe(out, {.sid = 1, .pattern = "s.>"}).has_value());
        kinds.push_back(W::SUBSCRIBE);
        break;
      case 3:
        REQUIRE(enc.ack(out, i, 1).has_value());
        kinds.push_back(W::ACK);
        break;
    }
  }
  const auto wire = drain(out);
  decoder dec;
  std::vector<W::Which> seen;
  std::vector<std::uint64_t> ids;
  for (std::size_t i = 0; i < wire.size(); ++i) {
    dec.feed(std::span(wire).subspan(i, 1));
    for (;;) {
      auto r = dec.next();
      REQUIRE(r.has_value());
      if (!r->has_value()) break;
      seen.push_back((*r)->which());
      if ((*r)->which() == W::PUBLISH) ids.push_back((*r)->root().getPublish().getAckId());
    }
  }
  CHECK(seen == kinds);
  CHECK(ids == std::vector<std::uint64_t>{1, 5, 9});
  CHECK(dec.buffered() == 0);
}

TEST_CASE("truncated frame: need more, and wanted() says how much") {
  encoder enc;
  out_buffer out;
  REQUIRE(enc.publish(out, {.subject = "a.b", .payload = pattern_bytes(500, 2)}).has_value());
  const auto wire = drain(out);
  decoder dec;
  dec.feed(std::span(wire).first(wire.size() - 1));
  auto r = dec.next();
  REQUIRE(r.has_value());
  CHECK_FALSE(r->has_value());
  CHECK(dec.wanted() == 1);
  CHECK(dec.buffered() == wire.size() - 1);
  dec.feed(std::span(wire).last(1));
  r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->root().getPublish().getPayload().size() == 500);

  // Fewer than 8 bytes: not even a segment table yet.
  decoder tiny;
  tiny.feed(std::span(wire).first(5));
  auto t = tiny.next();
  REQUIRE(t.has_value());
  CHECK_FALSE(t->has_value());
  CHECK(tiny.wanted() == 0);
}

TEST_CASE("many frames in one read decode one after the other without growing the buffer") {
  encoder enc;
  out_buffer out;
  constexpr std::uint64_t n = 1000;
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(enc.ping(out, i).has_value());
  const auto wire = drain(out);
  decoder dec(limits{}, 4096);
  const auto cap = dec.capacity();
  // Socket-style: read at most 4 KiB at a time through prepare/commit.
  std::size_t pos = 0;
  std::uint64_t expect = 0;
  while (pos < wire.size()) {
    auto room = dec.prepare(512);
    const std::size_t k = std::min(room.size(), wire.size() - pos);
    std::memcpy(room.data(), wire.data() + pos, k);
    dec.commit(k);
    pos += k;
    for (;;) {
      auto r = dec.next();
      REQUIRE(r.has_value());
      if (!r->has_value()) break;
      REQUIRE((*r)->which() == W::PING);
      CHECK((*r)->root().getPing().getId() == expect);
      ++expect;
    }
  }
  CHECK(expect == n);
  CHECK(dec.capacity() == cap);  // partial frames were slid to the front, never reallocated
}

TEST_CASE("a frame bigger than the buffer grows it once, and shrink gives it back") {
  encoder enc;
  out_buffer out;
  REQUIRE(enc.publish(out, {.subject = "big", .payload = pattern_bytes(200000, 5)}).has_value());
  const auto wire = drain(out);
  decoder dec(limits{}, 1024);
  std::size_t pos = 0;
  bool got = false;
  while (pos < wire.size()) {
    auto room = dec.prepare(256);
    // After the segment table is in, prepare offers room for the whole frame.
    if (pos >= 8) CHECK(room.size() >= wire.size() - pos);
    const std::size_t k = std::min(room.size(), wire.size() - pos);
    std::memcpy(room.data(), wire.data() + pos, k);
    dec.commit(k);
    pos += k;
    auto r = dec.next();
    REQUIRE(r.has_value());
    if (r->has_value()) {
      got = true;
      CHECK((*r)->root().getPublish().getPayload().size() == 200000);
    }
  }
  CHECK(got);
  CHECK(dec.capacity() >= wire.size());
  CHECK(dec.capacity() <= 2 * wire.size());
  CHECK(dec.shrink(1024));
  CHECK(dec.capacity() == 1024);
}

TEST_CASE("a segment table announcing 4 GiB is refused at once, without allocating") {
  decoder dec;
  const auto cap = dec.capacity();
  // One segment of 2^29 words = 4 GiB, and nothing else sent.
  dec.feed(raw_words({seg_table(0, 1u << 29)}));
  auto r = dec.next();
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::frame_too_large);
  CHECK(dec.error().code() == errc::frame_too_large);
  CHECK(dec.error().message().find("4.00 GiB") != std::string::npos);
  CHECK(dec.error().message().find("limits.max_frame") != std::string::npos);
  CHECK(dec.capacity() == cap);
  CHECK(dec.wanted() == 0);
  // Reading on does not allocate for it either, and the error is sticky.
  CHECK(dec.prepare(16).size() < 64 * 1024);
  CHECK(dec.capacity() == cap);
  auto again = dec.next();
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error() == errc::frame_too_large);
}

TEST_CASE("a frame one word over max_frame is refused, and exactly max_frame is not") {
  limits lim;
  lim.max_frame = 64;  // table (8) + 7 words
  decoder over(lim);
  over.feed(raw_words({seg_table(0, 8)}));
  auto r = over.next();
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::frame_too_large);

  decoder fits(lim);
  fits.feed(raw_words({seg_table(0, 7)}));
  auto ok = fits.next();
  REQUIRE(ok.has_value());
  CHECK_FALSE(ok->has_value());  // waiting for the body
  CHECK(fits.wanted() == 56);
}

TEST_CASE("too many segments is refused, including a count that would wrap") {
  decoder dec;
  dec.feed(raw_words({seg_table(16, 1)}));  // 17 segments > 16
  auto r = dec.next();
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::frame_too_large);
  CHECK(dec.error().message().find("17 segments") != std::string::npos);

  decoder wrap;
  wrap.feed(raw_words({seg_table(0xffffffffu, 1)}));  // count - 1 = 2^32 - 1
  auto w = wrap.next();
  REQUIRE_FALSE(w.has_value());
  CHECK(w.error() == errc::frame_too_large);
  CHECK(wrap.error().message().find("4294967296 segments") != std::string::npos);
}

TEST_CASE("garbage bytes are a protocol or size error, never a crash") {
  SUBCASE("text protocol line") {
    decoder dec;
    dec.feed(bytes_of("PUB orders 5\r\nhello\r\n"));
    auto r = dec.next();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == errc::frame_too_large);  // 'PUB ' read as a segment count
  }
  SUBCASE("root pointer of the wrong kind") {
    decoder dec;
    dec.feed(raw_words({seg_table(0, 1), 0xffffffffffffffffull}));
    auto r = dec.next();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == errc::protocol);
    CHECK(dec.error().message().find("malformed frame") != std::string::npos);
  }
  SUBCASE("empty first segment") {
    decoder dec;
    dec.feed(raw_words({seg_table(0, 0)}));
    auto r = dec.next();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == errc::protocol);
  }
  SUBCASE("after an error the decoder can be reset for a new stream") {
    decoder dec;
    dec.feed(raw_words({seg_table(0, 1), 0xffffffffffffffffull}));
    REQUIRE_FALSE(dec.next().has_value());
    dec.reset();
    CHECK_FALSE(dec.failed());
    dec.feed(capnp_frame([](W::Builder b) { b.initPong().setId(1); }));
    auto r = dec.next();
    REQUIRE(r.has_value());
    REQUIRE(r->has_value());
    CHECK((*r)->which() == W::PONG);
  }
}
