#include "proto/errc.hpp"

#include <doctest/doctest.h>

#include <ostream>
#include <string>
#include <system_error>

using namespace keyway::proto;

TEST_CASE("errc is a std::error_code with its own category") {
  std::error_code ec = errc::payload_too_large;
  CHECK(ec.category().name() == std::string("keyway.proto"));
  CHECK(ec.message() == "payload too large");
  CHECK(ec == errc::payload_too_large);
  CHECK(ec != errc::protocol);
  CHECK_FALSE(std::error_code(errc::ok));
}

TEST_CASE("every errc maps to the wire and back") {
  for (int i = 1; i < static_cast<int>(errc::count_); ++i) {
    const auto e = static_cast<errc>(i);
    CAPTURE(to_string(e));
    CHECK(from_wire(to_wire(e)) == e);
    CHECK(to_string(e) != "unknown");
  }
  CHECK(to_wire(errc::ok) == wire::ErrorCode::INTERNAL);
  CHECK(from_wire(static_cast<wire::ErrorCode>(999)) == errc::internal);  // a newer server's code
}

TEST_CASE("fatal defaults follow docs/protocol.md") {
  CHECK(fatal_by_default(errc::protocol));
  CHECK(fatal_by_default(errc::frame_too_large));
  CHECK(fatal_by_default(errc::auth_failed));
  CHECK(fatal_by_default(errc::slow_consumer));
  CHECK_FALSE(fatal_by_default(errc::payload_too_large));
  CHECK_FALSE(fatal_by_default(errc::invalid_subject));
  CHECK_FALSE(fatal_by_default(errc::no_responders));
  CHECK_FALSE(fatal_by_default(errc::internal));
}

TEST_CASE("format_size and quote") {
  CHECK(format_size(1) == "1 byte");
  CHECK(format_size(17) == "17 bytes");
  CHECK(format_size(64 * 1024) == "64 KiB");
  CHECK(format_size(2 * 1024 * 1024) == "2 MiB");
  CHECK(format_size(1024 * 1024 + 1) == "1048577 bytes (1.00 MiB)");
  CHECK(quote("a.b") == "'a.b'");
  CHECK(quote(std::string_view("a\x01'", 3)) == "'a\\x01\\x27'");
  CHECK(quote("abcdef", 3) == "'abc...'");
}

TEST_CASE("status") {
  status ok;
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  status bad(errc::invalid_key, "too long");
  CHECK_FALSE(bad.ok());
  CHECK(bad.error_code() == errc::invalid_key);
  CHECK(bad.message() == "too long");
}
