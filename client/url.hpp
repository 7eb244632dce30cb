// server_url: where a client connects — tcp://HOST:PORT (HOST a name, an IPv4
// address or [IPv6]) or unix:///absolute/path — and its parser.
// Any thread; pure functions; parsing allocates the strings it returns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/error.hpp>

namespace keyway::client {

struct server_url {
  enum class kind { tcp, unix_path };
  kind type = kind::tcp;
  std::string host;        // tcp: name or address, without brackets
  std::uint16_t port = 0;  // tcp: 1..65535
  std::string path;        // unix: absolute path

  /// The canonical form: "tcp://127.0.0.1:7400", "tcp://[::1]:7400", "unix:///run/keyway.sock".
  std::string to_string() const;
};

/// The URL the CLI uses when neither --server nor KEYWAY_URL is given.
inline constexpr std::string_view default_url = "tcp://127.0.0.1:7400";

/// Parses `url`; the error (errc::invalid_url) names the URL and the rule broken.
outcome<server_url> parse_url(std::string_view url);

/// Parses a comma-separated list of URLs ("tcp://a:7400,tcp://b:7400");
/// spaces around the commas are allowed. Duplicates are kept once.
outcome<std::vector<server_url>> parse_url_list(std::string_view urls);

}  // namespace keyway::client
