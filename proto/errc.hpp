// Error codes of the wire protocol (proto/), as a std::error_category so they
// fit std::error_code and asio::error_code, plus `status`: a code with the
// human message that goes into an error frame. The codes mirror
// wire::ErrorCode one to one (to_wire / from_wire).
// Any thread. Codes cost nothing; a failed status holds a std::string, so
// building one may allocate (error path only).
#pragma once

#include "proto/keyway.capnp.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace keyway::proto {

enum class errc {
  ok = 0,
  protocol,                // malformed frame, or a frame not allowed now (fatal)
  frame_too_large,         // framed message over limits.max_frame / max_segments (fatal)
  payload_too_large,       // payload, header count or header bytes over the limit
  invalid_subject,         // subject, pattern, reply_to or queue group
  auth_failed,             // (fatal)
  too_many_subscriptions,
  slow_consumer,           // outbound queue over max_pending_bytes (fatal with policy disconnect)
  no_responders,           // a request (publish with reply_to) matched no subscriber
  shutting_down,           // the daemon is draining (fatal)
  unsupported_version,     // hello.protocolVersion not spoken here (fatal)
  timeout,                 // handshake or idle timeout (fatal)
  internal,                // a handler failed; the connection carries on
  invalid_key,             // key over limits.max_key
  too_many_connections,    // over limits.max_connections (fatal)
  count_,                  // sentinel: the number of codes, for arrays indexed by errc
};

const std::error_category& proto_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), proto_category()};
}

/// snake_case name as used in docs and logs, e.g. "payload_too_large".
std::string_view to_string(errc e) noexcept;

/// Whether the server closes the connection after sending this code. The
/// `fatal` field of the error frame is authoritative; this is the default.
bool fatal_by_default(errc e) noexcept;

/// errc::ok has no wire value and maps to `internal`.
wire::ErrorCode to_wire(errc e) noexcept;
/// Unknown values (a newer peer) map to errc::internal.
errc from_wire(wire::ErrorCode code) noexcept;

/// Outcome of a validation: ok, or a code and a message a user can act on
/// ("payload of 2 MiB exceeds limits.max_payload (1 MiB); ...").
class [[nodiscard]] status {
 public:
  status() = default;
  status(errc code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return code_ == errc::ok; }
  explicit operator bool() const noexcept { return ok(); }
  errc code() const noexcept { return code_; }
  std::error_code error_code() const noexcept { return make_error_code(code_); }
  const std::string& message() const noexcept { return message_; }

 private:
  errc code_ = errc::ok;
  std::string message_;
};

/// "17 bytes", "64 KiB", "2 MiB", "1048577 bytes (1.00 MiB)": sizes in messages.
std::string format_size(std::uint64_t bytes);

/// Printable form of untrusted text for messages and logs: quoted, non-printable
/// bytes as \xNN, cut after `max_bytes` input bytes with "...".
std::string quote(std::string_view text, std::size_t max_bytes = 64);

}  // namespace keyway::proto

template <>
struct std::is_error_code_enum<keyway::proto::errc> : std::true_type {};
