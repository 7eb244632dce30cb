#include "daemon/shared_message.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace keyway::daemon {

namespace {
constexpr std::uint32_t align8(std::size_t n) {
  return static_cast<std::uint32_t>((n + 7) & ~std::size_t{7});
}
}  // namespace

shared_message* shared_message::make(core::block_pool& pool, std::string_view subject,
                                     std::span<const std::byte> key,
                                     std::span<const std::byte> payload, std::string_view reply_to,
                                     std::span<const header_view> headers) {
  // Layout: [object][the delivery frame's byte lists, 8-aligned: subject,
  // key, reply-to, payload, each padded][headers]. frame_lists() runs from
  // the subject to the payload's padding.
  const proto::delivery_fields f{
      .subject = subject, .key = key, .payload = payload, .reply_to = reply_to};
  std::size_t header_bytes = 0;
  for (const header_view& h : headers) header_bytes += 8 + h.name.size() + h.value.size();
  const std::uint32_t lists_off = align8(sizeof(shared_message));
  const auto headers_off =
      static_cast<std::uint32_t>(lists_off + proto::encoder::plain_message_lists_size(f));

  // The pool's alignment (16) covers the 8 the payload needs.
  static_assert(alignof(shared_message) <= 16);
  void* raw = pool.allocate(headers_off + header_bytes);
  auto* m = new (raw) shared_message();
  auto* base = static_cast<std::byte*>(raw);
  const auto at = proto::encoder::write_plain_message_lists(base + lists_off, f);
  const auto off = [&](std::size_t o) { return static_cast<std::uint32_t>(lists_off + o); };
  m->payload_off_ = off(at.payload);
  m->payload_len_ = static_cast<std::uint32_t>(payload.size());
  m->subject_off_ = off(at.subject);
  m->subject_len_ = static_cast<std::uint32_t>(subject.size());
  m->key_off_ = off(at.key);
  m->key_len_ = static_cast<std::uint32_t>(key.size());
  m->reply_off_ = off(at.reply_to);
  m->reply_len_ = static_cast<std::uint32_t>(reply_to.size());
  std::byte* p = base + headers_off;
  for (const header_view& h : headers) {
    const std::uint32_t lens[2] = {static_cast<std::uint32_t>(h.name.size()),
                                   static_cast<std::uint32_t>(h.value.size())};
    std::memcpy(p, lens, sizeof lens);
    p += sizeof lens;
    if (!h.name.empty()) std::memcpy(p, h.name.data(), h.name.size());
    p += h.name.size();
    if (!h.value.empty()) std::memcpy(p, h.value.data(), h.value.size());
    p += h.value.size();
  }
  m->header_count_ = static_cast<std::uint32_t>(headers.size());
  m->headers_off_ = headers_off;
  return m;
}

void shared_message::destroy() noexcept {
  this->~shared_message();
  core::block_pool::deallocate(this);
}

}  // namespace keyway::daemon
