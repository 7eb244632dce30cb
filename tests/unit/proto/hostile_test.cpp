// Hand-made hostile frames: pointers that lie about sizes, lists of
// zero-sized structs, aliasing pointers, far-pointer loops, deep nesting.
// Each must come out of the decoder as a clean error (never a throw, a hang
// or a big allocation), and the honest variant of each must still decode, so
// the test shows it is the limit that bites.
#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

namespace {

// Cap'n Proto pointer encodings (see encoding.html in the Cap'n Proto docs).
std::uint64_t struct_ptr(std::int32_t offset, std::uint16_t data_words, std::uint16_t ptr_words) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(offset) << 2)) |
         (std::uint64_t{data_words} << 32) | (std::uint64_t{ptr_words} << 48);
}
std::uint64_t list_ptr(std::int32_t offset, unsigned elem_size, std::uint32_t count) {
  return 1 | (static_cast<std::uint64_t>(static_cast<std::uint32_t>(offset) << 2)) |
         (std::uint64_t{elem_size} << 32) | (std::uint64_t{count} << 35);
}
std::uint64_t far_ptr(std::uint32_t segment, std::uint32_t offset, bool double_far) {
  return 2 | (double_far ? 4u : 0u) | (std::uint64_t{offset} << 3) | (std::uint64_t{segment} << 32);
}
constexpr unsigned byte_elements = 2;
constexpr unsigned inline_composite = 7;

// A one-segment frame: the segment table, then `body`.
std::vector<std::byte> frame_of(const std::vector<std::uint64_t>& body) {
  std::vector<std::byte> v(8 + body.size() * 8);
  const std::uint64_t table = seg_table(0, static_cast<std::uint32_t>(body.size()));
  std::memcpy(v.data(), &table, 8);
  std::memcpy(v.data() + 8, body.data(), body.size() * 8);
  return v;
}

// Root Frame{publish} with the Publish struct's 5 pointers at words 4..8.
std::vector<std::uint64_t> publish_skeleton() {
  return {
      struct_ptr(0, 1, 1),  // w0 root -> w1
      2,                    // w1 Frame data: discriminant 2 = publish
      struct_ptr(0, 1, 5),  // w2 -> Publish at w3
      0,                    // w3 ackId
      0,
      0,
      0,
      0,
      0,  // w4..w8 subject, key, payload, headers, replyTo
  };
}

status decode_status(const std::vector<std::byte>& wire, const limits& lim = {}) {
  decoder dec(lim);
  dec.feed(wire);
  auto r = dec.next();
  if (!r.has_value()) return dec.error();
  if (!r->has_value()) return {errc::internal, "incomplete"};
  return {};
}

// Publish whose headers are `n` structs that all point their value at the same
// blob of `blob_words` words.
std::vector<std::byte> aliasing_headers(std::uint32_t n, std::uint32_t blob_words) {
  auto w = publish_skeleton();
  w[7] = list_ptr(1, inline_composite, 2 * n);  // headers -> tag at w9
  w.push_back((std::uint64_t{n} << 2) | (std::uint64_t{0} << 32) |
              (std::uint64_t{2} << 48));  // w9 tag
  const std::size_t blob = 10 + 2 * std::size_t{n};
  for (std::uint32_t i = 0; i < n; ++i) {
    w.push_back(0);  // name: null
    const std::size_t at = w.size();
    w.push_back(
        list_ptr(static_cast<std::int32_t>(blob - (at + 1)), byte_elements, blob_words * 8));
  }
  for (std::uint32_t i = 0; i < blob_words; ++i) w.push_back(0x4141414141414141ull);
  return frame_of(w);
}

}  // namespace

TEST_CASE("hand-made publish skeleton decodes (the baseline for the hostile variants)") {
  auto w = publish_skeleton();
  decoder dec;
  dec.feed(frame_of(w));
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK((*r)->which() == W::PUBLISH);
  CHECK((*r)->root().getPublish().getSubject().size() == 0);
}

TEST_CASE("a payload pointer claiming 512 MiB in a tiny frame is a protocol error") {
  auto w = publish_skeleton();
  w[6] = list_ptr(0, byte_elements, (1u << 29) - 1);
  const auto st = decode_status(frame_of(w));
  CHECK(st.code() == errc::protocol);
  CHECK(st.message().find("malformed frame") != std::string::npos);
}

TEST_CASE("a text without its NUL terminator is a protocol error") {
  auto w = publish_skeleton();
  w[4] = list_ptr(4, byte_elements, 8);  // subject -> w9, 8 bytes, last one not NUL
  w.push_back(0x6767676767676767ull);
  CHECK(decode_status(frame_of(w)).code() == errc::protocol);
  w[9] = 0x0067676767676767ull;  // now it ends in NUL: fine
  CHECK(decode_status(frame_of(w)).ok());
}

