#include "daemon/shared_message.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace keyway::daemon {

namespace {
constexpr std::uint32_t align8(std::size_t n) { return static_cast<std::uint32_t>((n + 7) & ~std::size_t{7}); }
}  // namespace

shared_message* shared_message::make(core::block_pool& pool, std::string_view subject, std::span<const std::byte> key,
                                     std::span<const std::byte> payload, std::string_view reply_to,
                                     std::span<const header_view> headers) {
  if (headers.empty()) return make_plain(pool, subject, key, payload, reply_to);
  std::size_t header_bytes = 0;
  for (const header_view& h : headers) header_bytes += 8 + h.name.size() + h.value.size();
  // Layout: [object][payload, 8-aligned][subject][key][reply_to][headers]
  const std::uint32_t payload_off = align8(sizeof(shared_message));
  const std::uint32_t subject_off = payload_off + static_cast<std::uint32_t>(payload.size());
  const std::uint32_t key_off = subject_off + static_cast<std::uint32_t>(subject.size());
  const std::uint32_t reply_off = key_off + static_cast<std::uint32_t>(key.size());
  const std::uint32_t headers_off = reply_off + static_cast<std::uint32_t>(reply_to.size());
  const std::size_t total = headers_off + header_bytes;

  // The pool's alignment (16) covers the 8 the payload needs.
  static_assert(alignof(shared_message) <= 16);
  void* raw = pool.allocate(total);
  auto* m = new (raw) shared_message();
  auto* base = static_cast<std::byte*>(raw);
  if (!payload.empty()) std::memcpy(base + payload_off, payload.data(), payload.size());
  if (!subject.empty()) std::memcpy(base + subject_off, subject.data(), subject.size());
  if (!key.empty()) std::memcpy(base + key_off, key.data(), key.size());
  if (!reply_to.empty()) std::memcpy(base + reply_off, reply_to.data(), reply_to.size());
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
  m->payload_off_ = payload_off;
  m->payload_len_ = static_cast<std::uint32_t>(payload.size());
  m->subject_off_ = subject_off;
  m->subject_len_ = static_cast<std::uint32_t>(subject.size());
  m->key_off_ = key_off;
  m->key_len_ = static_cast<std::uint32_t>(key.size());
  m->reply_off_ = reply_off;
  m->reply_len_ = static_cast<std::uint32_t>(reply_to.size());
  m->headers_off_ = headers_off;
  return m;
}

shared_message* shared_message::make_plain(core::block_pool& pool, std::string_view subject,
                                           std::span<const std::byte> key, std::span<const std::byte> payload,
                                           std::string_view reply_to) {
  // Layout: [object][the delivery frame's byte lists, 8-aligned]: subject,
  // key, reply-to, payload, each padded, so frame_lists() runs from the
  // subject to the payload's padding.
  const proto::delivery_fields f{.subject = subject, .key = key, .payload = payload, .reply_to = reply_to};
  const std::uint32_t lists_off = align8(sizeof(shared_message));
  const std::size_t lists_len = proto::encoder::plain_message_lists_size(f);
  void* raw = pool.allocate(lists_off + lists_len);
  auto* m = new (raw) shared_message();
  const auto at = proto::encoder::write_plain_message_lists(static_cast<std::byte*>(raw) + lists_off, f);
  const auto off = [&](std::size_t o) { return static_cast<std::uint32_t>(lists_off + o); };
  m->payload_off_ = off(at.payload);
  m->payload_len_ = static_cast<std::uint32_t>(payload.size());
  m->subject_off_ = off(at.subject);
  m->subject_len_ = static_cast<std::uint32_t>(subject.size());
  m->key_off_ = off(at.key);
  m->key_len_ = static_cast<std::uint32_t>(key.size());
  m->reply_off_ = off(at.reply_to);
  m->reply_len_ = static_cast<std::uint32_t>(reply_to.size());
  return m;
}

void shared_message::destroy() noexcept {
  this->~shared_message();
  core::block_pool::deallocate(this);
}

}  // namespace keyway::daemon
