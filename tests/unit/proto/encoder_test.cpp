// The hand-written encoders (encoder::plain_message, encoder::plain_publish,
// encoder::stamped_message) against capnp's builder (encoder::built_message):
// the same bytes for every combination of
// empty and non-empty fields, odd and even lengths around word boundaries,
// and a decoder reads them back.
#include <doctest/doctest.h>

#include <array>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

namespace keyway::proto::test {

namespace {

/// Calls check(subject, key, payload, reply_to) for every combination of empty
/// and non-empty fields, with lengths around word boundaries; returns the count.
template <class Check>
std::size_t for_each_field_combination(Check&& check) {
  const std::string subjects[] = {
      "", "a", "orders.eu", "exactly.8", "subject.of.fifteen", "s.0123456789abcde"};
  const std::size_t sizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 8191};
  std::mt19937_64 rng(keyway::test::seed());
  std::size_t cases = 0;
  for (const auto& subject : subjects) {
    for (const std::size_t key_len :
         {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{13}}) {
      for (const std::size_t payload_len : sizes) {
        for (const std::string_view reply : {"", "_INBOX.x.1", "_INBOX.abcdefg"}) {
          std::string key(key_len, 'k'), payload(payload_len, '\0');
          for (auto& c : payload) c = static_cast<char>(rng());
          CAPTURE(subject);
          CAPTURE(key_len);
          CAPTURE(payload_len);
          CAPTURE(reply);
          check(subject, bytes_of(key), bytes_of(payload), reply, rng);
          ++cases;
        }
      }
    }
  }
  return cases;
}

}  // namespace

TEST_CASE("encoder: plain_message writes the bytes capnp's builder writes") {
  encoder enc;
  const std::size_t cases = for_each_field_combination(
      [&](std::string_view subject, std::span<const std::byte> key,
          std::span<const std::byte> payload, std::string_view reply, std::mt19937_64& rng) {
        delivery_fields f;
        f.sid = static_cast<std::uint32_t>(rng());
        f.subject = subject;
        f.key = key;
        f.payload = payload;
        f.reply_to = reply;
        f.owner_core = static_cast<std::uint32_t>(rng() % 64);
        f.seq = rng();
        out_buffer a, b;
        REQUIRE(enc.plain_message(a, f));
        REQUIRE(enc.built_message(b, f));
        REQUIRE(drain(a) == drain(b));
      });
  CHECK(cases == 6 * 4 * 11 * 3);
}

TEST_CASE(
    "encoder: stamped_message from lists written once writes the bytes capnp's builder writes") {
  // A payload of 1000 bytes or more goes by reference: both ways are covered.
  encoder enc(limits{}, 1000);
  const std::size_t cases = for_each_field_combination(
      [&](std::string_view subject, std::span<const std::byte> key,
          std::span<const std::byte> payload, std::string_view reply, std::mt19937_64& rng) {
        delivery_fields f;
        f.subject = subject;
        f.key = key;
        f.payload = payload;
        f.reply_to = reply;
        // The lists as shared_message keeps them, in a buffer of their own, and
        // the fields read back through the offsets returned.
        std::vector<std::byte> lists(encoder::plain_message_lists_size(f), std::byte{0xee});
        const auto at = encoder::write_plain_message_lists(lists.data(), f);
        const auto field = [&](std::size_t off, std::size_t n) {
          return std::span<const std::byte>(lists).subspan(off, n);
        };
        REQUIRE(to_string(field(at.subject, subject.size())) == subject);
        REQUIRE(to_string(field(at.key, key.size())) == to_string(key));
        REQUIRE(to_string(field(at.payload, payload.size())) == to_string(payload));
        REQUIRE(to_string(field(at.reply_to, reply.size())) == reply);
        // Two subscribers of the same message: only the ids differ.
        for (int i = 0; i < 2; ++i) {
          f.sid = static_cast<std::uint32_t>(rng());
          f.owner_core = static_cast<std::uint32_t>(rng() % 64);
          f.seq = rng();
          out_buffer a, b;
          const auto n = enc.stamped_message(a, f, lists);
          REQUIRE(n);
          REQUIRE(enc.built_message(b, f));
          CHECK(*n == b.size());
          REQUIRE(drain(a) == drain(b));
        }
      });
  CHECK(cases == 6 * 4 * 11 * 3);
}

