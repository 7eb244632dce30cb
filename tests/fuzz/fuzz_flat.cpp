// fuzz_flat: the hand reader of publishes and deliveries (proto/flat.hpp,
// read_flat_publish, read_flat_delivery) on arbitrary bytes, taken as one
// segment (the input cut to whole words, in a buffer of exactly that size so
// that any read past it is caught by ASan).
//
// Oracle (what tests/unit/proto/flat_test.cpp checks on mutated frames):
// whatever the hand reader accepts, capnp's reader reads the same, field by
// field; and every view it returns lies inside the segment.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "proto/decoder.hpp"
#include "proto/flat.hpp"

namespace {

using namespace keyway;
namespace wire = proto::wire;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_flat: %s\n", what);
  std::abort();
}

bool inside(const void* p, std::size_t n, std::span<const std::byte> seg) {
  if (n == 0) return true;
  const auto* b = static_cast<const std::byte*>(p);
  return b >= seg.data() && b + n <= seg.data() + seg.size();
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

void check_inside(const proto::publish_view& v, std::span<const std::byte> seg) {
  if (!inside(v.subject.data(), v.subject.size(), seg) ||
      !inside(v.key.data(), v.key.size(), seg) ||
      !inside(v.payload.data(), v.payload.size(), seg) ||
      !inside(v.reply_to.data(), v.reply_to.size(), seg))
    fail("a view outside the segment");
  if (v.header_count != 0 || !v.headers.empty()) fail("the hand reader returned headers");
}

/// capnp's reading of the same segment behind a one-segment table.
template <class Check>
void with_capnp(std::span<const std::byte> seg, Check&& check) {
  std::vector<capnp::word> framed(seg.size() / 8 + 1);
  const std::uint32_t table[2] = {0, static_cast<std::uint32_t>(seg.size() / 8)};
  std::memcpy(static_cast<void*>(framed.data()), table, 8);
  if (!seg.empty()) std::memcpy(static_cast<void*>(framed.data() + 1), seg.data(), seg.size());
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(framed.data(), framed.size()));
    check(reader.getRoot<wire::Frame>());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "%s\n", e.getDescription().cStr());
    fail("the hand reader accepted what capnp refuses");
  }
}

template <class Reader>
void compare(const proto::publish_view& v, Reader r) {
  if (proto::as_string_view(r.getSubject()) != v.subject) fail("subject differs from capnp's");
  if (!same(proto::as_bytes(r.getKey()), v.key)) fail("key differs from capnp's");
  if (!same(proto::as_bytes(r.getPayload()), v.payload)) fail("payload differs from capnp's");
  if (proto::as_string_view(r.getReplyTo()) != v.reply_to) fail("replyTo differs from capnp's");
  if (r.hasHeaders()) fail("capnp sees headers the hand reader did not");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::size_t words = size / 8;
  // Exactly `words` words on the heap: ASan sees a read one byte past them.
  std::unique_ptr<capnp::word[]> buf(new capnp::word[words == 0 ? 1 : words]);
  if (words != 0) std::memcpy(static_cast<void*>(buf.get()), data, words * 8);
  const std::span<const std::byte> seg(reinterpret_cast<const std::byte*>(buf.get()), words * 8);

  proto::publish_view p;
  if (proto::read_flat_publish(seg, p)) {
    check_inside(p, seg);
    with_capnp(seg, [&](wire::Frame::Reader root) {
      if (root.which() != wire::Frame::PUBLISH) fail("capnp reads another kind than publish");
      compare(p, root.getPublish());
      if (root.getPublish().getAckId() != p.ack_id) fail("ackId differs from capnp's");
    });
  }
  proto::delivery_view d;
  if (proto::read_flat_delivery(seg, d)) {
    check_inside(d, seg);
    with_capnp(seg, [&](wire::Frame::Reader root) {
      if (root.which() != wire::Frame::MESSAGE) fail("capnp reads another kind than message");
      const auto m = root.getMessage();
      compare(d, m);
      if (m.getSid() != d.sid || m.getOwnerCore() != d.owner_core || m.getSeq() != d.seq)
        fail("sid, ownerCore or seq differs from capnp's");
    });
  }

  // The segment reader's own calls on the root pointer and the struct it names.
  if (words != 0) {
    const proto::flat::segment s(seg.data(), words);
    proto::flat::segment::structure root;
    if (s.read_struct(0, root)) {
      if (root.data + root.data_words + root.pointers > words) fail("a struct past the segment");
      for (std::size_t i = 0; i < root.pointers && i < 8; ++i) {
        std::span<const std::byte> bytes;
        std::string_view text;
        if (s.read_data(root, i, bytes) && !inside(bytes.data(), bytes.size(), seg))
          fail("data past the segment");
        if (s.read_text(root, i, text) &&
            !inside(text.data(), text.size() + (text.empty() ? 0 : 1), seg))
          fail("text past the segment");
        proto::flat::segment::structure inner;
        if (s.read_struct(root.data + root.data_words + i, inner) &&
            inner.data + inner.data_words + inner.pointers > words)
          fail("a struct past the segment");
      }
    }
  }
  return 0;
}
