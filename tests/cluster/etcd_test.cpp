// The etcd client and watch (cluster/etcd.hpp) against a real etcd 3.4: each
// test case starts its own (tests/support/etcd_process.hpp).
#include "cluster/etcd.hpp"

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/etcd_process.hpp"
#include "tests/support/local_socket.hpp"

namespace {

using namespace std::chrono_literals;
using keyway::cluster::etcd_client;
using keyway::cluster::etcd_watch;
using keyway::cluster::watch_event;
using keyway::test::etcd_process;
using clock_type = std::chrono::steady_clock;

/// The value of a call that must succeed (its error is shown if not).
template <class R>
auto must(R r) {
  REQUIRE_MESSAGE(r.has_value(), r.error());
  return std::move(*r);
}

/// Calls next() until `count` events arrived or `limit` passed.
std::vector<watch_event> collect(etcd_watch& w, std::size_t count,
                                 std::chrono::milliseconds limit = 8s) {
  std::vector<watch_event> all;
  const auto deadline = clock_type::now() + limit;
  while (all.size() < count && clock_type::now() < deadline) {
    auto got = w.next(200ms);
    REQUIRE_MESSAGE(got.has_value(), got.error());
    all.insert(all.end(), got->begin(), got->end());
  }
  return all;
}

/// Waits until range_prefix(prefix) is empty; false after `limit`.
bool wait_gone(etcd_client& c, const std::string& prefix, std::chrono::milliseconds limit) {
  const auto deadline = clock_type::now() + limit;
  while (clock_type::now() < deadline) {
    if (must(c.range_prefix(prefix)).kvs.empty()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

std::string closed_endpoint() {
  return "http://127.0.0.1:" + std::to_string(keyway::test::closed_loopback_port());
}

/// A loopback listener that never accepts nor answers: connections complete
/// (the kernel's backlog) and then nothing comes.
class silent_listener {
 public:
  silent_listener() : socket_(keyway::test::bind_loopback()) {
    REQUIRE(::listen(socket_.fd, 16) == 0);
  }
  ~silent_listener() { ::close(socket_.fd); }
  silent_listener(const silent_listener&) = delete;
  silent_listener& operator=(const silent_listener&) = delete;
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(socket_.port); }

 private:
  keyway::test::loopback_socket socket_;
};

}  // namespace

TEST_CASE("etcd: a granted lease is kept alive with its TTL left") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto lease = must(c.lease_grant(5s));
  CHECK(lease != 0);
  const auto ttl = must(c.lease_keepalive(lease));
  CHECK(ttl > 0);
  CHECK(ttl <= 5);
  CHECK(c.last_endpoint() == etcd.endpoint());
}

TEST_CASE("etcd: create_if_absent creates once, and a second create sees the first value") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto lease = must(c.lease_grant(10s));
  const auto first = must(c.create_if_absent("nodes/7", "host-a", lease));
  CHECK(first.created);
  CHECK(first.revision > 0);
  CHECK_FALSE(first.existing.has_value());

  const auto second = must(c.create_if_absent("nodes/7", "host-b", 0));
  CHECK_FALSE(second.created);
  REQUIRE(second.existing.has_value());
  CHECK(second.existing->key == "nodes/7");
  CHECK(second.existing->value == "host-a");
  CHECK(second.existing->create_revision == first.revision);
  CHECK(second.existing->mod_revision == first.revision);
  CHECK(second.existing->version == 1);
  CHECK(second.existing->lease == lease);
  CHECK(second.revision == first.revision);  // nothing was written
}

TEST_CASE("etcd: a key bound to a lease goes when the lease is revoked") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto lease = must(c.lease_grant(30s));
  CHECK(must(c.create_if_absent("nodes/1", "x", lease)).created);
  REQUIRE(must(c.range_prefix("nodes/")).kvs.size() == 1);
  REQUIRE_MESSAGE(c.lease_revoke(lease).has_value(), "revoke");
  CHECK(must(c.range_prefix("nodes/")).kvs.empty());
  CHECK(must(c.lease_keepalive(lease)) <= 0);
  // Revoking a lease already gone is not an error.
  const auto again = c.lease_revoke(lease);
  CHECK_MESSAGE(again.has_value(), again.error());
}

