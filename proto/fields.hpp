// Plain views of frame fields, shared by the encoder (what to write) and the
// decoder (what was read). Views only: they borrow the bytes of a frame or
// of the caller. Header only.
#pragma once

#include <cstddef>
#include <cstdint>
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

}  // namespace keyway::proto
