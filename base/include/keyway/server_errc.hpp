// The error codes the server sends in error frames (category "keyway.proto"),
// as a std::error_category so they fit std::error_code. Shared by keywayd and
// the client library: a client compares `err.code == keyway::proto::errc::no_responders`
// (or keyway::client::server_errc, the same type).
// Any thread; codes cost nothing.
#pragma once

#include <string_view>
#include <system_error>

#include <keyway/export.hpp>

namespace keyway::proto {

enum class errc {
  ok = 0,
  protocol,           // malformed frame, or a frame not allowed now (fatal)
  frame_too_large,    // framed message over limits.max_frame / max_segments (fatal)
  payload_too_large,  // payload, header count or header bytes over the limit
  invalid_subject,    // subject, pattern, reply_to or queue group
  auth_failed,        // (fatal)
  too_many_subscriptions,
  slow_consumer,         // outbound queue over max_pending_bytes (fatal with policy disconnect)
  no_responders,         // a request (publish with reply_to) matched no subscriber
  shutting_down,         // the daemon is draining (fatal)
  unsupported_version,   // hello.protocolVersion not spoken here (fatal)
  timeout,               // handshake or idle timeout (fatal)
  internal,              // a handler failed; the connection carries on
  invalid_key,           // key over limits.max_key
  too_many_connections,  // over limits.max_connections (fatal)
  owner_lost,  // a cluster node owning the key was lost before it acknowledged (retriable)
  count_,      // sentinel: the number of codes, for arrays indexed by errc
};

KEYWAY_API const std::error_category& proto_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), proto_category()};
}

/// snake_case name as used in docs and logs, e.g. "payload_too_large".
KEYWAY_API std::string_view to_string(errc e) noexcept;

}  // namespace keyway::proto

template <>
struct std::is_error_code_enum<keyway::proto::errc> : std::true_type {};
