#include "proto/subject.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace keyway::proto;

namespace {
bool has(const status& st, std::string_view needle) { return st.message().find(needle) != std::string::npos; }
}  // namespace

TEST_CASE("literal subjects") {
  const limits lim;
  for (const char* ok : {"a", "orders.eu.created", "_INBOX.c1.7", "a-b_c.d:e", "\xc3\xa9t\xc3\xa9.x"}) {
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
  for (std::string bad : {std::string("a b"), std::string("a\tb"), std::string("a\nb"), std::string("a\x7f"),
                          std::string("a\0b", 3)}) {
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
  CHECK(st.message() == "publish.subject of 9 bytes exceeds limits.max_subject (8 bytes); use a shorter subject");
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
