// The hand readers of publishes and deliveries (proto/flat.hpp,
// read_flat_publish, read_flat_delivery) against capnp's reader: on every
// frame a hand reader accepts, both must read the same fields; frames it
// refuses go to capnp, which reads or rejects them.
#include "proto/flat.hpp"

#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <random>
#include <string>
#include <vector>

#include "proto/codec.hpp"
#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;

namespace {

/// A frame's one segment (after its 8-byte table), as words.
std::vector<capnp::word> segment_of(const std::vector<std::byte>& frame) {
  REQUIRE(frame.size() >= 8);
  std::uint32_t segments_minus_one = 0;
  std::memcpy(&segments_minus_one, frame.data(), 4);
  REQUIRE(segments_minus_one == 0);
  std::vector<capnp::word> words((frame.size() - 8) / 8);
  std::memcpy(static_cast<void*>(words.data()), frame.data() + 8, words.size() * 8);
  return words;
}

std::span<const std::byte> as_span(const std::vector<capnp::word>& w) {
  return {reinterpret_cast<const std::byte*>(w.data()), w.size() * 8};
}

/// The segment behind a one-segment table: the stream format FlatArrayMessageReader reads.
std::vector<capnp::word> framed_of(const std::vector<capnp::word>& w) {
  std::vector<capnp::word> framed(w.size() + 1);
  const std::uint32_t table[2] = {0, static_cast<std::uint32_t>(w.size())};
  std::memcpy(static_cast<void*>(framed.data()), table, 8);
  std::memcpy(static_cast<void*>(framed.data() + 1), w.data(), w.size() * 8);
  return framed;
}

/// capnp's reading of the same segment: nullopt when it throws or the frame
/// is not a publish. The view points into `framed`, the segment behind its table.
std::optional<publish_view> capnp_read(const std::vector<capnp::word>& w,
                                       std::vector<header>& headers,
                                       std::vector<capnp::word>& framed) {
  framed = framed_of(w);
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(framed.data(), framed.size()));
    auto root = reader.getRoot<wire::Frame>();
    if (root.which() != wire::Frame::PUBLISH) return std::nullopt;
    publish_view v;
    read_publish(root.getPublish(), 64, headers, v);
    return v;
  } catch (const kj::Exception&) {
    return std::nullopt;
  }
}

void check_same(const publish_view& a, const publish_view& b) {
  CHECK(a.subject == b.subject);
  CHECK(to_string(a.key) == to_string(b.key));
  CHECK(to_string(a.payload) == to_string(b.payload));
  CHECK(a.reply_to == b.reply_to);
  CHECK(a.ack_id == b.ack_id);
  CHECK(a.header_count == b.header_count);
}

std::vector<std::byte> encode_publish(const publish_fields& f) {
  encoder enc;
  out_buffer out;
  REQUIRE(enc.publish(out, f).has_value());
  return drain(out);
}

}  // namespace

TEST_CASE("flat reader reads every publish without headers as capnp does") {
  std::mt19937_64 rng(keyway::test::seed());
  for (int i = 0; i < 2000; ++i) {
    const std::string subject = "s." + std::string(rng() % 40, 'a');
    std::string key(rng() % 20, 'k'), payload(rng() % 300, 'p'), reply;
    for (auto& c : payload) c = static_cast<char>(rng());
    if (rng() % 2) reply = "_INBOX." + std::to_string(rng());
    const auto frame = encode_publish({.subject = subject,
                                       .key = bytes_of(key),
                                       .payload = bytes_of(payload),
                                       .reply_to = reply,
                                       .ack_id = rng() % 3 == 0 ? 0 : rng()});
    const auto w = segment_of(frame);
    publish_view fast;
    REQUIRE(read_flat_publish(as_span(w), fast));
    std::vector<header> hs;
    std::vector<capnp::word> framed;
    const auto slow = capnp_read(w, hs, framed);
    REQUIRE(slow.has_value());
    check_same(fast, *slow);
    CHECK(fast.subject == subject);
    CHECK(to_string(fast.payload) == payload);
  }
}

TEST_CASE("flat reader leaves headers and non-publish frames to capnp") {
  const std::vector<header> hs{{"h", bytes_of("v")}};
  publish_view v;
  CHECK_FALSE(
      read_flat_publish(as_span(segment_of(encode_publish({.subject = "a", .headers = hs}))), v));
  encoder enc;
  out_buffer out;
  REQUIRE(enc.ping(out, 7).has_value());
  CHECK_FALSE(read_flat_publish(as_span(segment_of(drain(out))), v));
  CHECK_FALSE(read_flat_publish({}, v));
}

