#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

namespace {

bool has(const status& st, std::string_view needle) {
  return st.message().find(needle) != std::string::npos;
}

// Builds a frame with plain capnp and validates it as a client frame.
template <class Build>
status client_check(Build&& build, const limits& lim = {}) {
  capnp::MallocMessageBuilder msg;
  build(msg.initRoot<W>());
  return validate_client_frame(msg.getRoot<W>().asReader(), lim);
}

}  // namespace

TEST_CASE("payload over the limit: payload_too_large naming the size and the limit") {
  limits lim;
  lim.max_frame = 4 * limits::mib;  // let the frame through the decoder
  encoder enc(lim);
  out_buffer out;
  const std::vector<std::byte> payload(2 * limits::mib, std::byte{1});
  REQUIRE(enc.publish(out, {.subject = "big.one", .payload = payload, .ack_id = 12}).has_value());
  decoder dec(lim);
  dec.feed(drain(out));
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());

  const limits server;  // max_payload 1 MiB
  const auto st = validate_client_frame((*r)->root(), server);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(st.message() ==
        "payload of 2 MiB exceeds limits.max_payload (1 MiB); raise it in keyway.toml or send "
        "smaller payloads");
  CHECK(request_id_of((*r)->root()) == 12);
  CHECK_FALSE(fatal_by_default(st.code()));
}

TEST_CASE("payload exactly at the limit is accepted") {
  limits lim;
  lim.max_payload = 100;
  const std::vector<std::byte> payload(100);
  CHECK(client_check(
            [&](W::Builder f) {
              auto p = f.initPublish();
              p.setSubject("a");
              p.setPayload(
                  capnp::Data::Reader(reinterpret_cast<const kj::byte*>(payload.data()), 100));
            },
            lim)
            .ok());
  const std::vector<std::byte> over(101);
  CHECK(client_check(
            [&](W::Builder f) {
              auto p = f.initPublish();
              p.setSubject("a");
              p.setPayload(
                  capnp::Data::Reader(reinterpret_cast<const kj::byte*>(over.data()), 101));
            },
            lim)
            .code() == errc::payload_too_large);
}

TEST_CASE("publish to a wildcard subject is invalid_subject") {
  const auto st = client_check([](W::Builder f) { f.initPublish().setSubject("orders.*"); });
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "publish.subject 'orders.*'"));
}

TEST_CASE("replyTo must be empty or a literal subject") {
  CHECK(client_check([](W::Builder f) {
          auto p = f.initPublish();
          p.setSubject("svc.echo");
          p.setReplyTo("_INBOX.1");
        }).ok());
  const auto st = client_check([](W::Builder f) {
    auto p = f.initPublish();
    p.setSubject("svc.echo");
    p.setReplyTo("_INBOX.>");
  });
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "publish.replyTo"));
}

TEST_CASE("key over max_key is invalid_key") {
  limits lim;
  lim.max_key = 4;
  const auto st = client_check(
      [](W::Builder f) {
        auto p = f.initPublish();
        p.setSubject("a");
        p.setKey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("12345"), 5));
      },
      lim);
  CHECK(st.code() == errc::invalid_key);
  CHECK(has(st, "publish.key of 5 bytes exceeds limits.max_key (4 bytes)"));
}

TEST_CASE("header count, header bytes and empty header names") {
  limits lim;
  lim.max_headers = 2;
  lim.max_header_bytes = 10;
  auto with_headers = [](std::vector<std::pair<std::string, std::string>> hs) {
    return [hs](W::Builder f) {
      auto p = f.initPublish();
      p.setSubject("a");
      auto l = p.initHeaders(static_cast<unsigned>(hs.size()));
      for (unsigned i = 0; i < hs.size(); ++i) {
        l[i].setName(hs[i].first);
        l[i].setValue(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(hs[i].second.data()),
                                          hs[i].second.size()));
      }
    };
  };
  CHECK(client_check(with_headers({{"a", "1"}, {"b", "2"}}), lim).ok());
  auto st = client_check(with_headers({{"a", "1"}, {"b", "2"}, {"c", "3"}}), lim);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(has(st, "3 entries, over limits.max_headers (2)"));
  st = client_check(with_headers({{"name", "0123456"}}), lim);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(has(st, "limits.max_header_bytes (10 bytes)"));
  st = client_check(with_headers({{"", "v"}}), lim);
  CHECK(st.code() == errc::protocol);
  CHECK(has(st, "publish.headers[0] has an empty name"));
}

