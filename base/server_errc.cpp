#include <keyway/server_errc.hpp>

#include <string>

namespace keyway::proto {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "keyway.proto"; }
  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::ok:
        return "ok";
      case errc::protocol:
        return "protocol violation";
      case errc::frame_too_large:
        return "frame too large";
      case errc::payload_too_large:
        return "payload too large";
      case errc::invalid_subject:
        return "invalid subject";
      case errc::auth_failed:
        return "authentication failed";
      case errc::too_many_subscriptions:
        return "too many subscriptions";
      case errc::slow_consumer:
        return "slow consumer";
      case errc::no_responders:
        return "no responders";
      case errc::shutting_down:
        return "server shutting down";
      case errc::unsupported_version:
        return "unsupported protocol version";
      case errc::timeout:
        return "timeout";
      case errc::internal:
        return "internal error";
      case errc::invalid_key:
        return "invalid key";
      case errc::too_many_connections:
        return "too many connections";
      case errc::owner_lost:
        return "the key's owner node was lost";
      case errc::count_:
        break;
    }
    return "unknown keyway.proto error " + std::to_string(code);
  }
};

}  // namespace

const std::error_category& proto_category() noexcept {
  static const category instance;
  return instance;
}

std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::ok:
      return "ok";
    case errc::protocol:
      return "protocol";
    case errc::frame_too_large:
      return "frame_too_large";
    case errc::payload_too_large:
      return "payload_too_large";
    case errc::invalid_subject:
      return "invalid_subject";
    case errc::auth_failed:
      return "auth_failed";
    case errc::too_many_subscriptions:
      return "too_many_subscriptions";
    case errc::slow_consumer:
      return "slow_consumer";
    case errc::no_responders:
      return "no_responders";
    case errc::shutting_down:
      return "shutting_down";
    case errc::unsupported_version:
      return "unsupported_version";
    case errc::timeout:
      return "timeout";
    case errc::internal:
      return "internal";
    case errc::invalid_key:
      return "invalid_key";
    case errc::too_many_connections:
      return "too_many_connections";
    case errc::owner_lost:
      return "owner_lost";
    case errc::count_:
      break;
  }
  return "unknown";
}

}  // namespace keyway::proto