TEST_CASE("a list of 2^29 zero-sized headers (amplification) is refused") {
  auto w = publish_skeleton();
  w[7] = list_ptr(1, inline_composite, 0);          // headers: 0 words of content
  w.push_back(std::uint64_t{(1u << 29) - 1} << 2);  // w9 tag: 2^29-1 elements of 0 data, 0 ptrs
  const auto st = decode_status(frame_of(w));
  CHECK(st.code() == errc::protocol);

  // The same shape with 3 elements is fine.
  w[9] = std::uint64_t{3} << 2;
  CHECK(decode_status(frame_of(w)).ok());
}

TEST_CASE("headers aliasing one blob exhaust the per-frame traversal budget") {
  // 64 headers x 8192 words read = 512 Ki words, far over 8 x (frame words).
  const auto bomb = aliasing_headers(64, 8192);
  const auto st = decode_status(bomb);
  CHECK(st.code() == errc::protocol);
  CHECK(st.message().find("traversal") != std::string::npos);

  // 4 aliases cost 4 x 8192 words: under the budget, so the frame decodes.
  CHECK(decode_status(aliasing_headers(4, 8192)).ok());
  // And a smaller traversal factor refuses even that.
  limits strict;
  strict.traversal_factor = 2;
  CHECK(decode_status(aliasing_headers(4, 8192), strict).code() == errc::protocol);
}

TEST_CASE("a far pointer to itself (a pointer loop) is refused") {
  CHECK(decode_status(frame_of({far_ptr(0, 0, false)})).code() == errc::protocol);
  // A double-far is followed exactly once: a pad that is itself double-far
  // cannot loop; it is read as a position plus the tag after it (here an
  // empty struct, i.e. a default Frame).
  CHECK(decode_status(frame_of({far_ptr(0, 1, true), far_ptr(0, 1, true), 0})).ok());
  // A double-far whose landing pad names a segment that does not exist.
  CHECK(decode_status(frame_of({far_ptr(0, 1, true), far_ptr(9, 0, false), 0})).code() ==
        errc::protocol);
  // A far pointer into a segment that does not exist.
  CHECK(decode_status(frame_of({far_ptr(7, 0, false)})).code() == errc::protocol);
}

TEST_CASE("nesting_limit is enforced: headers sit three levels below the root") {
  encoder enc;
  out_buffer out;
  const header hs[] = {{"a", bytes_of("b")}};
  REQUIRE(enc.publish(out, {.subject = "a", .headers = hs}).has_value());
  const auto wire = drain(out);
  limits lim;
  lim.nesting_limit = 2;
  CHECK(decode_status(wire, lim).code() == errc::protocol);
  lim.nesting_limit = 4;
  CHECK(decode_status(wire, lim).ok());
}

TEST_CASE("a union discriminant from the future passes decoding and fails client validation") {
  auto w = publish_skeleton();
  w[1] = 42;  // kind 42
  decoder dec;
  dec.feed(frame_of(w));
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  CHECK(kind_name((*r)->which()) == "unknown");
  const auto st = validate_client_frame((*r)->root(), limits{});
  CHECK(st.code() == errc::protocol);
  CHECK(st.message().find("unknown frame kind 42") != std::string::npos);
  CHECK(validate_server_frame((*r)->root(), limits{}).ok());  // clients ignore unknown kinds
}

TEST_CASE("validation of an unvalidated hostile reader does not throw") {
  // A reader built straight over bad words, bypassing the decoder's pass.
  auto w = publish_skeleton();
  w[4] = list_ptr(0, byte_elements, 1000);  // subject out of bounds
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(w.size());
  std::memcpy(static_cast<void*>(words.begin()), w.data(), w.size() * 8);
  kj::ArrayPtr<const capnp::word> segs[] = {words.asPtr()};
  capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segs, 1));
  status st;
  CHECK_NOTHROW(st = validate_client_frame(reader.getRoot<W>(), limits{}));
  CHECK(st.code() == errc::protocol);
}

TEST_CASE("decoder: before hello only a hello-sized frame is buffered") {
  keyway::proto::limits lim;
  keyway::proto::decoder d(lim);
  d.cap_frames(lim.hello_frame_limit(), "the limit before hello");
  CHECK(lim.hello_frame_limit() == lim.max_auth_token + lim.max_client_name + 1024);
  // A segment table announcing one segment of 64 KiB: refused from its 8
  // bytes, before any of the frame is buffered.
  const std::uint32_t words = (64 * 1024) / 8;
  std::byte table[8]{};
  std::memcpy(table + 4, &words, 4);
  d.feed(table);
  auto r = d.next();
  REQUIRE_FALSE(r);
  CHECK(d.error().code() == keyway::proto::errc::frame_too_large);
  CHECK(d.error().message().find("the limit before hello") != std::string::npos);
  CHECK(d.capacity() <= keyway::proto::decoder::default_initial_capacity);

  // The same frame after the cap is lifted only waits for its bytes.
  keyway::proto::decoder open(lim);
  open.cap_frames(lim.hello_frame_limit(), "the limit before hello");
  open.lift_frame_cap();
  open.feed(table);
  auto waiting = open.next();
  REQUIRE(waiting);
  CHECK_FALSE(waiting->has_value());
  CHECK(open.wanted() == 64 * 1024);
}