TEST_CASE("etcd: a key bound to a lease goes when the lease expires") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto lease = must(c.lease_grant(2s));
  const auto start = clock_type::now();
  CHECK(must(c.create_if_absent("nodes/2", "x", lease)).created);
  REQUIRE(wait_gone(c, "nodes/", 8s));
  CHECK(clock_type::now() - start >= 1s);  // expired, not dropped at once
  CHECK(must(c.lease_keepalive(lease)) <= 0);
}

TEST_CASE("etcd: range_prefix returns exactly the keys under the prefix, with revisions") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  std::vector<std::int64_t> revs;
  for (const char* k : {"n/b", "n/a", "n/c/d"}) revs.push_back(must(c.put(k, k, 0)));
  for (const char* k : {"n", "n0", "m/a", "o"}) must(c.put(k, "other", 0));
  const auto r = must(c.range_prefix("n/"));
  REQUIRE(r.kvs.size() == 3);
  CHECK(r.kvs[0].key == "n/a");
  CHECK(r.kvs[0].mod_revision == revs[1]);
  CHECK(r.kvs[1].key == "n/b");
  CHECK(r.kvs[1].create_revision == revs[0]);
  CHECK(r.kvs[2].key == "n/c/d");
  CHECK(r.kvs[2].value == "n/c/d");
  CHECK(r.kvs[2].version == 1);
  CHECK(r.revision >= revs[2] + 4);
  CHECK(must(c.range_prefix("none/")).kvs.empty());
  CHECK(must(c.range_prefix("")).kvs.size() == 7);
}

TEST_CASE("etcd: put_if_unchanged succeeds, then fails on a stale mod_revision") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto rev = must(c.put("cfg", "v1", 0));
  CHECK(must(c.put_if_unchanged("cfg", "v2", 0, rev)));
  CHECK_FALSE(must(c.put_if_unchanged("cfg", "v3", 0, rev)));
  const auto r = must(c.range_prefix("cfg"));
  REQUIRE(r.kvs.size() == 1);
  CHECK(r.kvs[0].value == "v2");
  CHECK(r.kvs[0].version == 2);
  CHECK(must(c.erase("cfg")));
  CHECK_FALSE(must(c.erase("cfg")));
  CHECK_FALSE(must(c.put_if_unchanged("cfg", "v4", 0, r.kvs[0].mod_revision)));
  CHECK(must(c.range_prefix("cfg")).kvs.empty());
}

TEST_CASE("etcd: a watch sees puts and deletes in order, a lease expiry among them") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto from = must(c.range_prefix("w/")).revision + 1;
  etcd_watch w({etcd.endpoint()}, "w/", from, 2s);
  const auto lease = must(c.lease_grant(2s));
  const auto r1 = must(c.put("w/a", "1", 0));
  const auto r2 = must(c.put("w/b", "2", lease));
  must(c.put("x/outside", "-", 0));
  REQUIRE(must(c.erase("w/a")));
  const auto events = collect(w, 4);
  REQUIRE(events.size() == 4);
  CHECK(events[0].type == watch_event::kind::put);
  CHECK(events[0].item.key == "w/a");
  CHECK(events[0].item.value == "1");
  CHECK(events[0].item.mod_revision == r1);
  CHECK(events[1].type == watch_event::kind::put);
  CHECK(events[1].item.key == "w/b");
  CHECK(events[1].item.mod_revision == r2);
  CHECK(events[1].item.lease == lease);
  CHECK(events[2].type == watch_event::kind::del);
  CHECK(events[2].item.key == "w/a");
  CHECK(events[2].item.mod_revision == r2 + 2);  // after x/outside
  // The lease expires: w/b's deletion, at a later revision.
  CHECK(events[3].type == watch_event::kind::del);
  CHECK(events[3].item.key == "w/b");
  CHECK(events[3].item.mod_revision > events[2].item.mod_revision);
  CHECK(w.revision() == events[3].item.mod_revision);
  CHECK(must(w.next(100ms)).empty());
}

