// publishBatch (protocol version 2) through the real keywayd: version
// negotiation in the welcome, a batch's entries delivered whole and in per-key
// order (alone and mixed with single publishes), every way a batch can be
// refused (docs/protocol.md "PublishBatch"), and batches large enough to run
// out of mesh credit half-way.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/http_get.hpp"

namespace keyway::itest {
namespace {

using namespace std::string_literals;
using test::http_get;

/// One publish (single or batch entry) as sent, for comparing with what
/// arrives.
struct sent {
  std::string subject;
  std::string key;
  std::string payload;
};

/// Checks that `got` (one subscription's deliveries, in arrival order) holds
/// each of `expected` exactly once, on `sid`, with its subject, key and
/// payload; that each key's messages arrive in the order they were published;
/// that a key always carries one owner core; and that seq rises per owner
/// core. Returns the owner cores seen.
std::set<std::uint32_t> check_deliveries(const std::vector<message_frame>& got,
                                         const std::vector<sent>& expected, std::uint32_t sid,
                                         std::uint32_t workers) {
  CHECK(got.size() == expected.size());
  // Payloads are unique in every test here: they identify the publish.
  std::map<std::string, std::size_t> index_of;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const bool fresh = index_of.emplace(expected[i].payload, i).second;
    REQUIRE_MESSAGE(fresh, "the test publishes payload '" << expected[i].payload << "' twice");
  }
  std::vector<bool> seen(expected.size(), false);
  std::map<std::string, std::size_t> last_of_key;  // key -> index of its last delivery
  std::map<std::string, std::uint32_t> owner;
  std::map<std::uint32_t, std::uint64_t> last_seq;
  std::set<std::uint32_t> cores;
  std::string problem;
  std::size_t problems = 0;
  const auto note = [&](std::string what) {
    if (problems++ == 0) problem = std::move(what);
  };
  for (std::size_t n = 0; n < got.size(); ++n) {
    const message_frame& m = got[n];
    const std::string where = "delivery " + std::to_string(n) + " " + describe(m) + ": ";
    const auto it = index_of.find(m.payload);
    if (it == index_of.end()) {
      note(where + "a payload nobody published");
      continue;
    }
    const std::size_t i = it->second;
    const sent& e = expected[i];
    if (seen[i]) note(where + "delivered twice");
    seen[i] = true;
    if (m.sid != sid) note(where + "wrong sid");
    if (m.subject != e.subject) note(where + "subject should be '" + e.subject + "'");
    if (m.key != e.key) note(where + "key should be '" + e.key + "'");
    if (!m.reply_to.empty() || !m.headers.empty()) note(where + "a replyTo or headers nobody sent");
    if (auto [at, fresh] = last_of_key.emplace(e.key, i); !fresh) {
      if (i < at->second)
        note(where + "publish " + std::to_string(i) + " after publish " +
             std::to_string(at->second) + " of the same key");
      at->second = i;
    }
    if (m.owner_core >= workers) note(where + "ownerCore out of range");
    if (auto [at, fresh] = owner.emplace(m.key, m.owner_core); !fresh && at->second != m.owner_core)
      note(where + "its key was on core " + std::to_string(at->second) + " before");
    auto& last = last_seq[m.owner_core];
    if (m.seq <= last) note(where + "seq not above " + std::to_string(last));
    last = m.seq;
    cores.insert(m.owner_core);
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (!seen[i])
      note("publish " + std::to_string(i) + " (payload '" + expected[i].payload +
           "') never arrived");
  }
  CHECK_MESSAGE(problems == 0, problems << " problems; the first: " << problem);
  return cores;
}

/// The entries of `items` as sent to `subject`, appended to `log`.
void log_batch(std::vector<sent>& log, const std::string& subject,
               const std::vector<batch_item>& items) {
  for (const auto& e : items) log.push_back({subject, e.key, e.payload});
}

std::string metrics_of(keywayd_process& d) {
  const auto r = http_get(d.admin_port(), "/metrics");
  REQUIRE(r.status == 200);
  return r.body;
}

/// A fatal error on `bad` that names `needle`, then the close.
void expect_fatal_naming(raw_client& bad, proto::errc code, const std::string& needle) {
  const error_frame e = expect_fatal_then_close(bad, code);
  CHECK(e.request_id == 0);
  CHECK_MESSAGE(e.message.find(needle) != std::string::npos,
                "'" << needle << "' not in: " << e.message);
}

/// A non-fatal error for a batch (which has no request id) naming each of `needles`.
void expect_refused(raw_client& c, proto::errc code, std::initializer_list<std::string> needles) {
  const error_frame e = c.await_error();
  CHECK_MESSAGE(e.code == code, "got " << proto::to_string(e.code) << ": " << e.message);
  CHECK_FALSE(e.fatal);
  CHECK(e.request_id == 0);
  for (const auto& n : needles)
    CHECK_MESSAGE(e.message.find(n) != std::string::npos, "'" << n << "' not in: " << e.message);
}

}  // namespace

