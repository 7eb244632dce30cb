// publishBatch (protocol version 2): encoder::publish_batch against capnp's
// builder, the decoder's view of it, batch_cursor on hostile entries, and
// validation of every way an entry or the batch can be wrong.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

namespace keyway::proto::test {
namespace {

using W = wire::Frame;

struct entry_bytes {
  std::string key, payload;
};

std::vector<std::byte> entries_of(const std::vector<entry_bytes>& es) {
  std::vector<std::byte> v;
  for (const auto& e : es) {
    const std::size_t at = v.size();
    v.resize(at + batch_entry_size(e.key.size(), e.payload.size()));
    CHECK(write_batch_entry(v.data() + at, bytes_of(e.key), bytes_of(e.payload)) ==
          v.data() + v.size());
  }
  return v;
}

/// Entries with their own u32 sizes and bytes, for entries no writer makes.
std::vector<std::byte> raw_entry(std::uint32_t key_size, std::uint32_t payload_size,
                                 std::size_t bytes_after) {
  std::vector<std::byte> v(8 + bytes_after, std::byte{'z'});
  std::memcpy(v.data(), &key_size, 4);
  std::memcpy(v.data() + 4, &payload_size, 4);
  return v;
}

capnp::Data::Reader as_data(const std::vector<std::byte>& v) {
  return {reinterpret_cast<const kj::byte*>(v.data()), v.size()};
}

/// The frame in `wire_bytes`, decoded by `dec`; REQUIREs that it decodes.
std::optional<frame> decode(decoder& dec, const std::vector<std::byte>& wire_bytes) {
  dec.feed(wire_bytes);
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  return **r;
}

/// validate_client_frame of a batch frame with these fields, through the decoder.
status check(std::string_view subject, std::uint32_t count, const std::vector<std::byte>& entries,
             const limits& lim = {}) {
  const auto bytes = capnp_frame([&](W::Builder f) {
    auto b = f.initPublishBatch();
    if (!subject.empty()) b.setSubject(std::string(subject));
    b.setCount(count);
    if (!entries.empty()) b.setEntries(as_data(entries));
  });
  decoder dec;
  const auto fr = decode(dec, bytes);
  const status st = validate_client_frame(*fr, lim);
  // The capnp reader path of the validator agrees with the decoder's view.
  const status by_root = validate_client_frame(fr->root(), lim);
  CHECK(st.code() == by_root.code());
  CHECK(st.message() == by_root.message());
  return st;
}

bool has(const status& st, std::string_view needle) {
  return st.message().find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE(
    "encoder: publish_batch writes the bytes capnp's builder writes, and the decoder reads them "
    "back") {
  std::mt19937_64 rng(keyway::test::seed());
  const std::string subjects[] = {"", "a", "orders.eu", "exactly.8", "s.0123456789abcde"};
  encoder enc;
  std::size_t cases = 0;
  for (const auto& subject : subjects) {
    for (const std::size_t n : {0, 1, 2, 5, 33}) {
      std::vector<entry_bytes> es(n);
      for (auto& e : es) {
        e.key.assign(rng() % 12, 'k');
        e.payload.resize(rng() % 40);
        for (auto& c : e.payload) c = static_cast<char>(rng());
      }
      const auto entries = entries_of(es);
      CAPTURE(subject);
      CAPTURE(n);
      out_buffer out;
      const auto size = enc.publish_batch(out, subject, static_cast<std::uint32_t>(n), entries);
      REQUIRE(size.has_value());
      const auto ours = drain(out);
      CHECK(*size == ours.size());
      const auto reference = capnp_frame([&](W::Builder f) {
        auto b = f.initPublishBatch();
        if (!subject.empty()) b.setSubject(subject);
        b.setCount(static_cast<std::uint32_t>(n));
        if (!entries.empty()) b.setEntries(as_data(entries));
      });
      REQUIRE(ours == reference);

      decoder dec;
      const auto fr = decode(dec, ours);
      REQUIRE(fr->which() == W::PUBLISH_BATCH);
      CHECK(fr->publish() == nullptr);
      const publish_batch_view* v = fr->publish_batch();
      REQUIRE(v != nullptr);
      CHECK(v->subject == subject);
      CHECK(v->count == n);
      batch_cursor c(v->entries);
      batch_entry e;
      std::size_t i = 0;
      for (; c.next(e); ++i) {
        REQUIRE(i < n);
        CHECK(to_string(e.key) == es[i].key);
        CHECK(to_string(e.payload) == es[i].payload);
      }
      CHECK(i == n);
      CHECK(c.left() == 0);
      ++cases;
    }
  }
  CHECK(cases == 25);
}

TEST_CASE("encoder: a publish_batch over limits.max_frame is refused and appends nothing") {
  limits lim;
  lim.max_frame = 1024;
  encoder enc(lim);
  out_buffer out;
  const std::vector<std::byte> entries(1024 - 56 - 8 +
                                       1);  // head, one-word subject: one byte too many
  const auto r = enc.publish_batch(out, "a", 1, entries);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error() == errc::frame_too_large);
  CHECK(out.empty());
  const std::vector<std::byte> fits(1024 - 56 - 8);
  CHECK(enc.publish_batch(out, "a", 1, fits).has_value());
}

TEST_CASE("batch_cursor: hostile sizes are not read past the entries") {
  batch_entry e;
  SUBCASE("sizes that overflow 32 bits when added") {
    const auto v = raw_entry(0xffffffffu, 0xffffffffu, 16);
    batch_cursor c(v);
    CHECK_FALSE(c.next(e));
    CHECK(c.left() == v.size());
  }
  SUBCASE("fewer than 8 bytes left") {
    const std::vector<std::byte> v(7);
    batch_cursor c(v);
    CHECK_FALSE(c.next(e));
    CHECK(c.left() == 7);
  }
  SUBCASE("a whole entry, then a cut one") {
    auto v = entries_of({{"k", "payload"}});
    const auto cut = raw_entry(2, 10, 5);
    v.insert(v.end(), cut.begin(), cut.end());
    batch_cursor c(v);
    REQUIRE(c.next(e));
    CHECK(to_string(e.payload) == "payload");
    CHECK_FALSE(c.next(e));
    CHECK(c.left() == cut.size());
  }
}

TEST_CASE("validate: a good batch passes, and an empty one too") {
  CHECK(check("orders.eu", 3, entries_of({{"k1", "a"}, {"", ""}, {"k3", std::string(100, 'p')}}))
            .ok());
  CHECK(check("orders.eu", 0, {}).ok());
}

TEST_CASE(
    "validate: one entry's key over max_key refuses the batch, naming the entry and the limit") {
  limits lim;
  lim.max_key = 4;
  const auto st = check("a.b", 3, entries_of({{"k", "x"}, {"four", "x"}, {"fiver", "x"}}), lim);
  CHECK(st.code() == errc::invalid_key);
  CHECK(st.message() ==
        "publishBatch entry 2 (counting from 0): key of 5 bytes exceeds limits.max_key (4 bytes); "
        "no entry of the batch "
        "was published");
  CHECK_FALSE(fatal_by_default(st.code()));
}

TEST_CASE("validate: one entry's payload over max_payload refuses the batch") {
  limits lim;
  lim.max_payload = 8;
  const auto st = check("a.b", 2, entries_of({{"k", std::string(9, 'p')}, {"k", "x"}}), lim);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(has(st,
            "publishBatch entry 0 (counting from 0): payload of 9 bytes exceeds limits.max_payload "
            "(8 bytes)"));
  CHECK_FALSE(fatal_by_default(st.code()));
}

TEST_CASE("validate: a count that disagrees with the entries is a fatal protocol error") {
  const auto st = check("a.b", 3, entries_of({{"k", "x"}, {"k", "y"}}));
  CHECK(st.code() == errc::protocol);
  CHECK(st.message() == "publishBatch.count is 3 but publishBatch.entries holds 2 entries");
  CHECK(fatal_by_default(st.code()));
}

TEST_CASE("validate: an entry cut short is a fatal protocol error naming it") {
  auto v = entries_of({{"k", "x"}});
  const auto cut = raw_entry(1, 100, 20);
  v.insert(v.end(), cut.begin(), cut.end());
  const auto st = check("a.b", 2, v);
  CHECK(st.code() == errc::protocol);
  CHECK(has(st, "publishBatch entry 1 (counting from 0): is cut short: 28 bytes are left"));
}

TEST_CASE("validate: a batch subject must be literal and well formed") {
  const auto e = entries_of({{"k", "x"}});
  auto st = check("a.*", 1, e);
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "publishBatch.subject"));
  st = check("", 1, e);
  CHECK(st.code() == errc::invalid_subject);
  limits lim;
  lim.max_subject = 4;
  st = check("abcde", 1, e, lim);
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "limits.max_subject"));
}

