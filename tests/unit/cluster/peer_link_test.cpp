// cluster::peer_link: the peer frame codec, and the handshake, refusal,
// heartbeat and redial of links between nodes, over loopback in this process
// (one io_context driven by the test thread).
#include "cluster/peer_link.hpp"

#include <doctest/doctest.h>

#include <asio/write.hpp>

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using keyway::cluster::encode_peer_frame;
using keyway::cluster::peer_dialer;
using keyway::cluster::peer_frame;
using keyway::cluster::peer_frame_reader;
using keyway::cluster::peer_hello;
using keyway::cluster::peer_link_options;
using keyway::cluster::peer_listener;
using keyway::cluster::peer_welcome;
using link_state = peer_dialer::link_state;
using tcp = asio::ip::tcp;

/// Runs `io` until `done()` holds; false after `limit`.
bool run_until(asio::io_context& io, const std::function<bool()>& done,
               std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_for(10ms);
  }
  return true;
}

peer_link_options fast() {
  peer_link_options o;
  o.handshake_timeout = 300ms;
  o.heartbeat = 50ms;
  o.backoff_min = 20ms;
  o.backoff_max = 100ms;
  return o;
}

peer_hello hello_from(const std::string& cluster, const std::string& node) {
  peer_hello h;
  h.cluster = cluster;
  h.node_id = node;
  h.incarnation = 42;
  h.epoch = 7;
  h.worker = 1;
  return h;
}

/// Admits hellos of cluster "c".
keyway::result<peer_listener::admission, std::string> admit_c(const peer_hello& h) {
  if (h.cluster != "c") return "cluster \"" + h.cluster + "\" is not this node's cluster \"c\"";
  return peer_listener::admission{peer_welcome{"n2", 43, h.epoch, 2}, 7};
}

struct recorder {
  std::vector<peer_welcome> ups;
  std::vector<std::string> downs;
  peer_dialer::events events() {
    return {[this](const peer_welcome& w) { ups.push_back(w); },
            [this](const std::string& why) { downs.push_back(why); }};
  }
};

tcp::endpoint loopback(std::uint16_t port) {
  return {asio::ip::make_address("127.0.0.1"), port};
}

}  // namespace

TEST_CASE("peer frames round-trip, and a reader refuses oversized or malformed ones") {
  std::string stream;
  stream += encode_peer_frame(hello_from("c", "n1"));
  stream += encode_peer_frame(peer_welcome{"n2", 43, 7, 2});
  stream += encode_peer_frame(keyway::cluster::peer_refused{"why"});
  stream += encode_peer_frame(keyway::cluster::peer_ping{5});
  stream += encode_peer_frame(keyway::cluster::peer_pong{5});
  peer_frame_reader r(1 << 20);
  // Byte by byte: frames come out whole, in order.
  std::vector<peer_frame> got;
  for (char c : stream) {
    r.append(&c, 1);
    auto f = r.next();
    REQUIRE(f.has_value());
    if (*f) got.push_back(std::move(**f));
  }
  REQUIRE(got.size() == 5);
  const auto& h = std::get<peer_hello>(got[0]);
  CHECK(h.cluster == "c");
  CHECK(h.node_id == "n1");
  CHECK(h.incarnation == 42);
  CHECK(h.epoch == 7);
  CHECK(h.worker == 1);
  CHECK(h.protocol_version == keyway::cluster::peer_protocol_version());
  CHECK(std::get<peer_welcome>(got[1]).workers == 2);
  CHECK(std::get<keyway::cluster::peer_refused>(got[2]).reason == "why");
  CHECK(std::get<keyway::cluster::peer_pong>(got[4]).id == 5);

  peer_frame_reader small(64);
  const std::string big = encode_peer_frame(keyway::cluster::peer_refused{std::string(200, 'x')});
  small.append(big.data(), big.size());
  auto too_big = small.next();
  REQUIRE_FALSE(too_big.has_value());
  CHECK(too_big.error().find("exceeds the limit of 64 bytes") != std::string::npos);

  peer_frame_reader garbage(1 << 20);
  const std::string junk(16, '\xff');
  garbage.append(junk.data(), junk.size());
  auto bad = garbage.next();
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().find("segments") != std::string::npos);
}