TEST_CASE("flat reader refuses a Text without its NUL, out-of-bounds lists and far pointers") {
  auto w = segment_of(encode_publish({.subject = "abc", .payload = bytes_of("payload!")}));
  publish_view v;
  REQUIRE(read_flat_publish(as_span(w), v));
  auto* bytes = reinterpret_cast<std::byte*>(w.data());
  const auto at =
      static_cast<std::size_t>(reinterpret_cast<const std::byte*>(v.subject.data()) - bytes);
  {
    auto bad = w;
    reinterpret_cast<std::byte*>(bad.data())[at + 3] = std::byte{'!'};  // the NUL after "abc"
    CHECK_FALSE(read_flat_publish(as_span(bad), v));
    std::vector<header> hs;
    std::vector<capnp::word> framed;
    CHECK_FALSE(capnp_read(bad, hs, framed).has_value());  // capnp refuses it too
  }
  {
    auto bad = w;
    bad.pop_back();  // the payload's last word is gone
    CHECK_FALSE(read_flat_publish(as_span(bad), v));
  }
  {
    auto bad = w;
    std::uint64_t root = 0;
    std::memcpy(&root, bad.data(), 8);
    root = (root & ~std::uint64_t{3}) | 2;  // a far pointer
    std::memcpy(static_cast<void*>(bad.data()), &root, 8);
    CHECK_FALSE(read_flat_publish(as_span(bad), v));
  }
}

TEST_CASE("flat reader on mutated frames: whatever it accepts, capnp reads the same") {
  std::mt19937_64 rng(keyway::test::seed());
  std::size_t accepted = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string payload(rng() % 40, 'x');
    auto w = segment_of(encode_publish({.subject = "orders.eu",
                                        .key = bytes_of("key-1"),
                                        .payload = bytes_of(payload),
                                        .reply_to = rng() % 2 ? "_INBOX.1" : "",
                                        .ack_id = 5}));
    auto* b = reinterpret_cast<std::uint8_t*>(w.data());
    const std::size_t n = w.size() * 8;
    for (int flips = 1 + static_cast<int>(rng() % 3); flips > 0; --flips) {
      // Pointer words (the first 8 words) most often: that is where the checks are.
      const std::size_t pos = rng() % 4 ? rng() % std::min<std::size_t>(n, 64) : rng() % n;
      b[pos] = rng() % 2 ? static_cast<std::uint8_t>(rng())
                         : static_cast<std::uint8_t>(b[pos] ^ (1u << (rng() % 8)));
    }
    publish_view fast;
    std::vector<header> hs;
    std::vector<capnp::word> framed;
    const auto slow = capnp_read(w, hs, framed);
    if (read_flat_publish(as_span(w), fast)) {
      ++accepted;
      if (!slow) FAIL("flat accepted what capnp refuses, case " << i);
      check_same(fast, *slow);
    } else {
      ++refused;
    }
  }
  MESSAGE("accepted " << accepted << ", refused " << refused);
  CHECK(accepted > 0);
  CHECK(refused > 0);
}

TEST_CASE(
    "flat reader reads deliveries as capnp does, and on mutated ones accepts only what capnp reads "
    "the same") {
  std::mt19937_64 rng(keyway::test::seed());
  encoder enc;
  std::size_t accepted = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string payload(rng() % 40, 'x'), key(rng() % 12, 'k');
    delivery_fields f;
    f.sid = static_cast<std::uint32_t>(rng());
    f.subject = "orders.eu";
    f.key = bytes_of(key);
    f.payload = bytes_of(payload);
    f.reply_to = rng() % 2 ? "_INBOX.1" : "";
    f.owner_core = static_cast<std::uint32_t>(rng() % 8);
    f.seq = rng();
    out_buffer out;
    REQUIRE(enc.message(out, f).has_value());
    auto w = segment_of(drain(out));
    const bool mutate = i % 2 == 1;
    if (mutate) {
      auto* b = reinterpret_cast<std::uint8_t*>(w.data());
      const std::size_t n = w.size() * 8;
      const std::size_t pos = rng() % 4 ? rng() % std::min<std::size_t>(n, 80) : rng() % n;
      b[pos] = static_cast<std::uint8_t>(rng());
    }
    delivery_view fast;
    std::optional<delivery_view> slow;
    const std::vector<capnp::word> framed = framed_of(w);
    try {
      capnp::FlatArrayMessageReader reader(kj::arrayPtr(framed.data(), framed.size()));
      auto root = reader.getRoot<wire::Frame>();
      if (root.which() == wire::Frame::MESSAGE) {
        std::vector<header> hs;
        delivery_view v;
        read_delivery(root.getMessage(), 64, hs, v);
        slow = v;
      }
    } catch (const kj::Exception&) {
    }
    const bool flat = read_flat_delivery(as_span(w), fast);
    if (!mutate) REQUIRE(flat);
    if (flat) {
      ++accepted;
      if (!slow) FAIL("flat accepted a delivery capnp refuses, case " << i);
      check_same(fast, *slow);
      CHECK(fast.sid == slow->sid);
      CHECK(fast.owner_core == slow->owner_core);
      CHECK(fast.seq == slow->seq);
      if (!mutate) {
        CHECK(fast.sid == f.sid);
        CHECK(fast.seq == f.seq);
        CHECK(to_string(fast.payload) == payload);
      }
    } else {
      ++refused;
    }
  }
  CHECK(accepted > 10000);
  CHECK(refused > 0);
}
