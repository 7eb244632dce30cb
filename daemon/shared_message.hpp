// shared_message: one published message, immutable once built, shared by every
// worker that delivers it. One allocation holds the subject, key, payload,
// reply-to and headers. The first four are kept as a delivery frame lays them
// out (proto::encoder::write_plain_message_lists; the payload starts on an
// 8-byte boundary), so that delivering a message without headers writes the
// frame's 11 head words and copies them in one piece (stamped_message)
// instead of encoding every field again for every subscriber.
//
// Threads: built on the ingress worker, from that worker's block_pool, then
// only read, from any worker. The reference count is the only thing written
// after construction (atomic); the last release returns the block to its pool.
// Cost: one pooled allocation + one copy of the publish's bytes at ingress; a
// fan-out to k workers costs k-1 atomic increments, never a copy of the payload.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

#include "core/block_pool.hpp"
#include "core/cache.hpp"
#include "proto/encoder.hpp"

namespace keyway::daemon {

using header_view = proto::header;

class shared_message {
 public:
  /// Copies everything into a block of `pool` (the calling worker's); the
  /// refcount starts at 1 (owned by the caller).
  static shared_message* make(core::block_pool& pool, std::string_view subject,
                              std::span<const std::byte> key, std::span<const std::byte> payload,
                              std::string_view reply_to, std::span<const header_view> headers);

  std::string_view subject() const noexcept { return {chars(subject_off_), subject_len_}; }
  std::span<const std::byte> key() const noexcept { return {bytes(key_off_), key_len_}; }
  std::span<const std::byte> payload() const noexcept {
    return {bytes(payload_off_), payload_len_};
  }
  std::string_view reply_to() const noexcept { return {chars(reply_off_), reply_len_}; }
  std::uint32_t header_count() const noexcept { return header_count_; }
  /// A message without headers: frame_lists() is all its delivery needs.
  bool plain() const noexcept { return header_count_ == 0; }
  /// The fields in the delivery frame's layout, from the subject to the
  /// payload's padding.
  std::span<const std::byte> frame_lists() const noexcept {
    return {bytes(subject_off_),
            payload_off_ + ((payload_len_ + 7) & ~std::uint32_t{7}) - subject_off_};
  }
  /// Calls fn(header_view) for each header, in order.
  template <class Fn>
  void for_each_header(Fn&& fn) const;
  /// The routing key: the key, or the subject when the key is empty.
  std::span<const std::byte> routing_key() const noexcept {
    if (key_len_ != 0) return key();
    return std::as_bytes(std::span<const char>(subject().data(), subject().size()));
  }

  /// When its frame was read (steady clock, ns), for the latency histogram.
  std::uint64_t received_ns() const noexcept { return received_ns_; }
  void set_received_ns(std::uint64_t ns) noexcept { received_ns_ = ns; }

  /// Starts fetching the message's first two cache lines (its fields and the
  /// head of its delivery frame's lists), which the ingress worker's CPU wrote.
  void prefetch() const noexcept {
    __builtin_prefetch(this);
    __builtin_prefetch(reinterpret_cast<const char*>(this) + core::cache_line);
  }

  void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
  }

 private:
  shared_message() = default;
  void destroy() noexcept;
  const char* chars(std::uint32_t off) const noexcept {
    return reinterpret_cast<const char*>(this) + off;
  }
  const std::byte* bytes(std::uint32_t off) const noexcept {
    return reinterpret_cast<const std::byte*>(this) + off;
  }

  std::atomic<std::uint32_t> refs_{1};
  std::uint64_t received_ns_ = 0;
  std::uint32_t header_count_ = 0;
  std::uint32_t subject_off_ = 0, subject_len_ = 0;
  std::uint32_t key_off_ = 0, key_len_ = 0;
  std::uint32_t payload_off_ = 0, payload_len_ = 0;
  std::uint32_t reply_off_ = 0, reply_len_ = 0;
  std::uint32_t headers_off_ = 0;  // packed: u32 name_len, u32 value_len, name, value
};

template <class Fn>
void shared_message::for_each_header(Fn&& fn) const {
  const std::byte* p = bytes(headers_off_);
  for (std::uint32_t i = 0; i < header_count_; ++i) {
    std::uint32_t lens[2];
    __builtin_memcpy(lens, p, sizeof lens);
    p += sizeof lens;
    header_view h{{reinterpret_cast<const char*>(p), lens[0]}, {p + lens[0], lens[1]}};
    fn(h);
    p += lens[0] + lens[1];
  }
}

/// Owning handle; moves are free, copies add a reference.
class message_ref {
 public:
  message_ref() = default;
  /// Adopts a reference (e.g. the one make() returned).
  explicit message_ref(shared_message* m) noexcept : m_(m) {}
  /// A new reference to a message someone else holds.
  static message_ref share(const shared_message& m) noexcept {
    const_cast<shared_message&>(m).add_ref();
    return message_ref(const_cast<shared_message*>(&m));
  }
  message_ref(const message_ref& o) noexcept : m_(o.m_) {
    if (m_) m_->add_ref();
  }
  message_ref(message_ref&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
  message_ref& operator=(message_ref o) noexcept {
    std::swap(m_, o.m_);
    return *this;
  }
  ~message_ref() {
    if (m_) m_->release();
  }
  const shared_message* operator->() const noexcept { return m_; }
  const shared_message& operator*() const noexcept { return *m_; }
  explicit operator bool() const noexcept { return m_ != nullptr; }

 private:
  shared_message* m_ = nullptr;
};

}  // namespace keyway::daemon