TEST_CASE("peer link: hello, welcome, then heartbeats keep it up") {
  // A heartbeat long enough that a test thread descheduled on a loaded
  // machine does not miss three of them.
  peer_link_options opt = fast();
  opt.heartbeat = 200ms;
  asio::io_context io;
  peer_listener l(io, loopback(0), admit_c, opt);
  recorder rec;
  auto d = peer_dialer::start(io, loopback(l.port()), hello_from("c", "n1"), rec.events(), opt);
  REQUIRE(run_until(io, [&] { return d->state() == link_state::up; }));
  REQUIRE(rec.ups.size() == 1);
  CHECK(rec.ups[0].node_id == "n2");
  CHECK(rec.ups[0].incarnation == 43);
  CHECK(rec.ups[0].epoch == 7);
  CHECK(l.links_up() == 1);
  // Five heartbeats later the link is still the same one.
  run_until(
      io, [] { return false; }, 1s);
  CHECK(d->state() == link_state::up);
  CHECK(rec.downs.empty());
  CHECK(l.links_up() == 1);
  d->stop();
  CHECK(d->state() == link_state::stopped);
  // The listener notices the dialler is gone (three heartbeats of silence).
  CHECK(run_until(io, [&] { return l.links_up() == 0; }));
}

TEST_CASE("peer link: a hello of another cluster is refused with the reason, and redialled") {
  asio::io_context io;
  peer_listener l(io, loopback(0), admit_c, fast());
  recorder rec;
  auto d =
      peer_dialer::start(io, loopback(l.port()), hello_from("other", "n1"), rec.events(), fast());
  REQUIRE(run_until(io, [&] { return rec.downs.size() >= 2; }));
  CHECK(rec.downs[0] == "refused by the peer: cluster \"other\" is not this node's cluster \"c\"");
  CHECK(rec.ups.empty());
  CHECK(l.links_up() == 0);
  d->stop();
}

TEST_CASE("peer link: a dialler that sends no hello is refused, naming the timeout") {
  asio::io_context io;
  peer_listener l(io, loopback(0), admit_c, fast());
  tcp::socket mute(io);
  mute.connect(loopback(l.port()));
  std::string got;
  std::array<char, 512> buf{};
  std::function<void()> read = [&] {
    mute.async_read_some(asio::buffer(buf), [&](std::error_code ec, std::size_t n) {
      if (ec) return;
      got.append(buf.data(), n);
      read();
    });
  };
  read();
  peer_frame_reader r(1 << 20);
  std::optional<peer_frame> frame;
  REQUIRE(run_until(io, [&] {
    if (got.empty()) return false;
    r.append(got.data(), got.size());
    got.clear();
    auto f = r.next();
    if (f && *f) frame = std::move(**f);
    return frame.has_value();
  }));
  REQUIRE(std::holds_alternative<keyway::cluster::peer_refused>(*frame));
  CHECK(std::get<keyway::cluster::peer_refused>(*frame).reason == "no hello within 300 ms");
  CHECK(l.links_up() == 0);
}

TEST_CASE("peer link: when the listener goes away the dialler redials until it is back") {
  asio::io_context io;
  auto l = std::make_unique<peer_listener>(io, loopback(0), admit_c, fast());
  const std::uint16_t port = l->port();
  recorder rec;
  auto d = peer_dialer::start(io, loopback(port), hello_from("c", "n1"), rec.events(), fast());
  REQUIRE(run_until(io, [&] { return d->state() == link_state::up; }));
  l->close();
  l.reset();
  REQUIRE(run_until(io, [&] { return !rec.downs.empty(); }));
  CHECK(rec.downs[0] == "the peer closed the link");
  // Nobody listens: connects are refused, and it keeps trying.
  REQUIRE(run_until(io, [&] { return rec.downs.size() >= 3; }));
  CHECK(rec.downs[2].find("cannot connect to 127.0.0.1:" + std::to_string(port)) !=
        std::string::npos);
  l = std::make_unique<peer_listener>(io, loopback(port), admit_c, fast());
  REQUIRE(run_until(io, [&] { return d->state() == link_state::up; }));
  CHECK(rec.ups.size() == 2);
  d->stop();
}