TEST_CASE("subscribe: sid, pattern, queue group") {
  CHECK(client_check([](W::Builder f) {
          auto s = f.initSubscribe();
          s.setSid(1);
          s.setPattern("a.*.c");
          s.setQueueGroup("workers");
        }).ok());
  auto st = client_check([](W::Builder f) {
    auto s = f.initSubscribe();
    s.setSid(0);
    s.setPattern("a");
  });
  CHECK(st.code() == errc::protocol);
  CHECK(has(st, "subscribe.sid is 0"));
  for (const char* bad : {"a.>.b", "a..b", "", "a*"}) {
    CAPTURE(bad);
    st = client_check([&](W::Builder f) {
      auto s = f.initSubscribe();
      s.setSid(1);
      s.setPattern(bad);
    });
    CHECK(st.code() == errc::invalid_subject);
    CHECK(has(st, "subscribe.pattern"));
  }
  st = client_check([](W::Builder f) {
    auto s = f.initSubscribe();
    s.setSid(1);
    s.setPattern("a");
    s.setQueueGroup("a b");
  });
  CHECK(st.code() == errc::invalid_subject);
  CHECK(has(st, "subscribe.queueGroup"));
  CHECK(client_check([](W::Builder f) { f.initUnsubscribe().setSid(0); }).code() == errc::protocol);
}

TEST_CASE("which frames a client may send") {
  CHECK(client_check([](W::Builder f) { f.initHello().setProtocolVersion(1); }).ok());
  CHECK(client_check([](W::Builder f) { f.initPing().setId(1); }).ok());
  CHECK(client_check([](W::Builder f) { f.initPong().setId(1); }).ok());
  CHECK(client_check([](W::Builder f) { f.initUnsubscribe().setSid(3); }).ok());
  const auto st = client_check([](W::Builder f) { f.initWelcome(); });
  CHECK(st.code() == errc::protocol);
  CHECK(has(st, "may not send 'welcome'"));
  CHECK(client_check([](W::Builder f) { f.initMessage(); }).code() == errc::protocol);
  CHECK(client_check([](W::Builder f) { f.initAck(); }).code() == errc::protocol);
  CHECK(client_check([](W::Builder f) { f.initError(); }).code() == errc::protocol);
}

TEST_CASE("hello: client name and token sizes") {
  limits lim;
  lim.max_client_name = 3;
  CHECK(client_check([](W::Builder f) { f.initHello().setClientName("abc"); }, lim).ok());
  CHECK(has(client_check([](W::Builder f) { f.initHello().setClientName("abcd"); }, lim),
            "limits.max_client_name (3 bytes)"));
}

TEST_CASE("which frames a server may send") {
  capnp::MallocMessageBuilder msg;
  auto f = msg.initRoot<W>();
  f.initPublish().setSubject("a");
  CHECK(validate_server_frame(f.asReader(), limits{}).code() == errc::protocol);
  f.initMessage().setSubject("a.b");
  CHECK(validate_server_frame(f.asReader(), limits{}).ok());
  f.initMessage().setSubject("a.*");
  CHECK(validate_server_frame(f.asReader(), limits{}).code() == errc::invalid_subject);
  f.initAck();
  CHECK(validate_server_frame(f.asReader(), limits{}).ok());
}

TEST_CASE("limits: defaults are consistent, and with_max_payload keeps them so") {
  CHECK(validate_limits(limits{}).ok());
  const auto big = limits::with_max_payload(8 * limits::mib);
  CHECK(big.max_payload == 8 * limits::mib);
  CHECK(big.max_frame == 8 * limits::mib + 64 * limits::kib);
  CHECK(validate_limits(big).ok());
  limits bad;
  bad.max_frame = bad.max_payload;
  const auto st = validate_limits(bad);
  CHECK_FALSE(st.ok());
  CHECK(has(st, "limits.max_frame (1 MiB) cannot hold a publish"));
  CHECK(limits{}.max_traversal_words() == limits{}.traversal_limit_words(limits{}.max_frame));
}

TEST_CASE("headers the decoder left unread are refused even when a reload raised max_headers") {
  limits opened;  // what the connection's decoder was built with
  opened.max_headers = 2;
  const std::vector<header> hs{{"a", {}}, {"b", {}}, {"c", {}}};
  encoder enc;
  out_buffer out;
  REQUIRE(enc.publish(out, {.subject = "a", .headers = hs}).has_value());
  decoder dec(opened);
  dec.feed(drain(out));
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  REQUIRE((*r)->publish() != nullptr);
  CHECK((*r)->publish()->header_count == 3);
  CHECK((*r)->publish()->headers.empty());

  limits reloaded;
  reloaded.max_headers = 4;
  const auto st = validate_client_frame(**r, reloaded);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(has(st,
            "publish.headers has 3 entries, over the limits.max_headers this connection was opened "
            "with"));
  CHECK(has(st, "reconnect to use the reloaded limit (4)"));
}

TEST_CASE("a delivery whose headers the decoder left unread is refused too") {
  limits opened;
  opened.max_headers = 2;
  const std::vector<header> hs{{"a", {}}, {"b", {}}, {"c", {}}};
  encoder enc;
  out_buffer out;
  REQUIRE(enc.message(out, {.sid = 1, .subject = "a", .headers = hs}).has_value());
  decoder dec(opened);
  dec.feed(drain(out));
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  REQUIRE((*r)->delivery() != nullptr);
  CHECK((*r)->delivery()->headers.empty());
  limits later;
  later.max_headers = 4;
  const auto st = validate_server_frame(**r, later);
  CHECK(st.code() == errc::payload_too_large);
  CHECK(has(st,
            "message.headers has 3 entries, over the limits.max_headers this connection was opened "
            "with"));
}
