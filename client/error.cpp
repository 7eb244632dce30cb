#include <keyway/error.hpp>

namespace keyway::client {
namespace {

std::string_view name_of(errc e) noexcept {
  switch (e) {
    case errc::ok:
      return "ok";
    case errc::invalid_url:
      return "invalid_url";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::connect_failed:
      return "connect_failed";
    case errc::timeout:
      return "timeout";
    case errc::closed:
      return "closed";
    case errc::would_block:
      return "would_block";
    case errc::bad_server_frame:
      return "bad_server_frame";
    case errc::handler_failed:
      return "handler_failed";
    case errc::connection_lost:
      return "connection_lost";
    case errc::buffer_full:
      return "buffer_full";
    case errc::no_reply_to:
      return "no_reply_to";
    case errc::count_:
      break;
  }
  return "unknown";
}

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "keyway.client"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::ok:
        return "success";
      case errc::invalid_url:
        return "invalid server URL";
      case errc::invalid_argument:
        return "invalid argument";
      case errc::connect_failed:
        return "cannot connect to the server";
      case errc::timeout:
        return "timed out";
      case errc::closed:
        return "connection closed";
      case errc::would_block:
        return "blocking call on the client's IO thread";
      case errc::bad_server_frame:
        return "the server sent an invalid frame";
      case errc::handler_failed:
        return "a callback threw an exception";
      case errc::connection_lost:
        return "the connection was lost before the server answered";
      case errc::buffer_full:
        return "the reconnect buffer is full";
      case errc::no_reply_to:
        return "the message has no reply_to";
      case errc::count_:
        break;
    }
    return "unknown client error " + std::to_string(ev);
  }
};

}  // namespace

const std::error_category& client_category() noexcept {
  static const category c;
  return c;
}

std::string code_name(std::error_code code) {
  if (code.category() == client_category())
    return std::string(name_of(static_cast<errc>(code.value())));
  if (code.category() == proto::proto_category())
    return std::string(proto::to_string(static_cast<proto::errc>(code.value())));
  return code.message();
}

std::string error::to_string() const {
  if (message.empty()) return code_name(code);
  return code_name(code) + ": " + message;
}

}  // namespace keyway::client