TEST_CASE("peer link: a peer that never welcomes, or goes silent after, is declared dead") {
  asio::io_context io;
  tcp::acceptor silent(io, loopback(0));
  std::vector<std::shared_ptr<tcp::socket>> held;
  bool welcome_first = false;
  std::function<void()> accept = [&] {
    silent.async_accept([&](std::error_code ec, tcp::socket s) {
      if (ec) return;
      auto sock = std::make_shared<tcp::socket>(std::move(s));
      held.push_back(sock);
      if (welcome_first) {
        auto bytes = std::make_shared<std::string>(encode_peer_frame(peer_welcome{"n2", 1, 1, 1}));
        asio::async_write(*sock, asio::buffer(*bytes), [bytes](std::error_code, std::size_t) {});
      }
      accept();
    });
  };
  accept();
  recorder rec;
  auto d = peer_dialer::start(io, loopback(silent.local_endpoint().port()), hello_from("c", "n1"),
                              rec.events(), fast());
  REQUIRE(run_until(io, [&] { return !rec.downs.empty(); }));
  CHECK(rec.downs[0].find("no welcome from 127.0.0.1:") != std::string::npos);
  CHECK(rec.downs[0].find("within 300 ms") != std::string::npos);

  // Now the peer welcomes and then says nothing: three heartbeats, and it is dead.
  welcome_first = true;
  REQUIRE(run_until(io, [&] { return !rec.ups.empty(); }));
  const std::size_t before = rec.downs.size();
  REQUIRE(run_until(io, [&] { return rec.downs.size() > before; }));
  CHECK(rec.downs.back().find("no frame from the peer for") != std::string::npos);
  CHECK(rec.downs.back().find("(heartbeat 50 ms)") != std::string::npos);
  d->stop();
}

