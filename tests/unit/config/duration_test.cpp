// parse_duration() and format_duration(): the duration syntax shared by keyway.toml and
// keywayd's flags.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "config/config.hpp"

using keyway::config::format_duration;
using keyway::config::parse_duration;
using namespace std::chrono_literals;

TEST_CASE("durations with and without a unit") {
  CHECK(parse_duration("0").value == 0ms);
  CHECK(parse_duration("1500").value == 1500ms);
  CHECK(parse_duration("250ms").value == 250ms);
  CHECK(parse_duration("5s").value == 5s);
  CHECK(parse_duration("2m").value == 2min);
  CHECK(parse_duration("1h").value == 1h);
  CHECK(parse_duration("5s").error.empty());
}

TEST_CASE("malformed durations are refused with the text and the rule") {
  for (const char* bad :
       {"", "s", "-5s", "+5s", " 5s", "5 s", "5S", "1.5s", "5sec", "5d", "10ms5", "0x10"}) {
    INFO(bad);
    auto r = parse_duration(bad);
    CHECK_FALSE(r.value.has_value());
    CHECK(
        r.error ==
        std::string("\"").append(bad) +
            "\" is not a duration; use a whole number and a unit, e.g. 500ms, 5s, 2m or 1h (a bare "
            "number means milliseconds)");
  }
}

TEST_CASE("durations that overflow are refused") {
  CHECK(parse_duration("9223372036854775807").value.has_value());
  CHECK(parse_duration("9223372036854775808").error ==
        "\"9223372036854775808\" is too long a duration");
  CHECK(parse_duration("9223372036854776h").error ==
        "\"9223372036854776h\" is too long a duration");
}

TEST_CASE("format_duration uses the largest exact unit and parses back") {
  CHECK(format_duration(0ms) == "0");
  CHECK(format_duration(1500ms) == "1500ms");
  CHECK(format_duration(5s) == "5s");
  CHECK(format_duration(90s) == "90s");
  CHECK(format_duration(2min) == "2m");
  CHECK(format_duration(24h) == "24h");
  for (auto d : {0ms, 1ms, 999ms, 1000ms, 61000ms, 3600000ms, 7260000ms})
    CHECK(parse_duration(format_duration(d)).value == d);
}
