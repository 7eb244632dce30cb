// The steady state of the codec does not touch the heap. This file replaces
// the global operator new/delete for the whole test binary with counting
// versions (they forward to malloc/free); only this file reads the count.
#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "tests/unit/proto/helpers.hpp"

namespace {
std::atomic<std::size_t> news{0};
}  // namespace

// The replacements forward to malloc/free on purpose; GCC cannot see that the
// new and delete here are a matched pair.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
#pragma GCC diagnostic pop

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

TEST_CASE("steady state: encoding and decoding single-segment frames allocates nothing") {
  encoder enc;
  out_buffer out(64 * 1024);
  decoder dec(limits{}, 64 * 1024);
  const std::vector<std::byte> payload(512, std::byte{3});
  const header hs[] = {{"content-type", bytes_of("text/plain")}};
  std::span<const std::byte> pieces[4];

  // No doctest assertions inside: they allocate. Returns false on any failure.
  auto one_round = [&](std::uint64_t i) {
    bool ok = enc.publish(out, {.subject = "orders.eu",
                                .key = bytes_of("k"),
                                .payload = payload,
                                .headers = hs,
                                .ack_id = i})
                  .has_value();
    ok &= enc.message(
                 out,
                 {.sid = 1, .subject = "orders.eu", .payload = payload, .owner_core = 2, .seq = i})
              .has_value();
    ok &= enc.ack(out, i, 1).has_value();
    // "Write" the out_buffer into the decoder the way a socket would.
    while (!out.empty()) {
      const std::size_t n = out.gather(pieces);
      std::size_t taken = 0;
      for (std::size_t k = 0; k < n; ++k) {
        auto room = dec.prepare(pieces[k].size());
        std::memcpy(room.data(), pieces[k].data(), pieces[k].size());
        dec.commit(pieces[k].size());
        taken += pieces[k].size();
      }
      out.consume(taken);
    }
    std::size_t frames = 0;
    for (;;) {
      auto r = dec.next();
      if (!r.has_value()) return false;
      if (!r->has_value()) break;
      const bool is_publish = (*r)->which() == W::PUBLISH;
      ok &= !is_publish || (validate_client_frame((*r)->root(), limits{}).ok() &&
                            validate_client_frame(**r, limits{}).ok());
      ok &=
          !is_publish || as_bytes((*r)->root().getPublish().getPayload()).size() == payload.size();
      ++frames;
    }
    return ok && frames == 3;
  };

  bool ok = true;
  for (std::uint64_t i = 0; i < 10; ++i) ok &= one_round(i);  // warm up buffers
  const std::size_t before = news.load();
  for (std::uint64_t i = 0; i < 1000; ++i) ok &= one_round(i);
  const std::size_t after = news.load();
  auto* p = new int(1);  // sanity: the counter does count
  const std::size_t one_more = news.load();
  delete p;
  CHECK(ok);
  CHECK(after - before == 0);
  CHECK(one_more == after + 1);
}