TEST_CASE("validate: a server may not send publishBatch") {
  const auto bytes = capnp_frame([&](W::Builder f) { f.initPublishBatch().setSubject("a"); });
  decoder dec;
  const auto fr = decode(dec, bytes);
  const auto st = validate_server_frame(*fr, limits{});
  CHECK(st.code() == errc::protocol);
  CHECK(has(st, "'publishBatch'"));
}

TEST_CASE(
    "message_batch_writer: in-place batches are the bytes capnp's builder writes, and decode "
    "back") {
  std::mt19937_64 rng(keyway::test::seed());
  const std::string subjects[] = {"", "a", "orders.eu", "exactly.8", "s.0123456789abcde"};
  std::size_t cases = 0;
  for (const auto& subject : subjects) {
    for (const std::size_t n : {1, 2, 7, 40}) {
      struct entry {
        std::string key, payload;
        std::uint32_t owner;
        std::uint64_t seq;
      };
      std::vector<entry> es(n);
      std::vector<std::byte> entries;
      for (auto& e : es) {
        e.key.assign(rng() % 12, 'k');
        e.payload.resize(rng() % 40);
        for (auto& c : e.payload) c = static_cast<char>(rng());
        e.owner = static_cast<std::uint32_t>(rng() % 64);
        e.seq = rng();
        const std::size_t at = entries.size();
        entries.resize(at + batch_entry_size(e.key.size(), e.payload.size(), message_entry_head));
        write_message_entry(entries.data() + at, bytes_of(e.key), bytes_of(e.payload), e.owner,
                            e.seq);
      }
      const std::uint32_t sid = static_cast<std::uint32_t>(rng());
      CAPTURE(subject);
      CAPTURE(n);
      // A small initial capacity, so the buffer grows (and moves) under an open batch.
      out_buffer out(64);
      out.append(bytes_of("before.."));  // a frame's worth of bytes already queued
      message_batch_writer w(64 * 1024);
      for (std::size_t i = 0; i < n; ++i) {
        const delivery_fields f{.sid = sid,
                                .subject = subject,
                                .key = bytes_of(es[i].key),
                                .payload = bytes_of(es[i].payload),
                                .owner_core = es[i].owner,
                                .seq = es[i].seq};
        if (i == 0) {
          CHECK_FALSE(w.accepts(f));
          REQUIRE(w.fits(f));
          w.start(out, f);
        } else {
          REQUIRE(w.accepts(f));
          w.add(out, f);
        }
        CHECK(w.open());
        CHECK_FALSE(w.accepts(delivery_fields{.sid = sid + 1, .subject = subject}));
      }
      w.finish(out);
      CHECK_FALSE(w.open());
      auto ours = drain(out);
      REQUIRE(to_string(std::span(ours).first(8)) == "before..");
      ours.erase(ours.begin(), ours.begin() + 8);
      const auto reference = capnp_frame([&](W::Builder f) {
        auto b = f.initMessageBatch();
        b.setSid(sid);
        if (!subject.empty()) b.setSubject(subject);
        b.setCount(static_cast<std::uint32_t>(n));
        b.setEntries(as_data(entries));
      });
      REQUIRE(ours == reference);

      decoder dec;
      const auto fr = decode(dec, ours);
      REQUIRE(fr->which() == W::MESSAGE_BATCH);
      REQUIRE(fr->message_batch() != nullptr);
      CHECK(validate_server_frame(*fr, limits{}).code() ==
            (subject.empty() ? errc::invalid_subject : errc::ok));
      std::size_t i = 0;
      for_each_delivery(*fr->message_batch(), [&](const delivery_view& d) {
        REQUIRE(i < n);
        CHECK(d.sid == sid);
        CHECK(d.subject == subject);
        CHECK(to_string(d.key) == es[i].key);
        CHECK(to_string(d.payload) == es[i].payload);
        CHECK(d.owner_core == es[i].owner);
        CHECK(d.seq == es[i].seq);
        CHECK(d.reply_to.empty());
        CHECK(d.headers.empty());
        ++i;
      });
      CHECK(i == n);
      ++cases;
    }
  }
  CHECK(cases == 20);
}