TEST_CASE("peer link: data frames round-trip and reach the listener in order, with the hello") {
  using namespace keyway::cluster;
  // The codec, every data frame once; batches of two for the lists.
  const std::string payload("pay\0load", 8);
  const std::string key = "k1";
  const std::string hval = "v";
  const peer_message_view m{"orders.eu",
                            std::as_bytes(std::span(key)),
                            std::as_bytes(std::span(payload)),
                            "inbox.1",
                            {{"h", std::as_bytes(std::span(hval))}}};
  const peer_message_view bare{"s", {}, {}, "", {}};
  const std::vector<peer_target> targets{{1, 2}, {3, 4}, {5, 6}};
  peer_delivers delivers;
  delivers.items.push_back({m, 12, (5u << 8) | 1, 33, std::span(targets).first(2)});
  delivers.items.push_back({bare, 13, 1, 33, std::span(targets).last(1)});
  std::string stream;
  stream += encode_peer_frame(peer_forwards{{{m, 7, 9, 31}, {bare, 8, 0, 32}}});
  encode_delivers(stream, delivers.items);
  stream += encode_peer_frame(
      peer_interest{{{true, "orders.>", "g", 5, 6, 7, 8}, {false, "", "", 5, 6, 7, 0}}, true});
  stream += encode_peer_frame(peer_interest_applied{6, 8, 7, 5, "full"});
  stream += encode_peer_frame(peer_reply{6, 3, 0, "orders.eu", "inbox.1", "may not order"});
  stream += encode_peer_frame(peer_fence{fence_stage::drained, 77, 3});
  stream += encode_peer_frame(peer_barrier{9, 4, true});
  peer_frame_reader r(1 << 20);
  r.append(stream.data(), stream.size());
  std::vector<peer_frame> got;  // views of r's buffer: read before the next append
  while (true) {
    auto f = r.next();
    REQUIRE(f.has_value());
    if (!*f) break;
    got.push_back(std::move(**f));
  }
  REQUIRE(got.size() == 7);
  CHECK(std::get<peer_barrier>(got[6]).conn == 9);
  CHECK(std::get<peer_barrier>(got[6]).round == 4);
  CHECK(std::get<peer_barrier>(got[6]).answer);
  const auto& fws = std::get<peer_forwards>(got[0]).items;
  REQUIRE(fws.size() == 2);
  const auto& fw = fws[0];
  CHECK(fw.msg.subject == "orders.eu");
  CHECK(std::string_view(reinterpret_cast<const char*>(fw.msg.payload.data()),
                         fw.msg.payload.size()) == payload);
  CHECK(fw.msg.key.size() == 2);
  CHECK(fw.msg.reply_to == "inbox.1");
  REQUIRE(fw.msg.headers.size() == 1);
  CHECK(fw.msg.headers[0].first == "h");
  CHECK(fw.msg.headers[0].second.size() == 1);
  CHECK(fw.ack_id == 9);
  CHECK(fw.epoch == 31);
  CHECK(fws[1].epoch == 32);
  CHECK(std::get<peer_forwards>(got[0]).newest_epoch == 32);
  CHECK(fws[1].msg.subject == "s");
  CHECK(fws[1].msg.payload.empty());
  CHECK(fws[1].msg.headers.empty());
  CHECK(fws[1].conn == 8);
  const auto& ds = std::get<peer_delivers>(got[1]).items;
  REQUIRE(ds.size() == 2);
  CHECK(ds[0].seq == 12);
  CHECK(ds[0].owner_core == ((5u << 8) | 1));
  CHECK(ds[0].epoch == 33);
  REQUIRE(ds[0].targets.size() == 2);
  CHECK(ds[0].targets[1].conn == 3);
  CHECK(ds[0].targets[1].sid == 4);
  CHECK(ds[1].seq == 13);
  REQUIRE(ds[1].targets.size() == 1);
  CHECK(ds[1].targets[0].conn == 5);
  const auto& in = std::get<peer_interest>(got[2]);
  CHECK(in.snapshot_done);
  REQUIRE(in.changes.size() == 2);
  CHECK(in.changes[0].pattern == "orders.>");
  CHECK(in.changes[0].group == "g");
  CHECK(in.changes[0].request_id == 8);
  CHECK_FALSE(in.changes[1].add);
  CHECK(std::get<peer_interest_applied>(got[3]).refused == "full");
  CHECK(std::get<peer_reply>(got[4]).reply_to == "inbox.1");
  CHECK(std::get<peer_reply>(got[4]).refused == "may not order");
  REQUIRE(got[5].index() == 10);
  CHECK(std::get<peer_fence>(got[5]).stage == fence_stage::drained);
  CHECK(std::get<peer_fence>(got[5]).epoch == 77);
  CHECK(std::get<peer_fence>(got[5]).worker == 3);

  // Over a link: batches queued while up arrive in order, tagged with the hello.
  asio::io_context io;
  std::vector<std::pair<std::string, std::uint64_t>> seen;  // (node, seq)
  peer_listener l(io, loopback(0), admit_c, fast(),
                  [&](const peer_hello& h, std::uint32_t tag, peer_frame& f) {
                    CHECK(tag == 7);  // the admission's, on every frame of the link
                    if (auto* dv = std::get_if<peer_delivers>(&f))
                      for (const auto& d : dv->items) seen.emplace_back(h.node_id, d.seq);
                    return peer_listener::taken::yes;
                  });
  recorder rec;
  auto dialer =
      peer_dialer::start(io, loopback(l.port()), hello_from("c", "n1"), rec.events(), fast());
  REQUIRE(run_until(io, [&] { return dialer->up(); }));
  const peer_message_view v{"s", {}, std::as_bytes(std::span(payload)), "", {}};
  std::vector<peer_deliver> batch;
  for (std::uint64_t i = 1; i <= 100; ++i) {
    batch.push_back({v, i, 1, 1, std::span(targets).first(1)});
    if (i % 10 == 0) {
      std::string bytes;
      encode_delivers(bytes, batch);
      dialer->send_frames(bytes);
      batch.clear();
    }
  }
  REQUIRE(run_until(io, [&] { return seen.size() == 100; }));
  for (std::uint64_t i = 0; i < 100; ++i) {
    CHECK(seen[i].first == "n1");
    CHECK(seen[i].second == i + 1);
  }
  dialer->stop();
}

