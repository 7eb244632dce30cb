// Publish/subscribe through the real keywayd: TCP and Unix transports,
// wildcards, unsubscribe, publisher acks and request/reply.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/integration/itest.hpp"

namespace keyway::itest {
namespace {

using namespace std::string_literals;

/// Publishes `count` messages on `subject` with one key and checks that `sub`
/// gets all of them on `sid`, in order, with every field intact.
void check_stream(raw_client& pub, raw_client& sub, std::uint32_t sid, const std::string& subject,
                  int count, std::uint32_t workers) {
  const std::string key = "order-key";
  const std::string header_value = "v\0x"s;  // binary-safe
  for (int i = 0; i < count; ++i) {
    const std::string payload = "payload " + std::to_string(i);
    const proto::header h{"trace", as_bytes(header_value)};
    proto::publish_fields f;
    f.subject = subject;
    f.key = as_bytes(key);
    f.payload = as_bytes(payload);
    f.headers = std::span<const proto::header>(&h, 1);
    pub.queue_publish(f);
  }
  pub.flush();
  const auto got = sub.collect(static_cast<std::size_t>(count), default_timeout);
  REQUIRE(got.size() == static_cast<std::size_t>(count));
  std::uint64_t last_seq = 0;
  for (int i = 0; i < count; ++i) {
    const message_frame& m = got[static_cast<std::size_t>(i)];
    INFO("delivery " << i << ": " << describe(m));
    CHECK(m.sid == sid);
    CHECK(m.subject == subject);
    CHECK(m.key == key);
    CHECK(m.payload == "payload " + std::to_string(i));
    CHECK(m.reply_to.empty());
    REQUIRE(m.headers.size() == 1);
    CHECK(m.headers[0].first == "trace");
    CHECK(m.headers[0].second == header_value);
    CHECK(m.owner_core < workers);
    CHECK(m.owner_core == got[0].owner_core);  // one key, one owner
    CHECK(m.seq > last_seq);
    last_seq = m.seq;
  }
  // Nothing else arrives: a sentinel from `pub` on the same key comes after
  // any other delivery of these publishes.
  sentinels fence;
  fence.publish(pub, subject, key);
  CHECK(fence.await(sub).empty());
}

}  // namespace

TEST_CASE("pubsub: publish and subscribe over TCP") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = raw_client::connect(d.url());
  const welcome_frame w = sub.hello("subscriber");
  CHECK(w.protocol_version == proto::protocol_version);
  CHECK(w.worker_count == 2);
  CHECK_FALSE(w.server_id.empty());
  CHECK(w.max_payload == proto::limits{}.max_payload);
  CHECK(w.max_segments == proto::limits{}.max_segments);
  raw_client pub = open_client(d.url(), "publisher");

  sub.subscribe(7, "orders.created");
  check_stream(pub, sub, 7, "orders.created", 200, w.worker_count);

  // A subject nobody subscribed to reaches nobody.
  const ack_frame none = pub.publish_acked("orders.deleted", "k", "x");
  CHECK(none.delivered == 0);
  // Before a sentinel from `pub` on the same key, to sub's subject: nothing.
  sentinels fence;
  fence.publish(pub, "orders.created", "k");
  CHECK(fence.await(sub).empty());
}

TEST_CASE("pubsub: publish and subscribe over a Unix socket") {
  temp_dir dir;
  const std::string path = (dir.path() / "keyway.sock").string();
  std::filesystem::path socket_path(path);
  {
    keywayd_process d(
        {"--workers", "2", "--listen", "unix://" + path, "--listen", "tcp://127.0.0.1:0"});
    REQUIRE(d.addresses().size() == 2);
    CHECK(std::find(d.addresses().begin(), d.addresses().end(), "unix://" + path) !=
          d.addresses().end());
    CHECK(std::filesystem::is_socket(socket_path));

    raw_client unix_sub = open_client("unix://" + path, "unix-sub");
    raw_client unix_pub = open_client("unix://" + path, "unix-pub");
    raw_client tcp_sub = open_client(d.url(), "tcp-sub");
    unix_sub.subscribe(1, "local.events");
    check_stream(unix_pub, unix_sub, 1, "local.events", 200, 2);

    // Across transports: a Unix publisher reaches a TCP subscriber and back.
    tcp_sub.subscribe(2, "cross.>");
    const ack_frame a = unix_pub.publish_acked("cross.to.tcp", "k", "from unix");
    CHECK(a.delivered == 1);
    auto got = tcp_sub.collect(1, default_timeout);
    REQUIRE(got.size() == 1);
    CHECK(got[0].payload == "from unix");
    CHECK(got[0].subject == "cross.to.tcp");
    check_round_trip(unix_sub, tcp_sub);

    const auto code = d.stop();
    INFO("keywayd log:\n" << d.log());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
  }
  // The daemon removes its socket file on a clean exit.
  CHECK_FALSE(std::filesystem::exists(socket_path));
}

