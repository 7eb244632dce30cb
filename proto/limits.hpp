// proto::limits: the sizes the codec and the frame validator enforce, with
// safe defaults. The daemon fills it from [limits] in keyway.toml; a client
// fills it from the server's welcome frame. Plain value type, any thread,
// header only.
#pragma once

#include "proto/errc.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace keyway::proto {

/// The protocol version this build speaks (const protocolVersion in keyway.capnp).
inline constexpr std::uint32_t protocol_version = wire::PROTOCOL_VERSION;
/// The oldest version it still speaks: a hello asking for less is refused.
inline constexpr std::uint32_t min_protocol_version = 1;
/// The first version with Frame.publishBatch and Frame.messageBatch.
inline constexpr std::uint32_t batch_version = 2;

struct limits {
  static constexpr std::uint32_t kib = 1024;
  static constexpr std::uint32_t mib = 1024 * kib;

  /// Bytes of one framed message, segment table included. Checked from the
  /// segment table before anything is allocated.
  std::uint32_t max_frame = mib + 64 * kib;
  /// Segments per framed message. Our own encoder writes one (or two with a
  /// referenced payload); other Cap'n Proto writers rarely exceed a handful.
  std::uint32_t max_segments = 16;
  std::uint32_t max_payload = mib;
  /// Bytes of a subject, subscription pattern, reply_to or queue group.
  std::uint32_t max_subject = 256;
  std::uint32_t max_key = kib;
  /// Entries in a header list, and the sum of their name and value bytes.
  std::uint32_t max_headers = 64;
  std::uint32_t max_header_bytes = 16 * kib;
  std::uint32_t max_client_name = 256;
  std::uint32_t max_auth_token = 4 * kib;
  /// Cap'n Proto nesting limit. Frames nest 4 deep (Frame, Publish, headers
  /// list, Header); anything deeper is refused.
  int nesting_limit = 16;
  /// Each frame may traverse `traversal_factor` times its own size in words
  /// (plus a small constant) before the reader refuses: room for the
  /// decoder's validation pass and a few reads by the consumer, but no
  /// amplification by pointers that alias the same data.
  std::uint32_t traversal_factor = 8;

  bool operator==(const limits&) const = default;

  /// Traversal budget for one frame of `frame_bytes` bytes.
  constexpr std::uint64_t traversal_limit_words(std::uint64_t frame_bytes) const noexcept {
    return (frame_bytes / 8) * traversal_factor + 64;
  }
  /// The largest budget any frame gets: derived from max_frame.
  constexpr std::uint64_t max_traversal_words() const noexcept {
    return traversal_limit_words(max_frame);
  }

  /// Worst-case bytes a publish or delivery needs beyond its payload when every
  /// other field is at its limit (headers, key, subject, reply_to, framing).
  constexpr std::uint64_t frame_overhead() const noexcept {
    return std::uint64_t{max_header_bytes} + std::uint64_t{max_headers} * 32 + max_key +
           2 * (std::uint64_t{max_subject} + 8) + 512 + 8 * std::uint64_t{max_segments};
  }

  /// The largest frame accepted before a connection's hello: a hello with
  /// its auth token and client name at their limits, and nothing more, so
  /// that a peer that has not authenticated can pin only this much.
  constexpr std::uint32_t hello_frame_limit() const noexcept {
    return max_auth_token + max_client_name + 1024;
  }

  /// Defaults with `max_payload` changed and max_frame following it.
  static constexpr limits with_max_payload(std::uint32_t max_payload) noexcept {
    limits l;
    l.max_payload = max_payload;
    std::uint64_t frame = std::uint64_t{max_payload} + 64 * kib;
    if (frame < max_payload + l.frame_overhead()) frame = max_payload + l.frame_overhead();
    l.max_frame = frame > 0xffff'fff0u ? 0xffff'fff0u : static_cast<std::uint32_t>(frame);
    return l;
  }
};

/// Checks that a set of limits can work: every largest-allowed publish must fit
/// in max_frame, segment count and nesting in range. For config loading.
inline status validate_limits(const limits& l) {
  if (l.max_segments < 1 || l.max_segments > 512) {
    return {errc::protocol, "limits.max_segments is " + std::to_string(l.max_segments) +
                                "; it must be between 1 and 512"};
  }
  if (l.nesting_limit < 4 || l.nesting_limit > 64) {
    return {errc::protocol, "limits.nesting_limit is " + std::to_string(l.nesting_limit) +
                                "; it must be between 4 and 64"};
  }
  if (l.traversal_factor < 2) {
    return {errc::protocol, "limits.traversal_factor is " + std::to_string(l.traversal_factor) +
                                "; it must be at least 2"};
  }
  if (l.max_subject < 1 || l.max_payload < 1) {
    return {errc::protocol, "limits.max_subject and limits.max_payload must be at least 1"};
  }
  const std::uint64_t need = std::uint64_t{l.max_payload} + l.frame_overhead();
  if (l.max_frame < need) {
    return {errc::frame_too_large,
            "limits.max_frame (" + format_size(l.max_frame) +
                ") cannot hold a publish of limits.max_payload (" + format_size(l.max_payload) +
                ") with headers, key and subjects at their limits; it needs " + format_size(need) +
                "; raise max_frame or lower the other limits"};
  }
  return {};
}

}  // namespace keyway::proto
