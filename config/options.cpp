#include "config/options.hpp"

#include <charconv>
#include <cstdio>
#include <stdexcept>

namespace keyway::daemon {

std::string listen_address::to_string() const {
  if (type == kind::unix_path) return "unix://" + path;
  if (host.find(':') != std::string::npos) return "tcp://[" + host + "]:" + std::to_string(port);
  return "tcp://" + host + ":" + std::to_string(port);
}

std::string cluster_name_problem(std::string_view v) {
  if (v.empty() || v.size() > 64)
    return "has " + std::to_string(v.size()) + " bytes; allowed 1..64";
  for (const char c : v) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (ok) continue;
    const auto u = static_cast<unsigned char>(c);
    char shown[8];
    std::snprintf(shown, sizeof shown, u > 0x20 && u < 0x7f && c != '"' ? "\"%c\"" : "byte 0x%02x",
                  u > 0x20 && u < 0x7f && c != '"' ? c : u);
    return "holds " + std::string(shown) + "; allowed letters, digits, '.', '_' and '-'";
  }
  return {};
}

listen_address parse_listen_url(std::string_view url) {
  auto fail = [&](std::string_view why) {
    throw std::invalid_argument("listen URL '" + std::string(url) + "': " + std::string(why) +
                                "; use tcp://HOST:PORT or unix:///absolute/path");
  };
  listen_address a;
  if (url.starts_with("unix://")) {
    a.type = listen_address::kind::unix_path;
    a.path = std::string(url.substr(7));
    if (a.path.empty() || a.path.front() != '/') fail("the Unix socket path must be absolute");
    if (a.path.size() > 107) fail("the Unix socket path is longer than 107 bytes");
    return a;
  }
  if (!url.starts_with("tcp://")) fail("unknown scheme");
  std::string_view rest = url.substr(6);
  std::string_view host, port;
  if (rest.starts_with("[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      fail("an IPv6 host must look like [::1]:PORT");
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) fail("missing :PORT");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) fail("missing host");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value > 65535)
    fail("the port must be a number from 0 to 65535");
  a.host = std::string(host);
  a.port = static_cast<std::uint16_t>(value);
  return a;
}

}  // namespace keyway::daemon
