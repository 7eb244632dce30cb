#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

TEST_CASE("out_buffer: owned and external pieces come out in order, and partial consume") {
  out_buffer out(64);
  const std::string ext = "EXTERNAL";
  out.append(bytes_of("head-"));
  out.append_external(bytes_of(ext));
  out.append(bytes_of("-tail"));
  CHECK(out.size() == 18);
  std::span<const std::byte> pieces[8];
  REQUIRE(out.gather(pieces) == 3);
  CHECK(pieces[1].data() == reinterpret_cast<const std::byte*>(ext.data()));  // not copied
  out.consume(7);                                                             // "head-" and "EX"
  REQUIRE(out.gather(pieces) == 2);
  CHECK(to_string(pieces[0]) == "TERNAL");
  CHECK(to_string(out.front()) == "TERNAL");
  CHECK(out.consumed_total() == 7);
  CHECK(to_string(drain(out)) == "TERNAL-tail");
  CHECK(out.empty());
  CHECK(out.appended_total() == 18);
  CHECK(out.consumed_total() == 18);
}

TEST_CASE("out_buffer: a slow reader does not make the storage grow without bound") {
  // Producer appends 100 bytes, the writer drains 90 or so each turn: the
  // queue stays small, so compaction must keep the storage small too.
  out_buffer out(1024);
  const std::vector<std::byte> chunk(100, std::byte{7});
  std::size_t max_queued = 0;
  for (int i = 0; i < 10000; ++i) {
    out.append(chunk);
    if (i % 3 == 0) out.append_external(chunk);
    max_queued = std::max(max_queued, out.size());
    out.consume(std::min<std::size_t>(out.size(), i % 5 == 0 ? 500 : 90));
  }
  CHECK(max_queued > 0);
  CHECK(out.capacity() <= 4096);
}

TEST_CASE("out_buffer: shrink and clear") {
  out_buffer out(64);
  const std::vector<std::byte> big(100000);
  out.append(big);
  CHECK(out.capacity() >= 100000);
  out.consume(99990);
  CHECK(out.shrink(64));
  CHECK(out.capacity() == 64);
  CHECK(out.size() == 10);
  out.clear();
  CHECK(out.empty());
}

TEST_CASE("message_ref: a big aligned payload is referenced, not copied, and decodes") {
  constexpr std::size_t n = 64 * 1024 + 3;  // not a multiple of 8: padding needed
  // The byte after the payload is not zero: the frame must not leak it.
  auto storage = std::make_unique<std::uint64_t[]>(n / 8 + 2);
  auto* base = reinterpret_cast<std::byte*>(storage.get());
  for (std::size_t i = 0; i < n + 5; ++i)
    base[i] = static_cast<std::byte>(i < n ? (i % 251) : 0xEE);
  const std::span<const std::byte> payload(base, n);

  encoder enc;
  out_buffer out;
  auto size = enc.message_ref(
      out, {.sid = 4, .subject = "big.file", .payload = payload, .owner_core = 1, .seq = 9});
  REQUIRE(size.has_value());
  CHECK(*size == out.size());
  std::span<const std::byte> pieces[8];
  const std::size_t count = out.gather(pieces);
  bool referenced = false;
  for (std::size_t i = 0; i < count; ++i) referenced |= pieces[i].data() == payload.data();
  CHECK(referenced);
  CHECK(out.capacity() < n);  // the payload never went into owned storage

  const auto wire = drain(out);
  CHECK(wire.size() % 8 == 0);
  // The padding after the payload is zeros, not the 0xEE that follows it in memory.
  CHECK(wire[wire.size() - 1] == std::byte{0});
  CHECK(wire[wire.size() - 5] == std::byte{0});
  decoder dec;
  dec.feed(wire);
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->segment_count() == 2);
  auto m = (*r)->root().getMessage();
  CHECK(m.getSid() == 4);
  CHECK(as_string_view(m.getSubject()) == "big.file");
  CHECK(m.getSeq() == 9);
  auto got = as_bytes(m.getPayload());
  REQUIRE(got.size() == n);
  CHECK(std::memcmp(got.data(), payload.data(), n) == 0);
}

TEST_CASE("message_ref: small or unaligned payloads are copied like message()") {
  encoder enc;
  const std::vector<std::byte> small(100, std::byte{1});
  out_buffer a, b;
  REQUIRE(enc.message_ref(a, {.sid = 1, .subject = "s", .payload = small}).has_value());
  REQUIRE(enc.message(b, {.sid = 1, .subject = "s", .payload = small}).has_value());
  CHECK(drain(a) == drain(b));

  auto storage = std::make_unique<std::uint64_t[]>(4096);
  const std::span<const std::byte> unaligned(reinterpret_cast<std::byte*>(storage.get()) + 1,
                                             20000);
  out_buffer c;
  REQUIRE(enc.message_ref(c, {.sid = 1, .subject = "s", .payload = unaligned}).has_value());
  std::span<const std::byte> pieces[8];
  const std::size_t count = c.gather(pieces);
  for (std::size_t i = 0; i < count; ++i) CHECK(pieces[i].data() != unaligned.data());
}

TEST_CASE("encoder refuses frames over max_frame and appends nothing") {
  limits lim;
  lim.max_frame = 1024;
  encoder enc(lim);
  out_buffer out;
  REQUIRE(enc.ping(out, 1).has_value());
  const auto before = out.size();
  const std::vector<std::byte> payload(2000);
  auto r = enc.publish(out, {.subject = "a", .payload = payload});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::frame_too_large);
  CHECK(out.size() == before);
  // The scratch is still usable (and zeroed) afterwards.
  REQUIRE(enc.pong(out, 2).has_value());
  decoder dec(lim);
  dec.feed(drain(out));
  auto a = dec.next();
  REQUIRE((a.has_value() && a->has_value()));
  CHECK((*a)->root().getPing().getId() == 1);
  auto b = dec.next();
  REQUIRE((b.has_value() && b->has_value()));
  CHECK((*b)->root().getPong().getId() == 2);
}

TEST_CASE("encoder::encode turns exceptions from the build callback into internal") {
  encoder enc;
  out_buffer out;
  auto r = enc.encode(out, [](W::Builder) { throw std::runtime_error("boom"); });
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::internal);
  CHECK(out.empty());
  REQUIRE(enc.encode(out, [](W::Builder f) { f.initPing().setId(5); }).has_value());
  CHECK_FALSE(out.empty());
}

TEST_CASE("the reused scratch is clean between frames of different sizes") {
  // A large frame followed by a small one: if the scratch were not zeroed,
  // the small frame would carry stale bytes and compare unequal to capnp's.
  encoder enc;
  out_buffer out;
  const std::vector<std::byte> big(5000, std::byte{0x5a});
  REQUIRE(enc.publish(out, {.subject = "x.y", .payload = big}).has_value());
  (void)drain(out);
  REQUIRE(enc.ping(out, 3).has_value());
  const auto ours = drain(out);
  const auto theirs = capnp_frame([](W::Builder b) { b.initPing().setId(3); });
  CHECK(ours == theirs);
}