TEST_CASE("pubsub: wildcards star and tail") {
  keywayd_process d;
  raw_client sub = open_client(d.url(), "wildcards");
  raw_client pub = open_client(d.url(), "publisher");

  const std::map<std::uint32_t, std::string> patterns{
      {1, "wc.*"},       // one token after wc
      {2, "wc.>"},       // one or more tokens after wc
      {3, "wc.*.c"},     // exactly three tokens, the last c
      {4, "wc.a.>"},     // wc.a then one or more
      {5, "*.a.b"},      // any first token
      {6, ">"},          // everything
      {7, "wc.a.b.c"},   // literal
      {8, "other.*.*"},  // never matches the wc subjects below
  };
  for (const auto& [sid, pattern] : patterns) sub.subscribe(sid, pattern);

  const std::vector<std::string> subjects{"wc",       "wc.a",  "wc.a.b", "wc.x.c",
                                          "wc.a.b.c", "x.a.b", "wc.a.c"};
  // Which sids must see which subject (the NATS rules).
  const std::map<std::string, std::set<std::uint32_t>> expected{
      {"wc", {6}},
      {"wc.a", {1, 2, 6}},
      {"wc.a.b", {2, 4, 5, 6}},
      {"wc.x.c", {2, 3, 6}},
      {"wc.a.b.c", {2, 4, 6, 7}},
      {"x.a.b", {5, 6}},
      {"wc.a.c", {2, 3, 4, 6}},
  };
  std::size_t total = 0;
  // One key for every publish: one owner core orders them all, so they reach
  // this connection in publish order, and the sentinel comes last.
  for (const auto& s : subjects) {
    const ack_frame a = pub.publish_acked(s, "same-key", "to " + s);
    CHECK_MESSAGE(a.delivered == expected.at(s).size(), "subject " << s);
    total += expected.at(s).size();
  }
  pub.publish("sentinel", "same-key", "end");  // only `>` (sid 6) matches it
  ++total;

  const auto got = sub.collect(total, default_timeout);
  REQUIRE(got.size() == total);
  CHECK(got.back().subject == "sentinel");
  CHECK(got.back().sid == 6);
  std::map<std::string, std::set<std::uint32_t>> seen;
  for (std::size_t i = 0; i + 1 < got.size(); ++i) {
    const auto& m = got[i];
    CHECK(m.payload == "to " + m.subject);
    CHECK_MESSAGE(seen[m.subject].insert(m.sid).second, "duplicate delivery " << describe(m));
  }
  for (const auto& s : subjects) CHECK_MESSAGE(seen[s] == expected.at(s), "subject " << s);
  // Nothing after "end" either (a second copy of it, say): a second sentinel
  // on the same key is all that comes.
  sentinels fence;
  fence.publish(pub, "sentinel", "same-key");
  CHECK(fence.await(sub).empty());
}

