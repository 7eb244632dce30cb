// Plain views of frame fields, shared by the encoder (what to write) and the
// decoder (what was read). Views only: they borrow the bytes of a frame or
// of the caller. Header only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace keyway::proto {

struct header {
  std::string_view name{};
  std::span<const std::byte> value{};
};

/// A publish read once out of its frame (decoder::next does it for every
/// publish), so that validation and the handler do not walk the Cap'n Proto
/// structure again. Valid as long as the frame it came from.
struct publish_view {
  std::string_view subject{};
  std::span<const std::byte> key{};
  std::span<const std::byte> payload{};
  std::string_view reply_to{};
  /// Entries of the header list as sent, even over limits.max_headers.
  std::uint32_t header_count = 0;
  /// The headers; empty when header_count is over limits.max_headers (the
  /// frame is refused then, without reading them).
  std::span<const header> headers{};
  std::uint64_t ack_id = 0;
};

/// A delivery (Message frame) read once by the decoder, for clients: the same
/// fields as a publish (ack_id unused), plus where and in what order it was
/// routed.
struct delivery_view : publish_view {
  std::uint32_t sid = 0;
  std::uint32_t owner_core = 0;
  std::uint64_t seq = 0;
};

/// A publishBatch (protocol version 2) read by the decoder: the subject and
/// the entries' bytes as sent. validate_client_frame() checks the entries;
/// batch_cursor walks them.
struct publish_batch_view {
  std::string_view subject{};
  std::uint32_t count = 0;  // as announced
  std::span<const std::byte> entries{};
};

/// A messageBatch (protocol version 2) read by the decoder, for clients.
struct message_batch_view : publish_batch_view {
  std::uint32_t sid = 0;
};

/// One entry of a batch: views into the frame. owner_core and seq are a
/// messageBatch entry's (0 in a publishBatch).
struct batch_entry {
  std::span<const std::byte> key{};
  std::span<const std::byte> payload{};
  std::uint32_t owner_core = 0;
  std::uint64_t seq = 0;
};

/// An entry on the wire: u32 key size, u32 payload size, and in a
/// messageBatch u32 ownerCore and u64 seq (little-endian), then the key's
/// bytes and the payload's; entries follow each other without padding.
inline constexpr std::size_t publish_entry_head = 8;
inline constexpr std::size_t message_entry_head = 20;
constexpr std::size_t batch_entry_size(std::size_t key, std::size_t payload,
                                       std::size_t head = publish_entry_head) noexcept {
  return head + key + payload;
}

namespace detail {
inline std::byte* put(std::byte* dst, const void* src, std::size_t n) noexcept {
  if (n != 0) std::memcpy(dst, src, n);  // little-endian hosts only, as the codec
  return dst + n;
}
}  // namespace detail

/// Writes one publishBatch entry at `dst` (batch_entry_size() bytes there);
/// returns its end. Sizes must fit in 32 bits (every limit does).
inline std::byte* write_batch_entry(std::byte* dst, std::span<const std::byte> key,
                                    std::span<const std::byte> payload) noexcept {
  const std::uint32_t sizes[2] = {static_cast<std::uint32_t>(key.size()),
                                  static_cast<std::uint32_t>(payload.size())};
  dst = detail::put(dst, sizes, sizeof sizes);
  dst = detail::put(dst, key.data(), key.size());
  return detail::put(dst, payload.data(), payload.size());
}

/// The same for a messageBatch entry (message_entry_head bytes of head).
inline std::byte* write_message_entry(std::byte* dst, std::span<const std::byte> key,
                                      std::span<const std::byte> payload, std::uint32_t owner_core,
                                      std::uint64_t seq) noexcept {
  const std::uint32_t words[3] = {static_cast<std::uint32_t>(key.size()),
                                  static_cast<std::uint32_t>(payload.size()), owner_core};
  dst = detail::put(dst, words, sizeof words);
  dst = detail::put(dst, &seq, sizeof seq);
  dst = detail::put(dst, key.data(), key.size());
  return detail::put(dst, payload.data(), payload.size());
}

/// Walks the entries of a batch (`head` bytes of head each:
/// publish_entry_head or message_entry_head), checking each against the bytes
/// left: safe on any input. Cheap to copy (a position to come back to).
class batch_cursor {
 public:
  batch_cursor() = default;
  explicit batch_cursor(std::span<const std::byte> entries,
                        std::size_t head = publish_entry_head) noexcept
      : rest_(entries), head_(head) {}

  /// The next entry into `e`; false at the end, or when what is left is not a
  /// whole entry (then left() is not 0).
  bool next(batch_entry& e) noexcept {
    if (rest_.size() < head_) return false;
    std::uint32_t sizes[2];
    std::memcpy(sizes, rest_.data(), sizeof sizes);
    const std::uint64_t need = std::uint64_t{head_} + sizes[0] + sizes[1];
    if (need > rest_.size()) return false;
    if (head_ == message_entry_head) {
      std::memcpy(&e.owner_core, rest_.data() + 8, 4);
      std::memcpy(&e.seq, rest_.data() + 12, 8);
    }
    e.key = rest_.subspan(head_, sizes[0]);
    e.payload = rest_.subspan(head_ + sizes[0], sizes[1]);
    rest_ = rest_.subspan(static_cast<std::size_t>(need));
    return true;
  }
  /// Bytes left that next() did not (or could not) read as entries.
  std::size_t left() const noexcept { return rest_.size(); }

 private:
  std::span<const std::byte> rest_{};
  std::size_t head_ = publish_entry_head;
};

/// Calls `f(const delivery_view&)` for each entry of a messageBatch, in
/// order, as the Message it stands for (no headers, no replyTo); stops at the
/// first entry that is not whole (validate_server_frame() refuses such a batch).
template <class F>
void for_each_delivery(const message_batch_view& b, F&& f) {
  delivery_view d;
  d.sid = b.sid;
  d.subject = b.subject;
  batch_cursor c(b.entries, message_entry_head);
  batch_entry e;
  while (c.next(e)) {
    d.key = e.key;
    d.payload = e.payload;
    d.owner_core = e.owner_core;
    d.seq = e.seq;
    f(static_cast<const delivery_view&>(d));
  }
}

}  // namespace keyway::proto