// ---- version negotiation ------------------------------------------------------

TEST_CASE("batch: hello's version is negotiated down to the server's, version 0 is refused") {
  static_assert(proto::protocol_version == 2 && proto::min_protocol_version == 1 &&
                proto::batch_version == 2);
  keywayd_process d;
  raw_client bystander = open_client(d.url(), "bystander");
  bystander.subscribe(1, "nego.>");
  struct version_case {
    std::uint32_t asked, agreed;
  };
  const version_case cases[] = {
      {2, 2}, {1, 1}, {3, 2}, {99, 2}, {std::numeric_limits<std::uint32_t>::max(), 2}};
  for (const auto& vc : cases) {
    INFO("hello version " << vc.asked);
    raw_client c = raw_client::connect(d.url());
    const welcome_frame w = c.hello_version(vc.asked, "v" + std::to_string(vc.asked));
    CHECK(w.protocol_version == vc.agreed);
    // Open and serving, in the version agreed.
    const ack_frame a =
        c.publish_acked("nego.single", "k", "single from v" + std::to_string(vc.asked));
    CHECK(a.delivered == 1);
    if (vc.agreed >= proto::batch_version) {
      const std::vector<batch_item> items{{"k", "batch from v" + std::to_string(vc.asked)}};
      c.send_publish_batch("nego.batch", items);
    }
    const auto got = bystander.collect(vc.agreed >= 2 ? 2 : 1, default_timeout);
    REQUIRE(got.size() == (vc.agreed >= 2 ? 2u : 1u));
    CHECK(got[0].payload == "single from v" + std::to_string(vc.asked));
    if (vc.agreed >= 2) CHECK(got[1].payload == "batch from v" + std::to_string(vc.asked));
    // Nothing more from this client: a sentinel it publishes on the same key
    // comes after any other delivery of its publishes.
    sentinels fence;
    fence.publish(c, "nego.fence", "k");
    CHECK(fence.await(bystander).empty());
  }

  raw_client zero = raw_client::connect(d.url());
  zero.send_hello(0, "unset");
  const error_frame e = expect_fatal_then_close(zero, proto::errc::unsupported_version);
  CHECK(e.message.find("version 0 ") != std::string::npos);
  CHECK(e.message.find("1 to 2") != std::string::npos);  // the versions spoken
  // `zero` never got to publish; whatever reached the bystander before this
  // barrier is all there is on its connection so far.
  CHECK(bystander.barrier().empty());
  bystander.unsubscribe(1);
  check_daemon_serves(d, bystander);
}

// ---- delivery -------------------------------------------------------------------

