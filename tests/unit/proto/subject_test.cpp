#include "proto/subject.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace keyway::proto;

namespace {
bool has(const status& st, std::string_view needle) {
  return st.message().find(needle) != std::string::npos;
}
}  // namespace

TEST_CASE("literal subjects") {
  const limits lim;
  for (const char* ok :
       {"a", "orders.eu.created", "_INBOX.c1.7", "a-b_c.d:e", "\xc3\xa9t\xc3\xa9.x"}) {
    CAPTURE(ok);
    CHECK(validate_publish_subject(ok, lim).ok());
    CHECK(is_literal_subject(ok));
  }
}

TEST_CASE("publish subjects may not contain wildcards") {
  const limits lim;
  for (const char* bad : {"a.*", "*", "a.>", ">", "a.*.c", "a*", "a.b>"}) {
    CAPTURE(bad);
    const auto st = validate_publish_subject(bad, lim, "publish.subject");
    CHECK(st.code() == errc::invalid_subject);
    CHECK(has(st, "publish.subject"));
    CHECK(has(st, "wildcard"));
    CHECK_FALSE(is_literal_subject(bad));
  }
}

TEST_CASE("empty subjects, empty tokens, whitespace and control characters") {
  const limits lim;
  CHECK(has(validate_publish_subject("", lim), "is empty"));
  for (const char* bad : {"a..b", ".a", "a.", "."}) {
    CAPTURE(bad);
    const auto st = validate_publish_subject(bad, lim);
    CHECK(st.code() == errc::invalid_subject);
    CHECK((has(st, "empty token") || has(st, "ends with '.'")));
    CHECK(validate_pattern(bad, lim).code() == errc::invalid_subject);
  }
  for (std::string bad : {std::string("a b"), std::string("a\tb"), std::string("a\nb"),
                          std::string("a\x7f"), std::string("a\0b", 3)}) {
    CAPTURE(bad);
    const auto st = validate_publish_subject(bad, lim);
    CHECK(st.code() == errc::invalid_subject);
    CHECK(has(st, "at byte 1"));
    CHECK(has(st, "(0x"));  // the bad byte is named by its code
  }
}

TEST_CASE("subject length limit names the size and the limit") {
  limits lim;
  lim.max_subject = 8;
  CHECK(validate_publish_subject("abcd.efg", lim).ok());
  const auto st = validate_publish_subject("abcd.efgh", lim, "publish.subject");
  CHECK(st.code() == errc::invalid_subject);
  CHECK(st.message() ==
        "publish.subject of 9 bytes exceeds limits.max_subject (8 bytes); use a shorter subject");
}

TEST_CASE("good patterns") {
  const limits lim;
  for (const char* ok : {"a", "a.b", "*", ">", "a.*", "a.>", "*.b.>", "a.*.c", "*.*"}) {
    CAPTURE(ok);
    CHECK(validate_pattern(ok, lim).ok());
  }
}

TEST_CASE("bad patterns say what is wrong") {
  const limits lim;
  auto st = validate_pattern("a.>.b", lim, "subscribe.pattern");
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "'>' must be the last token"));
  CHECK(has(st, "token 2"));

  st = validate_pattern("a..b", lim);
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "empty token at byte 2"));

  st = validate_pattern("", lim);
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "is empty"));

  for (const char* bad : {"a*", "a.b*", "*a", "a.>>", ">a", "a.*>"}) {
    CAPTURE(bad);
    st = validate_pattern(bad, lim);
    CHECK(st.code() == errc::invalid_subject);
    CHECK(has(st, "must be whole tokens"));
  }
  CHECK(has(validate_pattern(">.a", lim), "must be the last token"));
}

TEST_CASE("queue groups") {
  limits lim;
  CHECK(validate_queue_group("", lim).ok());
  CHECK(validate_queue_group("billing", lim).ok());
  CHECK(validate_queue_group("billing.eu", lim).ok());
  CHECK(validate_queue_group("bill ing", lim).code() == errc::invalid_subject);
  CHECK(validate_queue_group("b*", lim).code() == errc::invalid_subject);
  lim.max_subject = 3;
  CHECK(has(validate_queue_group("abcd", lim), "limits.max_subject (3 bytes)"));
}

namespace {
// The subject rules written plainly, as the reference for the fast check:
// non-empty, at most max_subject bytes, dot-separated non-empty tokens, no
// byte <= 0x20, no 0x7f, no '*' or '>'.
bool reference_valid_subject(std::string_view s, std::size_t max_subject) {
  if (s.empty() || s.size() > max_subject) return false;
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = std::min(s.find('.', start), s.size());
    if (end == start) return false;  // empty token
    for (std::size_t i = start; i < end; ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c <= 0x20 || c == 0x7f || c == '*' || c == '>') return false;
    }
    if (end == s.size()) return true;
    start = end + 1;
  }
}
}  // namespace

TEST_CASE(
    "is_valid_publish_subject agrees with the rules and with validate_publish_subject on every "
    "short string") {
  // Every string of up to 5 bytes over an alphabet with one byte of each
  // class (plain ASCII, UTF-8 lead byte, dot, both wildcards, space, control,
  // DEL), with a limit of 4 bytes so that the length rule is hit too.
  const std::string alphabet = {'a', '\xc3', '.', '*', '>', ' ', '\x01', '\x7f'};
  limits lim;
  lim.max_subject = 4;
  std::size_t checked = 0, valid = 0;
  std::string s;
  for (std::size_t len = 0; len <= 5; ++len) {
    std::size_t combos = 1;
    for (std::size_t i = 0; i < len; ++i) combos *= alphabet.size();
    for (std::size_t n = 0; n < combos; ++n) {
      s.clear();
      for (std::size_t i = 0, k = n; i < len; ++i, k /= alphabet.size())
        s += alphabet[k % alphabet.size()];
      CAPTURE(quote(s));
      const bool expected = reference_valid_subject(s, lim.max_subject);
      REQUIRE(is_valid_publish_subject(s, lim) == expected);
      const auto st = validate_publish_subject(s, lim);
      REQUIRE(st.ok() == expected);
      if (!expected) REQUIRE(st.code() == errc::invalid_subject);
      ++checked;
      valid += expected ? 1 : 0;
    }
  }
  CHECK(checked == 1 + 8 + 64 + 512 + 4096 + 32768);
  // The valid ones: tokens of the two plain bytes joined by single dots, 1-4
  // bytes: 2 + 4 + (8 + 4) + (16 + 8 + 8).
  CHECK(valid == 50);
}