TEST_CASE("message_batch_writer: a batch stays under its byte bound") {
  message_batch_writer w(256);
  out_buffer out;
  const std::string payload(50, 'p');
  const delivery_fields f{.sid = 1, .subject = "a.b", .payload = bytes_of(payload)};
  REQUIRE(w.fits(f));
  w.start(out, f);
  std::size_t entries = 1;
  while (w.accepts(f)) {
    w.add(out, f);
    ++entries;
  }
  w.finish(out);
  CHECK(entries == 2);  // 56 head + 8 subject + 2 x 70, and a third would pass 256
  CHECK(out.size() <= 256);
  const std::string big(300, 'p');
  CHECK_FALSE(w.fits(delivery_fields{.sid = 1, .subject = "a.b", .payload = bytes_of(big)}));
}

TEST_CASE("validate: a messageBatch from the server is checked entry by entry") {
  const auto check_server = [](std::uint32_t count, const std::vector<std::byte>& entries,
                               const limits& lim) {
    const auto bytes = capnp_frame([&](W::Builder f) {
      auto b = f.initMessageBatch();
      b.setSid(3);
      b.setSubject("a.b");
      b.setCount(count);
      if (!entries.empty()) b.setEntries(as_data(entries));
    });
    decoder dec;
    const auto fr = decode(dec, bytes);
    const status st = validate_server_frame(*fr, lim);
    const status by_root = validate_server_frame(fr->root(), lim);
    CHECK(st.message() == by_root.message());
    return st;
  };
  std::vector<std::byte> two(2 * batch_entry_size(1, 4, message_entry_head));
  write_message_entry(write_message_entry(two.data(), bytes_of("k"), bytes_of("abcd"), 1, 9),
                      bytes_of("k"), bytes_of("efgh"), 0, 10);
  CHECK(check_server(2, two, limits{}).ok());
  const auto wrong_count = check_server(3, two, limits{});
  CHECK(wrong_count.code() == errc::protocol);
  CHECK(wrong_count.message() ==
        "messageBatch.count is 3 but messageBatch.entries holds 2 entries");
  limits small;
  small.max_payload = 3;
  const auto big = check_server(2, two, small);
  CHECK(big.code() == errc::payload_too_large);
  CHECK(has(big,
            "messageBatch entry 0 (counting from 0): payload of 4 bytes exceeds limits.max_payload "
            "(3 bytes)"));
  auto cut = two;
  cut.pop_back();
  const auto short_one = check_server(2, cut, limits{});
  CHECK(short_one.code() == errc::protocol);
  CHECK(has(short_one, "messageBatch entry 1 (counting from 0): is cut short"));
  // And a client may not send one.
  const auto from_client = capnp_frame([&](W::Builder f) { f.initMessageBatch().setSubject("a"); });
  decoder dec;
  const auto fr = decode(dec, from_client);
  CHECK(validate_client_frame(*fr, limits{}).code() == errc::protocol);
}

}  // namespace keyway::proto::test