TEST_CASE(
    "batch: 200 entries over several keys arrive whole and in per-key order, on both owner cores") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(5, "batch.orders");
  // A version 1 subscriber gets the same deliveries, as Message frames.
  raw_client old_sub = raw_client::connect(d.url());
  REQUIRE(old_sub.hello_version(1, "old-sub").protocol_version == 1);
  old_sub.subscribe(6, "batch.orders");
  raw_client pub = raw_client::connect(d.url());
  REQUIRE(pub.hello("pub").protocol_version == 2);

  // Empty, binary and ordinary keys; payloads binary, of varied sizes, one empty.
  const std::vector<std::string> keys{"",      "alpha",   "beta",          "gamma",
                                      "delta", "k\0bin"s, "\xff\xfe\x01"s, "epsilon",
                                      "zeta",  "eta",     "theta"};
  std::vector<batch_item> items;
  for (int i = 0; i < 200; ++i) {
    std::string payload =
        i == 0 ? "" : "payload " + std::to_string(i) + "\0\xff"s + std::string(i % 37, 'x');
    items.push_back({keys[static_cast<std::size_t>(i) % keys.size()], std::move(payload)});
  }
  std::vector<sent> log;
  log_batch(log, "batch.orders", items);
  pub.send_publish_batch("batch.orders", items);

  const auto got = sub.collect(items.size(), default_timeout);
  const auto cores = check_deliveries(got, log, 5, 2);
  CHECK_MESSAGE(cores.size() == 2, "the keys should spread over both owner cores");
  const auto old_got = old_sub.collect(items.size(), default_timeout);
  check_deliveries(old_got, log, 6, 2);
  // (That nothing beyond the 200 arrives is checked at the end, with sentinels
  // that would disturb the metrics here.)
  CHECK_MESSAGE(old_sub.message_batches() == 0,
                "a version 1 connection must not get messageBatch frames");
  MESSAGE("the version 2 subscriber got its 200 deliveries in " << sub.message_batches()
                                                                << " messageBatch frames");
  // One order per key: both saw each publish with the same (ownerCore, seq).
  std::map<std::string, std::pair<std::uint32_t, std::uint64_t>> stamp;
  for (const auto& m : got) stamp[m.payload] = {m.owner_core, m.seq};
  std::size_t stamp_mismatches = 0;
  for (const auto& m : old_got)
    stamp_mismatches += stamp[m.payload] != std::pair(m.owner_core, m.seq);
  CHECK(stamp_mismatches == 0);
  // No error came back for the batch: nothing came before the pong.
  CHECK(pub.barrier().empty());

  // Each entry counts as one publish, routed and delivered once.
  const std::string m = metrics_of(d);
  CHECK(metric_sum(m, "keyway_messages_received_total") == 200);
  CHECK(metric_sum(m, "keyway_messages_routed_total") == 200);
  CHECK(metric_sum(m, "keyway_messages_delivered_total") == 400);
  CHECK(metric_sum(m, "keyway_messages_unmatched_total") == 0);

  // A batch to a subject nobody subscribes to: counted, dropped whole.
  const std::vector<batch_item> unheard{{"a", "1"}, {"b", "2"}, {"c", "3"}};
  pub.send_publish_batch("batch.nobody", unheard);
  pub.ping();
  const std::string after = metrics_of(d);
  CHECK(metric_sum(after, "keyway_messages_received_total") == 203);
  CHECK(metric_sum(after, "keyway_messages_unmatched_total") == 3);
  CHECK(metric_sum(after, "keyway_messages_routed_total") == 200);
  // Neither subscriber got anything beyond the 200 (a duplicate, or a stray
  // from batch.nobody): sentinels from `pub` on every key it used, to the
  // subject they subscribe to, come after all of it.
  std::vector<std::string> fence_keys = keys;
  for (const auto& e : unheard) fence_keys.push_back(e.key);
  sentinels fence;
  fence.publish(pub, "batch.orders", fence_keys);
  CHECK(fence.await(sub).empty());
  CHECK(fence.await(old_sub).empty());
  check_daemon_serves(d, pub);
}

