#include "proto/errc.hpp"

#include <algorithm>
#include <cstdio>

namespace keyway::proto {

bool fatal_by_default(errc e) noexcept {
  switch (e) {
    case errc::protocol:
    case errc::frame_too_large:
    case errc::auth_failed:
    case errc::slow_consumer:
    case errc::shutting_down:
    case errc::unsupported_version:
    case errc::timeout:
    case errc::too_many_connections:
      return true;
    default:
      return false;
  }
}

wire::ErrorCode to_wire(errc e) noexcept {
  using W = wire::ErrorCode;
  switch (e) {
    case errc::protocol:
      return W::PROTOCOL;
    case errc::frame_too_large:
      return W::FRAME_TOO_LARGE;
    case errc::payload_too_large:
      return W::PAYLOAD_TOO_LARGE;
    case errc::invalid_subject:
      return W::INVALID_SUBJECT;
    case errc::auth_failed:
      return W::AUTH_FAILED;
    case errc::too_many_subscriptions:
      return W::TOO_MANY_SUBSCRIPTIONS;
    case errc::slow_consumer:
      return W::SLOW_CONSUMER;
    case errc::no_responders:
      return W::NO_RESPONDERS;
    case errc::shutting_down:
      return W::SHUTTING_DOWN;
    case errc::unsupported_version:
      return W::UNSUPPORTED_VERSION;
    case errc::timeout:
      return W::TIMEOUT;
    case errc::invalid_key:
      return W::INVALID_KEY;
    case errc::too_many_connections:
      return W::TOO_MANY_CONNECTIONS;
    case errc::owner_lost:
      return W::OWNER_LOST;
    case errc::count_:
    case errc::ok:
    case errc::internal:
      return W::INTERNAL;
  }
  return W::INTERNAL;
}

errc from_wire(wire::ErrorCode code) noexcept {
  using W = wire::ErrorCode;
  switch (code) {
    case W::PROTOCOL:
      return errc::protocol;
    case W::FRAME_TOO_LARGE:
      return errc::frame_too_large;
    case W::PAYLOAD_TOO_LARGE:
      return errc::payload_too_large;
    case W::INVALID_SUBJECT:
      return errc::invalid_subject;
    case W::AUTH_FAILED:
      return errc::auth_failed;
    case W::TOO_MANY_SUBSCRIPTIONS:
      return errc::too_many_subscriptions;
    case W::SLOW_CONSUMER:
      return errc::slow_consumer;
    case W::NO_RESPONDERS:
      return errc::no_responders;
    case W::SHUTTING_DOWN:
      return errc::shutting_down;
    case W::UNSUPPORTED_VERSION:
      return errc::unsupported_version;
    case W::TIMEOUT:
      return errc::timeout;
    case W::INTERNAL:
      return errc::internal;
    case W::INVALID_KEY:
      return errc::invalid_key;
    case W::TOO_MANY_CONNECTIONS:
      return errc::too_many_connections;
    case W::OWNER_LOST:
      return errc::owner_lost;
  }
  return errc::internal;
}

std::string format_size(std::uint64_t bytes) {
  constexpr std::uint64_t kib = 1024;
  constexpr std::uint64_t mib = 1024 * kib;
  constexpr std::uint64_t gib = 1024 * mib;
  if (bytes == 1) return "1 byte";
  if (bytes < kib) return std::to_string(bytes) + " bytes";
  if (bytes % gib == 0) return std::to_string(bytes / gib) + " GiB";
  if (bytes % mib == 0) return std::to_string(bytes / mib) + " MiB";
  if (bytes % kib == 0) return std::to_string(bytes / kib) + " KiB";
  char approx[32];
  if (bytes >= gib) {
    std::snprintf(approx, sizeof approx, "%.2f GiB", static_cast<double>(bytes) / gib);
  } else if (bytes >= mib) {
    std::snprintf(approx, sizeof approx, "%.2f MiB", static_cast<double>(bytes) / mib);
  } else {
    std::snprintf(approx, sizeof approx, "%.2f KiB", static_cast<double>(bytes) / kib);
  }
  return std::to_string(bytes) + " bytes (" + approx + ")";
}

std::string quote(std::string_view text, std::size_t max_bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  out += '\'';
  std::size_t n = 0;
  for (char c : text) {
    if (n++ == max_bytes) {
      out += "...";
      break;
    }
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\' && c != '\'') {
      out += c;
    } else {
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 0xf];
    }
  }
  out += '\'';
  return out;
}

}  // namespace keyway::proto
