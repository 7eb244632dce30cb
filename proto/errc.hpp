// The wire side of the protocol's error codes (the codes themselves, shared
// with the client library, are in <keyway/server_errc.hpp>): their mapping to
// wire::ErrorCode one to one (to_wire / from_wire), and `status`: a code with
// the human message that goes into an error frame.
// Any thread. Codes cost nothing; a failed status holds a std::string, so
// building one may allocate (error path only).
#pragma once

#include "proto/keyway.capnp.h"

#include <keyway/server_errc.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace keyway::proto {

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
