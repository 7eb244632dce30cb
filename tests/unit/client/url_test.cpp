#include "client/url.hpp"

#include <doctest/doctest.h>

using keyway::client::errc;
using keyway::client::parse_url;
using keyway::client::server_url;

TEST_CASE("client url: tcp host and port") {
  auto u = parse_url("tcp://127.0.0.1:7400");
  REQUIRE(u);
  CHECK(u->type == server_url::kind::tcp);
  CHECK(u->host == "127.0.0.1");
  CHECK(u->port == 7400);
  CHECK(u->to_string() == "tcp://127.0.0.1:7400");

  auto named = parse_url("tcp://localhost:1/");
  REQUIRE(named);
  CHECK(named->host == "localhost");
  CHECK(named->port == 1);
}

TEST_CASE("client url: bracketed IPv6") {
  auto u = parse_url("tcp://[::1]:65535");
  REQUIRE(u);
  CHECK(u->host == "::1");
  CHECK(u->port == 65535);
  CHECK(u->to_string() == "tcp://[::1]:65535");
}

TEST_CASE("client url: unix path") {
  auto u = parse_url("unix:///run/keyway/keyway.sock");
  REQUIRE(u);
  CHECK(u->type == server_url::kind::unix_path);
  CHECK(u->path == "/run/keyway/keyway.sock");
  CHECK(u->to_string() == "unix:///run/keyway/keyway.sock");
}

TEST_CASE("client url: rejects what it cannot connect to") {
  for (const char* bad :
       {"", "127.0.0.1:7400", "http://x:1", "tcp://", "tcp://host", "tcp://:7400", "tcp://h:0",
        "tcp://h:65536", "tcp://h:12x", "tcp://h:-1", "tcp://::1:7400", "tcp://[::1]7400",
        "unix://relative.sock", "unix://", "tcp://a b:1"}) {
    CAPTURE(bad);
    auto u = parse_url(bad);
    REQUIRE_FALSE(u);
    CHECK((u.error().code == errc::invalid_url));
    CHECK(u.error().message.find("tcp://HOST:PORT") != std::string::npos);
  }
  auto long_path = parse_url("unix:///" + std::string(120, 'x'));
  CHECK_FALSE(long_path);
}