TEST_CASE("pubsub: no deliveries after the unsubscribe ack") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "subscriber");
  raw_client pub = open_client(d.url(), "publisher");
  sub.subscribe(1, "unsub.topic");
  sub.subscribe(2, "unsub.sentinel");

  // Many keys, so both owner cores deliver to sid 1 before the unsubscribe.
  constexpr int keys = 64;
  for (int k = 0; k < keys; ++k) pub.publish("unsub.topic", "key-" + std::to_string(k), "before");
  auto before = sub.collect(keys, default_timeout);
  REQUIRE(before.size() == keys);
  for (const auto& m : before) CHECK(m.sid == 1);

  sub.unsubscribe(1);
  for (int round = 0; round < 5; ++round)
    for (int k = 0; k < keys; ++k) pub.publish("unsub.topic", "key-" + std::to_string(k), "after");
  // One sentinel per key: each key's owner core sends it after that key's
  // "after" messages, over the same ring, so when all sentinels are in, any
  // stray delivery would have arrived too.
  for (int k = 0; k < keys; ++k)
    pub.publish("unsub.sentinel", "key-" + std::to_string(k), "sentinel");
  const auto after = sub.collect(keys, default_timeout);
  REQUIRE(after.size() == keys);
  for (const auto& m : after) {
    CHECK_MESSAGE(m.sid == 2, "delivery after unsubscribe: " << describe(m));
    CHECK(m.payload == "sentinel");
  }
  // Nothing after them either (a sentinel delivered twice, a late "after"):
  // a second round of sentinels on every key is all that comes.
  {
    std::vector<std::string> all_keys;
    for (int k = 0; k < keys; ++k) all_keys.push_back("key-" + std::to_string(k));
    sentinels fence;
    fence.publish(pub, "unsub.sentinel", all_keys);
    const auto late = fence.await(sub);
    CHECK_MESSAGE(late.empty(), "late: " << describe_deliveries(late));
  }

  // Unsubscribing an unknown sid is a non-fatal protocol error for that request.
  sub.queue_unsubscribe(1, 42);
  sub.flush();
  const error_frame e = sub.await_error();
  CHECK(e.code == proto::errc::protocol);
  CHECK(e.request_id == 42);
  CHECK_FALSE(e.fatal);
  // The sid is free again: subscribing it anew works and delivers.
  sub.subscribe(1, "unsub.topic");
  CHECK(pub.publish_acked("unsub.topic", "k", "again").delivered == 1);
  const auto again = sub.collect(1, default_timeout);
  REQUIRE(again.size() == 1);
  CHECK(again[0].sid == 1);
  CHECK(again[0].payload == "again");
}

TEST_CASE("acks: delivered counts 0 and 1 and 3 subscribers") {
  keywayd_process d({"--workers", "2"});
  raw_client a = open_client(d.url(), "a");
  raw_client b = open_client(d.url(), "b");
  raw_client c = open_client(d.url(), "c");
  raw_client pub = open_client(d.url(), "publisher");
  a.subscribe(1, "acks.one.x");
  b.subscribe(1, "acks.three.x");
  c.subscribe(1, "acks.three.*");
  a.subscribe(2, "acks.three.>");  // a second subscription on the same connection counts too

  for (int i = 0; i < 20; ++i) {
    const std::string key = "key-" + std::to_string(i);  // both owner cores
    CHECK(pub.publish_acked("acks.none", key, "p").delivered == 0);
    CHECK(pub.publish_acked("acks.one.x", key, "p").delivered == 1);
    CHECK(pub.publish_acked("acks.three.x", key, "p").delivered == 3);
  }
  auto got_a = a.collect(40, default_timeout);
  auto got_b = b.collect(20, default_timeout);
  auto got_c = c.collect(20, default_timeout);
  CHECK(got_a.size() == 40);
  CHECK(got_b.size() == 20);
  CHECK(got_c.size() == 20);
  std::size_t a_one = 0, a_three = 0;
  for (const auto& m : got_a) (m.sid == 1 ? a_one : a_three) += 1;
  CHECK(a_one == 20);
  CHECK(a_three == 20);

  // A queue group counts as one.
  b.subscribe(2, "acks.group", "g");
  c.subscribe(2, "acks.group", "g");
  CHECK(pub.publish_acked("acks.group", "k", "p").delivered == 1);
  // Sentinels from `pub` on every key it used, to a subject all three match
  // (b sid 1, c sid 1, a sid 2): what comes before them is everything, so the
  // group delivery (or a duplicate of it) and any stray to `a` show.
  std::vector<std::string> fence_keys{"k"};
  for (int i = 0; i < 20; ++i) fence_keys.push_back("key-" + std::to_string(i));
  sentinels fence;
  fence.publish(pub, "acks.three.x", fence_keys);
  const auto more_b = fence.await(b);
  const auto more_c = fence.await(c);
  CHECK(more_b.size() + more_c.size() == 1);
  for (const auto* v : {&more_b, &more_c})
    for (const auto& m : *v) CHECK(m.subject == "acks.group");
  const auto more_a = fence.await(a);
  CHECK_MESSAGE(more_a.empty(), "stray: " << describe_deliveries(more_a));
}

