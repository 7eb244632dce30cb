// <keyway/message.hpp>: the value types of the client API: headers going out (views), and a
// received `message` (owned). Plain values, any thread.
//
// Bytes travel in std::string / std::string_view: keys, payloads and header
// values are arbitrary bytes (NUL included), subjects are text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace keyway::client {

/// A header of an outgoing publish; views, valid for the duration of the call.
struct header {
  std::string_view name;   // non-empty
  std::string_view value;  // bytes
};

/// A header of a received message.
struct received_header {
  std::string name;
  std::string value;
  bool operator==(const received_header&) const = default;
};

/// One delivery (a `message` frame). The IO thread hands each handler a
/// reference to a reused instance: copy it to keep it past the callback.
struct message {
  std::string subject;  // the literal subject it was published to
  std::string key;      // bytes; empty = routed by subject
  std::string payload;  // bytes
  std::vector<received_header> headers;
  std::string reply_to;          // empty = none; else answer with publish(reply_to, ...)
  std::uint32_t owner_core = 0;  // the server core that ordered this key
  std::uint64_t seq = 0;         // rises strictly per owner_core
  std::uint32_t sid = 0;         // the subscription that matched
};

}  // namespace keyway::client