TEST_CASE("peer link: a frame taken later is offered again and holds back what follows it") {
  using namespace keyway::cluster;
  asio::io_context io;
  std::vector<std::uint64_t> seen;  // delivery seqs, in the order taken
  std::size_t offers_of_2 = 0;
  bool take_2 = false;
  bool close_at_5 = true;
  peer_listener l(io, loopback(0), admit_c, fast(),
                  [&](const peer_hello&, std::uint32_t, peer_frame& f) {
                    const auto& d = std::get<peer_delivers>(f).items.at(0);
                    if (d.seq == 2 && !take_2) {
                      ++offers_of_2;
                      return peer_listener::taken::later;
                    }
                    if (d.seq == 5 && close_at_5) return peer_listener::taken::close;
                    seen.push_back(d.seq);
                    return peer_listener::taken::yes;
                  });
  recorder rec;
  auto dialer =
      peer_dialer::start(io, loopback(l.port()), hello_from("c", "n1"), rec.events(), fast());
  REQUIRE(run_until(io, [&] { return dialer->up(); }));
  const peer_message_view v{"s", {}, {}, "", {}};
  auto send = [&](std::uint64_t seq) {
    std::string bytes;
    const peer_deliver one{v, seq, 1, 1, {}};
    encode_delivers(bytes, std::span(&one, 1));
    dialer->send_frames(bytes);
  };
  for (std::uint64_t seq = 1; seq <= 4; ++seq) send(seq);
  // 1 is taken; 2 is offered again and again, and 3 and 4 wait behind it.
  REQUIRE(run_until(io, [&] { return offers_of_2 >= 5; }));
  CHECK(seen == std::vector<std::uint64_t>{1});
  take_2 = true;
  REQUIRE(run_until(io, [&] { return seen.size() == 4; }));
  CHECK(seen == std::vector<std::uint64_t>{1, 2, 3, 4});
  // `close`: the listener closes the link, and the dialler hears it.
  send(5);
  send(6);
  REQUIRE(run_until(io, [&] { return !rec.downs.empty(); }));
  CHECK(seen == std::vector<std::uint64_t>{1, 2, 3, 4});
  close_at_5 = false;
  dialer->stop();
}

TEST_CASE("peer link: a peer that stops reading leaves bytes queued, and their age is the lag") {
  asio::io_context io;
  tcp::acceptor deaf(io, loopback(0));
  std::shared_ptr<tcp::socket> held;
  const std::string welcome = encode_peer_frame(peer_welcome{"n2", 1, 1, 1});
  deaf.async_accept([&](std::error_code ec, tcp::socket s) {
    if (ec) return;
    held = std::make_shared<tcp::socket>(std::move(s));  // welcomes, then never reads
    asio::async_write(*held, asio::buffer(welcome), [](std::error_code, std::size_t) {});
  });
  recorder rec;
  auto opt = fast();
  opt.heartbeat = 5s;  // not declared dead while the test looks
  auto d = peer_dialer::start(io, loopback(deaf.local_endpoint().port()), hello_from("c", "n1"),
                              rec.events(), opt);
  REQUIRE(run_until(io, [&] { return d->up(); }));
  CHECK(d->queued_bytes() == 0);
  CHECK(d->oldest_queued() == std::chrono::steady_clock::time_point{});
  const auto first = std::chrono::steady_clock::now();
  const std::string chunk(1 << 20, 'x');  // not frames: the peer never reads them anyway
  for (int i = 0; i < 64; ++i) d->send_frames(chunk);
  io.restart();
  io.run_for(200ms);
  REQUIRE(d->queued_bytes() > 0);  // more than the kernel's socket buffers take
  const auto since = d->oldest_queued();
  CHECK(since >= first);
  CHECK(std::chrono::steady_clock::now() - since >= 200ms);
  CHECK(rec.downs.empty());
  d->stop();
}