TEST_CASE("request reply: the responder answers to replyTo") {
  keywayd_process d({"--workers", "2"});
  raw_client responder = open_client(d.url(), "responder");
  raw_client requester = open_client(d.url(), "requester");
  responder.subscribe(1, "svc.echo");
  requester.subscribe(9, "_INBOX.requester.*");

  constexpr int requests = 20;
  for (int i = 0; i < requests; ++i) {
    const std::string inbox = "_INBOX.requester." + std::to_string(i);
    requester.publish("svc.echo", "req-" + std::to_string(i), "question " + std::to_string(i),
                      inbox);
    const auto req = responder.collect(1, default_timeout);
    REQUIRE(req.size() == 1);
    CHECK(req[0].sid == 1);
    CHECK(req[0].reply_to == inbox);
    CHECK(req[0].payload == "question " + std::to_string(i));
    responder.publish(req[0].reply_to, req[0].key, "answer to " + req[0].payload);
    const auto reply = requester.collect(1, default_timeout);
    REQUIRE(reply.size() == 1);
    CHECK(reply[0].sid == 9);
    CHECK(reply[0].subject == inbox);
    CHECK(reply[0].payload == "answer to question " + std::to_string(i));
  }
  // No further reply: sentinels from the responder on the keys it answered on,
  // to an inbox the requester matches.
  std::vector<std::string> fence_keys;
  for (int i = 0; i < requests; ++i) fence_keys.push_back("req-" + std::to_string(i));
  sentinels fence;
  fence.publish(responder, "_INBOX.requester.fence", fence_keys);
  CHECK(fence.await(requester).empty());
  // And nothing else (an error, say) came to the requester before a pong.
  CHECK(requester.barrier().empty());
}

TEST_CASE("request reply: no responders error carries the ack id") {
  keywayd_process d({"--workers", "2"});
  raw_client requester = open_client(d.url(), "requester");
  requester.subscribe(1, "_INBOX.r.>");

  for (int i = 0; i < 8; ++i) {  // several keys: both owner cores answer
    const std::uint64_t ack_id = 1000 + static_cast<std::uint64_t>(i);
    const std::string inbox = "_INBOX.r." + std::to_string(i);
    requester.publish("svc.nobody", "key-" + std::to_string(i), "hello?", inbox, ack_id);
    const auto f = requester.read(default_timeout);
    REQUIRE(f.has_value());
    const error_frame* e = std::get_if<error_frame>(&*f);
    REQUIRE_MESSAGE(e != nullptr, "got " << describe(*f));
    CHECK(e->code == proto::errc::no_responders);
    CHECK(e->request_id == ack_id);
    CHECK_FALSE(e->fatal);
    CHECK(e->reply_to == inbox);
    CHECK(e->message.find("svc.nobody") != std::string::npos);
  }
  // Without an ack id the error still comes, with request id 0.
  requester.publish("svc.nobody", "k", "hello?", "_INBOX.r.noack");
  const error_frame e = requester.await_error();
  CHECK(e.code == proto::errc::no_responders);
  CHECK(e.request_id == 0);
  CHECK(e.reply_to == "_INBOX.r.noack");
  // Non-fatal: no ack and no other frame came with it (none before the pong,
  // which follows everything the routing of those publishes sent back), and
  // the connection works.
  CHECK(requester.barrier().empty());
  CHECK_FALSE(requester.eof());
  check_daemon_serves(d, requester);
}