TEST_CASE("batch: publishes and batches on one connection keep their order per key") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(1, "mix.>");
  raw_client pub = open_client(d.url(), "pub");

  // Everything pipelined in one write: single publishes, batches and an empty
  // batch follow each other in the daemon's read buffer.
  std::vector<sent> log;
  const auto single = [&](const std::string& subject, const std::string& key,
                          const std::string& payload) {
    proto::publish_fields f;
    f.subject = subject;
    f.key = as_bytes(key);
    f.payload = as_bytes(payload);
    pub.queue_publish(f);
    log.push_back({subject, key, payload});
  };
  for (int r = 0; r < 40; ++r) {
    const std::string key = "key-" + std::to_string(r % 6);
    const std::string rs = std::to_string(r);
    single("mix.single", key, "first " + rs);
    const std::vector<batch_item> items{{key, "batch " + rs + ".0"},
                                        {"other-" + std::to_string(r % 3), "batch " + rs + ".1"},
                                        {key, "batch " + rs + ".2"}};
    pub.queue_publish_batch("mix.batch", static_cast<std::uint32_t>(items.size()),
                            batch_entries(items));
    log_batch(log, "mix.batch", items);
    if (r % 10 == 0) pub.queue_publish_batch("mix.empty", 0, {});  // does nothing
    single("mix.single", key, "then " + rs);
  }
  pub.flush();
  // The last word, acknowledged, on a key used throughout.
  const ack_frame a = pub.publish_acked("mix.single", "key-0", "last");
  CHECK(a.delivered == 1);
  log.push_back({"mix.single", "key-0", "last"});

  const auto got = sub.collect(log.size(), default_timeout);
  const auto cores = check_deliveries(got, log, 1, 2);
  CHECK(cores.size() == 2);
  // Nothing more: a sentinel from `pub` on each key it used.
  std::vector<std::string> fence_keys;
  for (int k = 0; k < 6; ++k) fence_keys.push_back("key-" + std::to_string(k));
  for (int k = 0; k < 3; ++k) fence_keys.push_back("other-" + std::to_string(k));
  sentinels fence;
  fence.publish(pub, "mix.fence", fence_keys);
  CHECK(fence.await(sub).empty());
  // No error for the empty batch or any other: nothing came before the pong.
  CHECK(pub.barrier().empty());
}

// ---- refused batches ------------------------------------------------------------

TEST_CASE(
    "batch: an entry's key over limits.max_key refuses the whole batch, the connection carries "
    "on") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(1, "bk.>");
  raw_client pub = open_client(d.url(), "pub");
  const std::uint32_t max_key = proto::limits{}.max_key;  // not announced, not configurable

  std::vector<batch_item> items{
      {"k0", "p0"}, {"k1", "p1"}, {std::string(max_key + 1, 'K'), "p2"}, {"k3", "p3"}};
  pub.send_publish_batch("bk.x", items);
  expect_refused(pub, proto::errc::invalid_key, {"entry 2 ", "limits.max_key"});
  // None of its entries went anywhere: the next publish is all that arrives
  // before sentinels from `pub` on the batch's keys. (The overlong key cannot
  // carry a sentinel; an entry of it would show among what came before.)
  CHECK(pub.publish_acked("bk.x", "k0", "after").delivered == 1);
  {
    sentinels fence;
    fence.publish(pub, "bk.fence", std::vector<std::string>{"k0", "k1", "k3"});
    const auto after = fence.await(sub);
    REQUIRE(after.size() == 1);
    CHECK(after[0].payload == "after");
  }

  // The same batch with the key at the limit goes through, on the same connection.
  items[2].key = std::string(max_key, 'K');
  pub.send_publish_batch("bk.x", items);
  std::vector<sent> log;
  log_batch(log, "bk.x", items);
  check_deliveries(sub.collect(items.size(), default_timeout), log, 1, 2);
  {
    sentinels fence;
    std::vector<std::string> fence_keys;
    for (const auto& e : items) fence_keys.push_back(e.key);
    fence.publish(pub, "bk.fence", fence_keys);
    CHECK(fence.await(sub).empty());
  }
  check_daemon_serves(d, pub);
}

