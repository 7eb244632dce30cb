#include "client/url.hpp"

#include <charconv>

namespace keyway::client {

std::string server_url::to_string() const {
  if (type == kind::unix_path) return "unix://" + path;
  if (host.find(':') != std::string::npos) return "tcp://[" + host + "]:" + std::to_string(port);
  return "tcp://" + host + ":" + std::to_string(port);
}

outcome<server_url> parse_url(std::string_view url) {
  const auto fail = [&](std::string_view why) {
    return error{errc::invalid_url,
                 "server URL '" + std::string(url) + "': " + std::string(why) +
                     "; use tcp://HOST:PORT or unix:///absolute/path",
                 false};
  };
  server_url u;
  if (url.starts_with("unix://")) {
    u.type = server_url::kind::unix_path;
    u.path = std::string(url.substr(7));
    if (u.path.empty() || u.path.front() != '/')
      return fail("the Unix socket path must be absolute");
    if (u.path.size() > 107) return fail("the Unix socket path is longer than 107 bytes");
    return u;
  }
  if (!url.starts_with("tcp://")) {
    if (url.find("://") == std::string_view::npos) return fail("missing scheme");
    return fail("unknown scheme");
  }
  std::string_view rest = url.substr(6);
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view host, port;
  if (rest.starts_with("[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      return fail("an IPv6 host must look like [::1]:PORT");
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return fail("missing :PORT");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return fail("an IPv6 host must be in brackets, like [::1]:PORT");
  }
  if (host.empty()) return fail("missing host");
  if (host.find_first_of("/?#@ ") != std::string_view::npos)
    return fail("the host has a character not allowed here");
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value == 0 ||
      value > 65535)
    return fail("the port must be a number from 1 to 65535");
  u.host = std::string(host);
  u.port = static_cast<std::uint16_t>(value);
  return u;
}

outcome<std::vector<server_url>> parse_url_list(std::string_view urls) {
  std::vector<server_url> out;
  std::string_view rest = urls;
  for (;;) {
    const auto comma = rest.find(',');
    std::string_view one = rest.substr(0, comma);
    while (!one.empty() && one.front() == ' ') one.remove_prefix(1);
    while (!one.empty() && one.back() == ' ') one.remove_suffix(1);
    if (one.empty()) {
      return error{errc::invalid_url,
                   "server list '" + std::string(urls) +
                       "' has an empty entry; separate URLs with single commas",
                   false};
    }
    auto u = parse_url(one);
    if (!u) return u.error();
    const std::string canonical = u->to_string();
    bool seen = false;
    for (const server_url& have : out) seen = seen || have.to_string() == canonical;
    if (!seen) out.push_back(std::move(*u));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

}  // namespace keyway::client
