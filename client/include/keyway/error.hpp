// <keyway/error.hpp>: errors of the client library (keyway::client): the client's own error codes
// (client::errc, a std::error_category), the `error` value every failed call
// returns (a code plus a message a user can act on), and `outcome<T>`, a value
// or an error.
//
// Codes come from two categories:
//   - client::errc (category "keyway.client"): what the library itself
//     decided: bad URL, connect failure, timeout, connection closed, ...;
//   - server_errc = proto::errc (category "keyway.proto", <keyway/server_errc.hpp>):
//     what the server said in an error
//     frame (no_responders, payload_too_large, slow_consumer, ...), or what the
//     library refused locally with the server's own rules (invalid_subject,
//     payload_too_large, ...). `error::from_server` tells the two apart.
// Compare with `err.code == proto::errc::no_responders` or `== errc::timeout`.
//
// Any thread. Plain values; an error holds a std::string (error path only).
#pragma once

#include <string>
#include <system_error>
#include <type_traits>

#include <keyway/export.hpp>
#include <keyway/result.hpp>
#include <keyway/server_errc.hpp>

namespace keyway::client {

enum class errc {
  ok = 0,
  invalid_url,       // not tcp://HOST:PORT or unix:///path
  invalid_argument,  // an argument the library refuses (e.g. a zero timeout)
  connect_failed,    // resolve/connect/handshake I/O failed (connection refused, ...)
  timeout,           // connect, ack, request or flush deadline passed
  closed,            // the connection is closed (by close(), the server or the network)
  would_block,       // a blocking call from the IO thread (a callback); use the _async form
  bad_server_frame,  // the server sent a frame the client cannot accept
  handler_failed,    // a message handler or completion threw (reported to on_error)
  connection_lost,   // the link dropped while this call awaited the server: it may or may not
                    // have taken effect; retry if duplicates are acceptable (never resent silently)
  buffer_full,  // disconnected, and the reconnect buffer (connect_options::reconnect_buffer_bytes)
                // is full
  no_reply_to,  // respond() to a message that carries no reply_to
  count_,       // sentinel: the number of codes
};

/// The codes the server sends (no_responders, payload_too_large, ...).
using server_errc = proto::errc;

KEYWAY_API const std::error_category& client_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), client_category()};
}

/// One failure: a code and a message naming what failed and what to do.
struct error {
  std::error_code code;
  std::string message;
  /// True when `code` is a proto::errc the server sent in an error frame.
  bool from_server = false;

  /// "no_responders: no subscriber matched ..." (code name, then the message).
  KEYWAY_API std::string to_string() const;
};

/// The snake_case name of a client or proto code ("timeout", "no_responders").
KEYWAY_API std::string code_name(std::error_code code);

/// A value or a client::error (core's result with this module's error type).
template <class T>
using outcome = keyway::result<T, error>;

}  // namespace keyway::client

template <>
struct std::is_error_code_enum<keyway::client::errc> : std::true_type {};
