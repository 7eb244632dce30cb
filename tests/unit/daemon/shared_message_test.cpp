#include "daemon/shared_message.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "config/options.hpp"

using namespace keyway::daemon;

namespace {
std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}
std::string str(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
}  // namespace

TEST_CASE("shared_message keeps every field and aligns the payload") {
  keyway::core::block_pool pool;
  pool.bind_to_this_thread();
  std::vector<header_view> headers{{"trace", bytes("abc")}, {"n", bytes("")}};
  message_ref m(
      shared_message::make(pool, "a.b", bytes("key"), bytes("payload!"), "inbox.1", headers));
  CHECK(m->subject() == "a.b");
  CHECK(str(m->key()) == "key");
  CHECK(str(m->payload()) == "payload!");
  CHECK(m->reply_to() == "inbox.1");
  CHECK(reinterpret_cast<std::uintptr_t>(m->payload().data()) % 8 == 0);
  std::vector<std::pair<std::string, std::string>> seen;
  m->for_each_header(
      [&](const header_view& h) { seen.emplace_back(std::string(h.name), str(h.value)); });
  CHECK(seen == std::vector<std::pair<std::string, std::string>>{{"trace", "abc"}, {"n", ""}});
  CHECK(str(m->routing_key()) == "key");
  message_ref by_subject(shared_message::make(pool, "x.y", {}, {}, "", {}));
  CHECK(str(by_subject->routing_key()) == "x.y");
  message_ref copy = m;  // a second reference; both release cleanly (ASan checks)
  CHECK(copy->subject() == "a.b");
}

TEST_CASE("shared_message without headers keeps its fields as the delivery frame lays them out") {
  keyway::core::block_pool pool;
  pool.bind_to_this_thread();
  message_ref m(shared_message::make(pool, "orders.eu", bytes("k1"), bytes("seventeen bytes!!"),
                                     "inbox.7", {}));
  REQUIRE(m->plain());
  CHECK(m->subject() == "orders.eu");
  CHECK(str(m->key()) == "k1");
  CHECK(str(m->payload()) == "seventeen bytes!!");
  CHECK(m->reply_to() == "inbox.7");
  CHECK(reinterpret_cast<std::uintptr_t>(m->payload().data()) % 8 == 0);
  // The encoder's own lists for the same fields, byte for byte.
  const keyway::proto::delivery_fields f{
      .subject = m->subject(), .key = m->key(), .payload = m->payload(), .reply_to = m->reply_to()};
  std::vector<std::byte> expected(keyway::proto::encoder::plain_message_lists_size(f));
  keyway::proto::encoder::write_plain_message_lists(expected.data(), f);
  const auto lists = m->frame_lists();
  CHECK(std::vector<std::byte>(lists.begin(), lists.end()) == expected);
  std::vector<header_view> one{{"h", bytes("v")}};
  message_ref with_headers(shared_message::make(pool, "a", {}, bytes("p"), "", one));
  CHECK_FALSE(with_headers->plain());
}

TEST_CASE("parse_listen_url accepts tcp and unix URLs and names what is wrong") {
  auto t = parse_listen_url("tcp://127.0.0.1:0");
  CHECK(t.type == listen_address::kind::tcp);
  CHECK(t.port == 0);
  auto v6 = parse_listen_url("tcp://[::1]:7400");
  CHECK(v6.host == "::1");
  CHECK(v6.to_string() == "tcp://[::1]:7400");
  auto u = parse_listen_url("unix:///run/keyway/keyway.sock");
  CHECK(u.type == listen_address::kind::unix_path);
  CHECK(u.path == "/run/keyway/keyway.sock");
  CHECK_THROWS_WITH_AS(parse_listen_url("http://x:1"), doctest::Contains("unknown scheme"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_listen_url("tcp://127.0.0.1:70000"), doctest::Contains("0 to 65535"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_listen_url("unix://relative.sock"), doctest::Contains("absolute"),
                       std::invalid_argument);
  CHECK_THROWS_AS(parse_listen_url("tcp://127.0.0.1"), std::invalid_argument);
}
