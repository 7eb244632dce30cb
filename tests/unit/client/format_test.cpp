#include "client/cli/format.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace keyway::cli;

TEST_CASE("client template: every {i} becomes the index") {
  index_template t("k-{i}-{i}");
  CHECK(t.has_placeholder());
  CHECK(t.render(0) == "k-0-0");
  CHECK(t.render(1234567890123ull) == "k-1234567890123-1234567890123");
  std::string reused = "garbage that must go";
  t.render(7, reused);
  CHECK(reused == "k-7-7");
}

TEST_CASE("client template: text without a placeholder is unchanged") {
  index_template t("plain {j} {} {i");
  CHECK_FALSE(t.has_placeholder());
  CHECK(t.render(5) == "plain {j} {} {i");
  CHECK(index_template("").render(3).empty());
  CHECK(index_template("{i}").render(42) == "42");
  CHECK(index_template("{{i}}").render(1) == "{1}");
}

TEST_CASE("client json: escapes quotes backslashes and controls") {
  CHECK(json_string("") == "\"\"");
  CHECK(json_string("plain text") == "\"plain text\"");
  CHECK(json_string("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_string("\n\r\t\b\f") == "\"\\n\\r\\t\\b\\f\"");
  CHECK(json_string(std::string("\x01\x1f", 2)) == "\"\\u0001\\u001f\"");
  CHECK(json_string(std::string("nul\0end", 7)) == "\"nul\\u0000end\"");
}

TEST_CASE("client json: bytes from 0x7f up are \\u00XX escapes") {
  CHECK(json_string("\x7f") == "\"\\u007f\"");
  CHECK(json_string("\xff\x80") == "\"\\u00ff\\u0080\"");
  // UTF-8 text is escaped byte by byte too: the output is ASCII and lossless.
  CHECK(json_string("\xc3\xa9") == "\"\\u00c3\\u00a9\"");
  for (int b = 0; b < 256; ++b) {
    const std::string out = json_string(std::string(1, static_cast<char>(b)));
    for (char c : out) CHECK(static_cast<unsigned char>(c) >= 0x20);
    for (char c : out) CHECK(static_cast<unsigned char>(c) < 0x7f);
  }
}

TEST_CASE("client json: a message line") {
  keyway::client::message m;
  m.subject = "orders.eu";
  m.key = "k\"1";
  m.payload = std::string("x\0y", 3);
  m.owner_core = 1;
  m.seq = 42;
  m.reply_to = "_INBOX.a.1";
  std::string line;
  append_json_message(line, m);
  const std::string expected = R"({"subject":"orders.eu","key":"k\"1","payload":"x\u0000y",)"
                               R"("core":1,"seq":42,"reply_to":"_INBOX.a.1"})";
  CHECK(line == expected);
  m.headers = {{"h1", "v1"}, {"h2", ""}};
  line.clear();
  append_json_message(line, m);
  CHECK(line.ends_with(R"("reply_to":"_INBOX.a.1","headers":[["h1","v1"],["h2",""]]})"));
}

TEST_CASE("client plain: core/seq subject key and payload") {
  keyway::client::message m;
  m.subject = "a.b";
  m.payload = "hello";
  m.owner_core = 0;
  m.seq = 7;
  std::string line;
  append_plain_message(line, m);
  CHECK(line == "[0/7] a.b: hello");
  m.key = "user-1";
  line.clear();
  append_plain_message(line, m);
  CHECK(line == "[0/7] a.b user-1: hello");
}

TEST_CASE("client duration: units and bare milliseconds") {
  using std::chrono::milliseconds;
  CHECK(parse_duration("2s") == milliseconds(2000));
  CHECK(parse_duration("500ms") == milliseconds(500));
  CHECK(parse_duration("1.5s") == milliseconds(1500));
  CHECK(parse_duration("1m") == milliseconds(60000));
  CHECK(parse_duration("250") == milliseconds(250));
  CHECK(parse_duration("250us") == milliseconds(1));
  for (const char* bad : {"", "s", "0", "0s", "-1s", "2h", "2 s", "ms", "nan", "inf"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_duration(bad).has_value());
  }
  CHECK(format_duration(milliseconds(2000)) == "2s");
  CHECK(format_duration(milliseconds(1500)) == "1500ms");
  CHECK(format_duration(milliseconds(120000)) == "2m");
}

TEST_CASE("client header: NAME=VALUE") {
  auto h = parse_header("trace-id=abc=def");
  REQUIRE(h);
  CHECK(h->first == "trace-id");
  CHECK(h->second == "abc=def");
  auto empty_value = parse_header("x=");
  REQUIRE(empty_value);
  CHECK(empty_value->second.empty());
  CHECK_FALSE(parse_header("novalue"));
  CHECK_FALSE(parse_header("=v"));
}
