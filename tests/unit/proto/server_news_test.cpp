// What version 2 gained without a version bump, because a client may ignore
// it: the `draining` frame (the server is shutting down) and
// Welcome.connectUrls (where else to connect). Encoded, decoded, validated.
#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tests/unit/proto/helpers.hpp"

using namespace keyway::proto;
using namespace keyway::proto::test;
using W = wire::Frame;

namespace {

// The one frame of `bytes`, decoded (and every field read) by a fresh decoder.
template <class Check>
void decode_one(const std::vector<std::byte>& bytes, Check&& check) {
  decoder dec;
  dec.feed(bytes);
  auto r = dec.next();
  REQUIRE(r.has_value());
  REQUIRE(r->has_value());
  check(**r);
  auto again = dec.next();
  REQUIRE(again.has_value());
  CHECK_FALSE(again->has_value());
}

}  // namespace

TEST_CASE("draining: encoded as Cap'n Proto would, decoded, and accepted from a server only") {
  encoder enc;
  out_buffer out;
  const auto n = enc.draining(out, "shutting down; go elsewhere", 1500);
  REQUIRE(n.has_value());
  CHECK(*n == out.size());
  const auto bytes = drain(out);
  CHECK(bytes == capnp_frame([](W::Builder f) {
          auto d = f.initDraining();
          d.setReason("shutting down; go elsewhere");
          d.setGraceMs(1500);
        }));
  decode_one(bytes, [](const frame& f) {
    REQUIRE(f.which() == W::DRAINING);
    CHECK(kind_name(f.which()) == "draining");
    auto d = f.root().getDraining();
    CHECK(as_string_view(d.getReason()) == "shutting down; go elsewhere");
    CHECK(d.getGraceMs() == 1500);
    CHECK(validate_server_frame(f, limits{}).ok());
    const status st = validate_client_frame(f, limits{});
    CHECK(st.code() == errc::protocol);
    CHECK(st.message() ==
          "a client may not send 'draining' frames; it may send hello, publish, publishBatch, "
          "subscribe, "
          "unsubscribe, ping and pong");
  });
  // The two-argument form: no reason is needed, and graceMs 0 means "now".
  out_buffer bare;
  REQUIRE(enc.draining(bare, {}).has_value());
  decode_one(drain(bare), [](const frame& f) {
    REQUIRE(f.which() == W::DRAINING);
    CHECK(f.root().getDraining().getReason().size() == 0);
    CHECK(f.root().getDraining().getGraceMs() == 0);
  });
}

TEST_CASE("welcome: connectUrls round trip, and a welcome without them reads as an empty list") {
  const std::vector<std::string> urls{"tcp://10.0.0.2:7400", "tcp://[fd00::2]:7400",
                                      "unix:///run/keyway/keyway.sock"};
  encoder enc;
  out_buffer out;
  welcome_fields wf;
  wf.server_id = "a";
  wf.worker_count = 2;
  wf.connect_urls = urls;
  REQUIRE(enc.welcome(out, wf).has_value());
  decode_one(drain(out), [&](const frame& f) {
    REQUIRE(f.which() == W::WELCOME);
    std::vector<std::string> got;
    for (auto u : f.root().getWelcome().getConnectUrls()) got.emplace_back(as_string_view(u));
    CHECK(got == urls);
    CHECK(validate_server_frame(f, limits{}).ok());
  });
  // None to announce: the pointer stays null, as in a welcome from a server
  // that predates the field, and reads as an empty list.
  out_buffer plain;
  wf.connect_urls = {};
  REQUIRE(enc.welcome(plain, wf).has_value());
  decode_one(drain(plain), [](const frame& f) {
    REQUIRE(f.which() == W::WELCOME);
    CHECK_FALSE(f.root().getWelcome().hasConnectUrls());
    CHECK(f.root().getWelcome().getConnectUrls().size() == 0);
  });
}

TEST_CASE(
    "a welcome whose last connectUrls entry runs past its segment is refused by the decoder") {
  auto bytes = capnp_frame([](W::Builder f) {
    auto w = f.initWelcome();
    w.setServerId("x");
    w.initConnectUrls(1).set(0, "tcp://h:1");
  });
  // The entry's text was allocated last: drop the segment's last word (and
  // say so in the segment table), so that it points past the end. The
  // decoder reads every entry, so it fails here, not in the client later.
  bytes.resize(bytes.size() - 8);
  std::uint32_t words;
  std::memcpy(&words, bytes.data() + 4, 4);
  --words;
  std::memcpy(bytes.data() + 4, &words, 4);
  decoder dec;
  dec.feed(bytes);
  auto r = dec.next();
  CHECK_FALSE(r.has_value());
  CHECK(dec.error().code() == errc::protocol);
}
