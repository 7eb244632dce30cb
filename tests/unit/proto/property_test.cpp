// Random input must never crash, throw or allocate without bound: random
// bytes, and valid frames with random bytes flipped, fed in random chunks.
#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "tests/unit/proto/helpers.hpp"
#include "tests/unit/test_seed.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

namespace {

struct outcome {
  std::size_t frames = 0;
  bool failed = false;
};

// Feeds `bytes` in random chunks, decodes and validates everything, touching
// every field a consumer would read.
outcome drive(std::span<const std::byte> bytes, std::mt19937_64& rng, const limits& lim) {
  outcome o;
  decoder dec(lim, 256);
  std::size_t pos = 0;
  while (pos < bytes.size() && !o.failed) {
    const std::size_t k = std::min<std::size_t>(bytes.size() - pos, 1 + rng() % 64);
    dec.feed(bytes.subspan(pos, k));
    pos += k;
    for (;;) {
      auto r = dec.next();
      if (!r.has_value()) {
        REQUIRE(dec.failed());
        REQUIRE_FALSE(dec.error().message().empty());
        o.failed = true;
        break;
      }
      if (!r->has_value()) break;
      ++o.frames;
      auto f = (*r)->root();
      (void)validate_client_frame(f, lim);
      (void)validate_server_frame(f, lim);
      (void)request_id_of(f);
      if (f.which() == W::PUBLISH) {
        auto p = f.getPublish();
        (void)as_string_view(p.getSubject());
        (void)as_bytes(p.getPayload());
        for (auto h : p.getHeaders()) (void)as_bytes(h.getValue());
      }
    }
    // The buffer never grows past what one legal frame plus a chunk needs.
    REQUIRE(dec.capacity() <= 2 * (lim.max_frame + 64) + 256);
  }
  return o;
}

std::vector<std::byte> valid_stream(std::mt19937_64& rng) {
  encoder enc;
  out_buffer out;
  const header hs[] = {{"k", bytes_of("v")}, {"trace", bytes_of("0123456789")}};
  for (int i = 0; i < 6; ++i) {
    switch (rng() % 6) {
      case 0:
        (void)enc.ping(out, rng());
        break;
      case 1:
        (void)enc.publish(out, {.subject = "a.b.c",
                                .key = bytes_of("key"),
                                .payload = bytes_of("payload!"),
                                .headers = hs,
                                .reply_to = "_INBOX.1",
                                .ack_id = 3});
        break;
      case 2:
        (void)enc.subscribe(out,
                            {.sid = 2, .pattern = "a.*.>", .queue_group = "g", .request_id = 4});
        break;
      case 3:
        (void)enc.hello(out, {.client_name = "fuzz", .auth_token = "t"});
        break;
      case 4:
        (void)enc.message(out,
                          {.sid = 1, .subject = "a.b", .payload = bytes_of("xyz"), .headers = hs});
        break;
      case 5:
        (void)enc.error(out, {.code = errc::timeout, .message = "late", .fatal = true});
        break;
    }
  }
  return drain(out);
}

}  // namespace

TEST_CASE("property: random bytes never crash or throw the decoder") {
  std::mt19937_64 rng(keyway::test::seed());
  limits lim;
  lim.max_frame = 4096;  // keep memory per case small; limits still apply
  std::size_t failed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<std::byte> bytes(rng() % 600);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    // Half the time, make the segment table plausible so the body gets parsed.
    if (bytes.size() >= 8 && rng() % 2 == 0) {
      const std::uint64_t words = (bytes.size() - 8) / 8;
      const std::uint64_t table = seg_table(0, static_cast<std::uint32_t>(words));
      std::memcpy(bytes.data(), &table, 8);
    }
    outcome o;
    CHECK_NOTHROW(o = drive(bytes, rng, lim));
    failed += o.failed ? 1 : 0;
  }
  CHECK(failed > 0);  // random bytes are mostly rejected: the checks are live
}

TEST_CASE("property: valid streams with random bit flips never crash or throw") {
  std::mt19937_64 rng(keyway::test::seed());
  const limits lim;
  std::size_t clean_frames = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    auto bytes = valid_stream(rng);
    const int flips = static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i)
      bytes[rng() % bytes.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
    outcome o;
    CHECK_NOTHROW(o = drive(bytes, rng, lim));
    if (flips == 0) {
      CHECK_FALSE(o.failed);
      CHECK(o.frames == 6);
      clean_frames += o.frames;
    }
  }
  CHECK(clean_frames > 0);
}