TEST_CASE("encoder: stamped_message references a large payload in its lists") {
  encoder enc(limits{}, 1000);
  const std::string payload(5000, 'p');
  delivery_fields f{
      .sid = 3, .subject = "files.x", .payload = bytes_of(payload), .owner_core = 1, .seq = 77};
  std::vector<std::byte> lists(encoder::plain_message_lists_size(f));
  const auto at = encoder::write_plain_message_lists(lists.data(), f);
  out_buffer out;
  REQUIRE(enc.stamped_message(out, f, lists));
  std::array<std::span<const std::byte>, 4> pieces;
  REQUIRE(out.gather(pieces) == 2);
  CHECK(pieces[1].data() == lists.data() + at.payload);  // not copied
  CHECK(pieces[1].size() == 5000);                       // 5000 is a whole number of words
}

TEST_CASE("encoder: stamped_message refuses a frame over max_frame") {
  limits lim = limits::with_max_payload(1024);
  encoder enc(lim);
  const std::string payload(lim.max_frame, 'x');
  delivery_fields f{.subject = "big", .payload = bytes_of(payload)};
  std::vector<std::byte> lists(encoder::plain_message_lists_size(f));
  encoder::write_plain_message_lists(lists.data(), f);
  out_buffer out;
  const auto r = enc.stamped_message(out, f, lists);
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::frame_too_large);
  CHECK(out.empty());
}

TEST_CASE("encoder: plain_publish writes the bytes capnp's builder writes") {
  encoder enc;
  const std::size_t cases = for_each_field_combination(
      [&](std::string_view subject, std::span<const std::byte> key,
          std::span<const std::byte> payload, std::string_view reply, std::mt19937_64& rng) {
        const publish_fields f{.subject = subject,
                               .key = key,
                               .payload = payload,
                               .reply_to = reply,
                               .ack_id = rng() % 2 ? 0 : rng()};
        out_buffer a, b;
        REQUIRE(enc.plain_publish(a, f));
        REQUIRE(enc.built_publish(b, f));
        REQUIRE(drain(a) == drain(b));
      });
  CHECK(cases == 6 * 4 * 11 * 3);
}

TEST_CASE("encoder: a plain delivery decodes to its fields") {
  encoder enc;
  const std::string payload = "hello, world";
  delivery_fields f;
  f.sid = 7;
  f.subject = "orders.eu";
  const std::string key = "customer-42";
  f.key = bytes_of(key);
  f.payload = bytes_of(payload);
  f.reply_to = "_INBOX.r.9";
  f.owner_core = 3;
  f.seq = 123456789012345ull;
  out_buffer out;
  REQUIRE(enc.message(out, f));
  const auto bytes = drain(out);
  decoder d;
  auto space = d.prepare(bytes.size());
  std::memcpy(space.data(), bytes.data(), bytes.size());
  d.commit(bytes.size());
  auto next = d.next();
  REQUIRE(next);
  REQUIRE(next->has_value());
  const auto root = (*next)->root();
  REQUIRE(root.which() == wire::Frame::MESSAGE);
  const auto m = root.getMessage();
  CHECK(m.getSid() == 7);
  CHECK(std::string(m.getSubject().cStr()) == "orders.eu");
  CHECK(to_string(as_bytes(m.getKey())) == key);
  CHECK(to_string(as_bytes(m.getPayload())) == payload);
  CHECK(std::string(m.getReplyTo().cStr()) == "_INBOX.r.9");
  CHECK(m.getOwnerCore() == 3);
  CHECK(m.getSeq() == 123456789012345ull);
  CHECK_FALSE(m.hasHeaders());
}

TEST_CASE("encoder: plain_message refuses a frame over max_frame") {
  limits lim = limits::with_max_payload(1024);
  encoder enc(lim);
  const std::string payload(lim.max_frame, 'x');
  delivery_fields f;
  f.subject = "big";
  f.payload = bytes_of(payload);
  out_buffer out;
  const auto r = enc.plain_message(out, f);
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::frame_too_large);
  CHECK(out.empty());
}

}  // namespace keyway::proto::test