TEST_CASE("etcd: a watch from an old revision replays the events after it") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  must(c.put("r/0", "before", 0));
  const auto r1 = must(c.put("r/1", "a", 0));
  const auto r2 = must(c.put("r/1", "b", 0));
  REQUIRE(must(c.erase("r/0")));
  must(c.put("other", "-", 0));
  etcd_watch w({etcd.endpoint()}, "r/", r1, 2s);
  const auto events = collect(w, 3);
  REQUIRE(events.size() == 3);
  CHECK(events[0].item.mod_revision == r1);
  CHECK(events[0].item.value == "a");
  CHECK(events[1].item.mod_revision == r2);
  CHECK(events[1].item.value == "b");
  CHECK(events[1].item.version == 2);
  CHECK(events[2].type == watch_event::kind::del);
  CHECK(events[2].item.key == "r/0");
  CHECK(events[2].item.mod_revision == r2 + 1);
  // Then live events follow the replay.
  const auto r3 = must(c.put("r/2", "c", 0));
  const auto live = collect(w, 1);
  REQUIRE(live.size() == 1);
  CHECK(live[0].item.mod_revision == r3);
  CHECK(w.revision() == r3);
}

TEST_CASE("etcd: a watch from a compacted revision fails, naming the compact revision") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  const auto r1 = must(c.put("c/1", "a", 0));
  const auto r2 = must(c.put("c/1", "b", 0));
  const auto compacted = c.compact(r2);
  REQUIRE_MESSAGE(compacted.has_value(), compacted.error());
  etcd_watch w({etcd.endpoint()}, "c/", r1, 2s);
  std::optional<std::string> error;
  const auto start = clock_type::now();
  while (!error && clock_type::now() - start < 5s) {
    auto got = w.next(200ms);
    REQUIRE((!got || got->empty()));
    if (!got) error = got.error();
  }
  REQUIRE(error.has_value());
  CHECK(error->find("compacted its history up to revision " + std::to_string(r2)) !=
        std::string::npos);
  CHECK(error->find("from revision " + std::to_string(r1)) != std::string::npos);
  // From the compact revision on, the history is there.
  etcd_watch from_r2({etcd.endpoint()}, "c/", r2, 2s);
  const auto events = collect(from_r2, 1);
  REQUIRE(events.size() == 1);
  CHECK(events[0].item.value == "b");
}

TEST_CASE("etcd: keys and values with any bytes round-trip") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 2s);
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes += static_cast<char>(i);
  const std::string prefix = std::string("bin/\xff\xff", 6);
  const std::string key = prefix + std::string("\0\x01 é\xfe", 7);
  etcd_watch w({etcd.endpoint()}, prefix, 0, 2s);
  REQUIRE(must(w.next(200ms)).empty());  // acknowledged: watching from now
  for (std::size_t len : {0, 1, 2, 3, 4, 256}) {
    must(c.put(key, all_bytes.substr(0, len), 0));
    const auto r = must(c.range_prefix(prefix));
    REQUIRE(r.kvs.size() == 1);
    CHECK(r.kvs[0].key == key);
    CHECK(r.kvs[0].value == all_bytes.substr(0, len));
    const auto events = collect(w, 1);
    REQUIRE(events.size() == 1);
    CHECK(events[0].item.key == key);
    CHECK(events[0].item.value == all_bytes.substr(0, len));
  }
  // A value far larger than one read of the stream arrives whole.
  const std::string big(300'000, '\xfe');
  must(c.put(key, big, 0));
  const auto events = collect(w, 1);
  REQUIRE(events.size() == 1);
  CHECK(events[0].item.value == big);
  must(c.put(std::string("bin/\xff\xff\xff", 7), "in", 0));
  must(c.put(std::string("bin/\xff\xfe", 6), "out", 0));
  CHECK(must(c.range_prefix(prefix)).kvs.size() == 2);
}