TEST_CASE(
    "batch: an entry's payload over limits.max_payload refuses the whole batch, the connection "
    "carries on") {
  keywayd_process d({"--workers", "2", "--max-payload", "1024"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(1, "bp.>");
  raw_client pub = raw_client::connect(d.url());
  REQUIRE(pub.hello("pub").max_payload == 1024);

  std::vector<batch_item> items{{"k0", "p0"}, {"k1", std::string(1025, 'P')}, {"k2", "p2"}};
  pub.send_publish_batch("bp.x", items);
  expect_refused(pub, proto::errc::payload_too_large, {"entry 1 ", "limits.max_payload"});
  CHECK(pub.publish_acked("bp.x", "k2", "after").delivered == 1);
  // Only "after" comes before sentinels from `pub` on each of the batch's keys.
  {
    sentinels fence;
    fence.publish(pub, "bp.fence", std::vector<std::string>{"k0", "k1", "k2"});
    const auto after = fence.await(sub);
    REQUIRE(after.size() == 1);
    CHECK(after[0].payload == "after");
  }

  // A payload at the limit is fine.
  items[1].payload = std::string(1024, 'P');
  pub.send_publish_batch("bp.x", items);
  std::vector<sent> log;
  log_batch(log, "bp.x", items);
  check_deliveries(sub.collect(items.size(), default_timeout), log, 1, 2);
  {
    sentinels fence;
    fence.publish(pub, "bp.fence", std::vector<std::string>{"k0", "k1", "k2"});
    CHECK(fence.await(sub).empty());
  }
  check_daemon_serves(d, pub);
}

TEST_CASE("batch: a subject that is not literal refuses the batch without closing") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(1, ">");
  raw_client pub = open_client(d.url(), "pub");
  const std::vector<batch_item> items{{"k", "one"}, {"k", "two"}};
  for (const std::string subject : {"a.*", "a.>", ">", "a..b", ""}) {
    INFO("subject '" << subject << "'");
    pub.send_publish_batch(subject, items);
    expect_refused(pub, proto::errc::invalid_subject, {"publishBatch.subject"});
  }
  // Nothing of them reached the catch-all subscriber before a sentinel from
  // `pub` on their key.
  {
    sentinels fence;
    fence.publish(pub, "a.fence", "k");
    CHECK(fence.await(sub).empty());
  }
  // The connection still publishes, batches included.
  pub.send_publish_batch("a.b", items);
  std::vector<sent> log;
  log_batch(log, "a.b", items);
  check_deliveries(sub.collect(items.size(), default_timeout), log, 1, 2);
  sub.unsubscribe(1);  // the health check counts subscribers
  check_daemon_serves(d, pub);
}

TEST_CASE("batch: a count that disagrees with the entries is a fatal protocol error") {
  keywayd_process d({"--workers", "2"});
  raw_client bystander = open_client(d.url(), "bystander");
  bystander.subscribe(1, "bc.>");
  raw_client bad = open_client(d.url(), "bad-count");
  const std::vector<batch_item> good{{"g0", "good 0"}, {"g1", "good 1"}};
  const std::vector<batch_item> three{{"k0", "bad 0"}, {"k1", "bad 1"}, {"k2", "bad 2"}};
  std::uint32_t count = 0;
  std::vector<batch_item> entries;
  SUBCASE("one more than sent") {
    entries = three;
    count = 4;
  }
  SUBCASE("one fewer than sent") {
    entries = three;
    count = 2;
  }
  SUBCASE("entries without a count") {
    entries = three;
    count = 0;
  }
  SUBCASE("a count without entries") {
    count = 5;
  }
  // A good batch, the bad one and a publish after it, in one write.
  bad.queue_publish_batch("bc.x", static_cast<std::uint32_t>(good.size()), batch_entries(good));
  bad.queue_publish_batch("bc.x", count, batch_entries(entries));
  bad.queue_publish({.subject = "bc.x", .key = as_bytes("g0"), .payload = as_bytes("never")});
  bad.flush();
  expect_fatal_naming(bad, proto::errc::protocol, "publishBatch.count is " + std::to_string(count));
  // What came before it was published; nothing of it or after it.
  std::vector<sent> log;
  log_batch(log, "bc.x", good);
  // `bad` is closed and cannot publish a sentinel after its refused frames,
  // so the absence of their entries (and of "never") stays a timed wait; the
  // expected deliveries themselves are awaited by count.
  auto got = bystander.collect(log.size(), default_timeout);
  for (auto& m : bystander.collect_until_quiet(200ms, 5s)) got.push_back(std::move(m));
  check_deliveries(got, log, 1, 2);
  check_daemon_serves(d, bystander);
}

TEST_CASE("batch: entries cut short are a fatal protocol error") {
  keywayd_process d({"--workers", "2"});
  raw_client bystander = open_client(d.url(), "bystander");
  bystander.subscribe(1, "cut.>");
  raw_client bad = open_client(d.url(), "cut-short");
  const std::vector<batch_item> good{{"g0", "good 0"}, {"g1", "good 1"}};
  std::vector<std::byte> entries =
      batch_entries(std::vector<batch_item>{{"k0", "whole 0"}, {"k1", "whole 1"}});
  const auto append_head = [&](std::uint32_t key_size, std::uint32_t payload_size) {
    const std::uint32_t sizes[2] = {key_size, payload_size};
    const auto* p = reinterpret_cast<const std::byte*>(sizes);
    entries.insert(entries.end(), p, p + sizeof sizes);
  };
  SUBCASE("the last entry announces more payload than is left") {
    append_head(2, 100);
    entries.resize(entries.size() + 2 + 10, std::byte{'z'});
  }
  SUBCASE("the last entry's key runs past the end") {
    append_head(0xffff'ffffu, 0xffff'ffffu);
    entries.resize(entries.size() + 16, std::byte{'z'});
  }
  SUBCASE("a size head cut in the middle") {
    entries.resize(entries.size() + 3, std::byte{1});
  }
  bad.queue_publish_batch("cut.x", static_cast<std::uint32_t>(good.size()), batch_entries(good));
  bad.queue_publish_batch("cut.x", 3, entries);
  bad.queue_publish({.subject = "cut.x", .key = as_bytes("g0"), .payload = as_bytes("never")});
  bad.flush();
  expect_fatal_naming(bad, proto::errc::protocol, "cut short");
  std::vector<sent> log;
  log_batch(log, "cut.x", good);
  // `bad` is closed and cannot publish a sentinel after its refused frames,
  // so the absence of their entries (and of "never") stays a timed wait; the
  // expected deliveries themselves are awaited by count.
  auto got = bystander.collect(log.size(), default_timeout);
  for (auto& m : bystander.collect_until_quiet(200ms, 5s)) got.push_back(std::move(m));
  check_deliveries(got, log, 1, 2);
  check_daemon_serves(d, bystander);
}

TEST_CASE(
    "batch: a publishBatch on a connection that agreed on version 1 is a fatal protocol error") {
  keywayd_process d({"--workers", "2"});
  raw_client bystander = open_client(d.url(), "bystander");
  bystander.subscribe(1, "old.>");
  raw_client old = raw_client::connect(d.url());
  REQUIRE(old.hello_version(1, "old-client").protocol_version == 1);
  // Version 1 frames work.
  CHECK(old.publish_acked("old.x", "k", "single").delivered == 1);
  // A publish, a well-formed batch and a publish, in one write.
  const std::vector<batch_item> items{{"k", "batch 0"}, {"k2", "batch 1"}};
  old.queue_publish({.subject = "old.x", .key = as_bytes("k"), .payload = as_bytes("before")});
  old.queue_publish_batch("old.x", static_cast<std::uint32_t>(items.size()), batch_entries(items));
  old.queue_publish({.subject = "old.x", .key = as_bytes("k"), .payload = as_bytes("never")});
  old.flush();
  const error_frame e = expect_fatal_then_close(old, proto::errc::protocol);
  CHECK(e.message.find("publishBatch") != std::string::npos);
  CHECK(e.message.find("version 2") != std::string::npos);  // what it needs
  CHECK(e.message.find("version 1") != std::string::npos);  // what was agreed
  // `old` is closed and cannot publish a sentinel after the refused batch, so
  // the absence of its entries (and of "never") stays a timed wait; the two
  // expected deliveries are awaited by count.
  auto got = bystander.collect(2, default_timeout);
  for (auto& m : bystander.collect_until_quiet(200ms, 5s)) got.push_back(std::move(m));
  REQUIRE(got.size() == 2);
  CHECK(got[0].payload == "single");
  CHECK(got[1].payload == "before");

  // A batch the validator would refuse too is refused for the version first.
  raw_client old2 = raw_client::connect(d.url());
  REQUIRE(old2.hello_version(1, "old-client-2").protocol_version == 1);
  const std::vector<batch_item> one{{"k", "x"}};
  old2.send_publish_batch("a.*", one);
  const error_frame e2 = expect_fatal_then_close(old2, proto::errc::protocol);
  CHECK(e2.message.find("version 1") != std::string::npos);
  check_daemon_serves(d, bystander);
}

// ---- backpressure -------------------------------------------------------------

TEST_CASE("batch: batches that run out of mesh credit half-way lose and reorder nothing") {
  // Two publishers (on both workers, as connections are spread) each pipeline
  // batches far larger than a mesh ring (4096 slots), to keys owned by both
  // cores, with single publishes between them: a batch pauses at an entry for
  // lack of credit and resumes there.
  constexpr int publishers = 2;
  constexpr int batches = 4;
  constexpr int per_batch = 20000;
  constexpr int keys = 500;
  keywayd_process d({"--workers", "2", "--max-pending-bytes", "67108864"});
  raw_client sub = open_client(d.url(), "sub");
  sub.subscribe(1, "bbp.>");
  std::vector<raw_client> pubs;
  for (int p = 0; p < publishers; ++p)
    pubs.push_back(open_client(d.url(), "pub-" + std::to_string(p)));

  // Each publisher's publishes, in its publish order; a payload names the
  // publisher and the index in its log.
  std::vector<std::vector<sent>> logs(publishers);
  for (int p = 0; p < publishers; ++p) {
    auto& log = logs[static_cast<std::size_t>(p)];
    for (int b = 0; b < batches; ++b) {
      const std::string subject = "bbp.p" + std::to_string(p) + ".b" + std::to_string(b);
      for (int i = 0; i < per_batch; ++i)
        log.push_back({subject, "key-" + std::to_string((i * 7 + b) % keys),
                       std::to_string(p) + ":" + std::to_string(log.size())});
      log.push_back({"bbp.single", "key-" + std::to_string(b),
                     std::to_string(p) + ":" + std::to_string(log.size())});
    }
  }
  std::vector<std::string> errors(publishers);
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      raw_client& c = pubs[static_cast<std::size_t>(p)];
      const auto& log = logs[static_cast<std::size_t>(p)];
      try {
        std::size_t at = 0;
        for (int b = 0; b < batches; ++b) {
          std::vector<batch_item> items;
          for (int i = 0; i < per_batch; ++i, ++at) items.push_back({log[at].key, log[at].payload});
          c.queue_publish_batch(log[at - 1].subject, per_batch, batch_entries(items));
          const sent& s = log[at++];
          c.queue_publish(
              {.subject = s.subject, .key = as_bytes(s.key), .payload = as_bytes(s.payload)});
        }
        c.flush(30s);
        c.ping(30s);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(p)] = e.what();
      }
    });
  }
  const std::size_t total = std::size_t{publishers} * batches * (per_batch + 1);
  std::vector<message_frame> got;
  got.reserve(total);
  const auto deadline = steady::now() + 60s;
  while (got.size() < total && steady::now() < deadline && !sub.eof()) {
    for (auto& m : sub.collect(total - got.size(), 200ms)) got.push_back(std::move(m));
  }
  for (auto& t : threads) t.join();
  INFO("daemon log:\n" << d.log());
  for (const auto& e : errors) CHECK_MESSAGE(e.empty(), "publisher failed: " << e);
  CHECK_FALSE(sub.eof());
  // Nothing beyond `total`: sentinels from each publisher on every key it used
  // (the metric check below counts them out).
  sentinels fence;
  {
    std::vector<std::string> fence_keys;
    for (int k = 0; k < keys; ++k) fence_keys.push_back("key-" + std::to_string(k));
    for (auto& c : pubs) fence.publish(c, "bbp.fence", fence_keys);
  }
  const auto late = fence.await(sub, 30s);
  CHECK_MESSAGE(late.empty(), "late: " << describe_deliveries(late));

  // Per publisher: every publish exactly once, in order per key.
  REQUIRE(got.size() == total);
  std::vector<std::vector<message_frame>> by_publisher(publishers);
  for (auto& m : got) {
    const int p = m.payload.empty() ? -1 : m.payload[0] - '0';
    REQUIRE_MESSAGE((p >= 0 && p < publishers), "stray delivery " << describe(m));
    by_publisher[static_cast<std::size_t>(p)].push_back(std::move(m));
  }
  for (int p = 0; p < publishers; ++p) {
    INFO("publisher " << p);
    const auto cores = check_deliveries(by_publisher[static_cast<std::size_t>(p)],
                                        logs[static_cast<std::size_t>(p)], 1, 2);
    CHECK(cores.size() == 2);
  }
  // The batches did run out of credit (else this test showed nothing).
  const double paused = metric_sum(metrics_of(d), "keyway_paused_reads_total");
  MESSAGE("reads paused for credit: " << paused);
  CHECK(paused > 0);
  CHECK(metric_sum(metrics_of(d), "keyway_messages_received_total") ==
        static_cast<double>(total + fence.count()));
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

}  // namespace keyway::itest