TEST_CASE("request reply: a silent responder means no reply") {
  keywayd_process d;
  raw_client responder = open_client(d.url(), "silent");
  raw_client requester = open_client(d.url(), "requester");
  responder.subscribe(1, "svc.silent");
  requester.subscribe(1, "_INBOX.q.>");

  const std::uint64_t ack_id = 77;
  requester.publish("svc.silent", "k", "anyone?", "_INBOX.q.1", ack_id);
  const ack_frame a = requester.await_ack(ack_id);
  CHECK(a.delivered == 1);
  const auto req = responder.collect(1, default_timeout);
  REQUIRE(req.size() == 1);
  CHECK(req[0].reply_to == "_INBOX.q.1");
  // The responder never answers: the requester gets nothing (the timeout is
  // the client's business). What is excluded is the server making up an
  // answer on a timer of its own, so this stays a timed wait; the barrier
  // after it proves nothing was queued up to then.
  const auto f = requester.read(300ms);
  CHECK_MESSAGE(!f.has_value(), "unexpected " << describe(*f));
  CHECK(requester.barrier().empty());
  CHECK_FALSE(requester.eof());
}

TEST_CASE("pubsub: payloads up to max_payload arrive intact") {
  keywayd_process d({"--workers", "2"});
  raw_client sub_a = open_client(d.url(), "sub-a");
  raw_client sub_b = open_client(d.url(), "sub-b");
  raw_client pub = open_client(d.url(), "publisher");
  sub_a.subscribe(1, "big.>");
  sub_b.subscribe(2, "big.*");
  // Around the daemon's by-reference threshold (8 KiB), odd sizes, and the
  // default limit of 1 MiB itself.
  const std::vector<std::size_t> sizes{0,    1,     8191,   8192,
                                       8193, 65537, 300001, proto::limits{}.max_payload};
  std::vector<std::string> payloads;
  std::uint32_t x = 12345;
  for (const std::size_t n : sizes) {
    std::string p(n, '\0');
    for (auto& ch : p) {
      x = x * 1103515245u + 12345u;
      ch = static_cast<char>(x >> 24);
    }
    payloads.push_back(std::move(p));
  }
  for (std::size_t i = 0; i < payloads.size(); ++i) {
    const ack_frame a = [&] {
      pub.publish("big.p", "key-" + std::to_string(i), payloads[i], {}, 100 + i);
      return pub.await_ack(100 + i);
    }();
    CHECK(a.delivered == 2);
  }
  for (raw_client* sub : {&sub_a, &sub_b}) {
    const auto got = sub->collect(payloads.size(), default_timeout);
    REQUIRE(got.size() == payloads.size());
    std::map<std::string, std::string> by_key;
    for (const auto& m : got) by_key[m.key] = m.payload;
    for (std::size_t i = 0; i < payloads.size(); ++i) {
      INFO("payload of " << sizes[i] << " bytes");
      const auto it = by_key.find("key-" + std::to_string(i));
      REQUIRE(it != by_key.end());
      CHECK(it->second.size() == payloads[i].size());
      CHECK((it->second == payloads[i]));
    }
  }
  check_daemon_serves(d, pub);
}

TEST_CASE("pubsub: an empty key routes by subject") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "subscriber");
  raw_client pub = open_client(d.url(), "publisher");
  sub.subscribe(1, "nokey.>");
  constexpr int subjects = 32;
  constexpr int per_subject = 5;
  for (int r = 0; r < per_subject; ++r)
    for (int s = 0; s < subjects; ++s)
      pub.publish("nokey.s" + std::to_string(s), "", std::to_string(r));
  const auto got = sub.collect(subjects * per_subject, default_timeout);
  REQUIRE(got.size() == subjects * per_subject);
  std::map<std::string, std::set<std::uint32_t>> cores;
  std::map<std::string, int> next;
  std::size_t out_of_order = 0;
  for (const auto& m : got) {
    CHECK(m.key.empty());
    cores[m.subject].insert(m.owner_core);
    out_of_order += std::stoi(m.payload) != next[m.subject]++;
  }
  CHECK(out_of_order == 0);  // one subject, one owner, publish order kept
  std::set<std::uint32_t> used;
  for (const auto& [subject, cs] : cores) {
    CHECK_MESSAGE(cs.size() == 1, subject << " was ordered by more than one core");
    used.insert(cs.begin(), cs.end());
  }
  CHECK(used.size() == 2);  // different subjects spread over both cores
}

}  // namespace keyway::itest