TEST_CASE("etcd: an unreachable endpoint gives an error naming it, within the timeout") {
  const std::string dead = closed_endpoint();
  etcd_client c({dead}, 500ms);
  const auto start = clock_type::now();
  const auto r = c.put("k", "v", 0);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find(dead) != std::string::npos);
  CHECK(r.error().find("/v3/kv/put") != std::string::npos);
  CHECK(clock_type::now() - start < 2s);

  etcd_watch w({dead}, "p/", 0, 500ms);
  const auto got = w.next(2s);
  REQUIRE_FALSE(got.has_value());
  CHECK(got.error().find(dead) != std::string::npos);
  CHECK(clock_type::now() - start < 4s);
  CHECK_FALSE(w.next(0ms).has_value());  // the same error again
}

TEST_CASE("etcd: an endpoint that accepts but never answers times out, naming it") {
  silent_listener silent;
  etcd_client c({silent.endpoint()}, 300ms);
  auto start = clock_type::now();
  const auto r = c.range_prefix("p/");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find(silent.endpoint() + ": timed out after 300 ms") != std::string::npos);
  CHECK(clock_type::now() - start >= 250ms);
  CHECK(clock_type::now() - start < 2s);

  etcd_watch w({silent.endpoint()}, "p/", 0, 300ms);
  start = clock_type::now();
  std::optional<std::string> error;
  while (!error && clock_type::now() - start < 3s) {
    auto got = w.next(100ms);
    REQUIRE((!got || got->empty()));
    if (!got) error = got.error();
  }
  REQUIRE(error.has_value());
  CHECK(error->find(silent.endpoint() + ": no acknowledgement within 300 ms") != std::string::npos);
}

TEST_CASE("etcd: with the first endpoint dead and the second live, calls succeed") {
  etcd_process etcd;
  const std::string dead = closed_endpoint();
  etcd_client c({dead, etcd.endpoint()}, 1s);
  etcd_watch w({dead, etcd.endpoint()}, "d/", 0, 1s);
  REQUIRE(must(w.next(500ms)).empty());
  const auto rev = must(c.put("d/k", "v", 0));
  CHECK(c.last_endpoint() == etcd.endpoint());
  CHECK(must(c.range_prefix("d/")).kvs.size() == 1);  // straight to the live one
  const auto events = collect(w, 1);
  REQUIRE(events.size() == 1);
  CHECK(events[0].item.mod_revision == rev);
}

TEST_CASE("etcd: a watch reports an error when etcd is killed") {
  etcd_process etcd;
  etcd_client c({etcd.endpoint()}, 1s);
  etcd_watch w({etcd.endpoint()}, "k/", 0, 1s);
  REQUIRE(must(w.next(500ms)).empty());
  must(c.put("k/1", "v", 0));
  REQUIRE(collect(w, 1).size() == 1);
  etcd.kill();
  const auto start = clock_type::now();
  std::optional<std::string> error;
  while (!error && clock_type::now() - start < 5s) {
    auto got = w.next(200ms);
    if (!got) error = got.error();
  }
  REQUIRE(error.has_value());
  CHECK(error->find(etcd.endpoint()) != std::string::npos);
  const auto r = c.put("k/2", "v", 0);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find(etcd.endpoint()) != std::string::npos);
}

TEST_CASE("etcd: a restarted etcd keeps its data on the same endpoint") {
  etcd_process etcd;
  {
    etcd_client c({etcd.endpoint()}, 1s);
    must(c.put("keep", "me", 0));
  }
  etcd.restart();
  etcd_client c({etcd.endpoint()}, 1s);
  const auto r = must(c.range_prefix("keep"));
  REQUIRE(r.kvs.size() == 1);
  CHECK(r.kvs[0].value == "me");
}

TEST_CASE("etcd: endpoints that are not http://HOST:PORT are refused, by name") {
  for (const std::string bad :
       {"https://127.0.0.1:2379", "127.0.0.1:2379", "http://127.0.0.1", "http://127.0.0.1:0",
        "http://127.0.0.1:2379/v3", "http://user@127.0.0.1:2379", "http://:2379"}) {
    CAPTURE(bad);
    try {
      etcd_client c({"http://127.0.0.1:2379", bad}, 1s);
      FAIL("accepted");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("'" + bad + "'") != std::string::npos);
    }
    CHECK_THROWS_AS(etcd_watch({bad}, "p/", 0, 1s), std::invalid_argument);
  }
  CHECK_THROWS_AS(etcd_client({}, 1s), std::invalid_argument);
}
