// The client across server restarts and failovers, against the real keywayd:
// reconnect to the same address and to the next server of the list,
// resubscription before buffered publishes, the reconnect buffer's limit,
// connection_lost for calls the lost link carried, max_attempts, and the
// flush guarantee (everything published before it was routed).
#include <doctest/doctest.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <keyway/client.hpp>
#include "tests/support/numbered.hpp"
#include "tests/unit/client/test_daemon.hpp"

using namespace keyway::client;
using namespace std::chrono_literals;
using keyway::test::keywayd_process;
using keyway::test::numbered;
using keyway::test::start_daemon;
using keyway::test::stop_daemon;

namespace {

using steady = std::chrono::steady_clock;

/// A keywayd on `url`'s port (tcp://127.0.0.1:PORT), e.g. the same address
/// as a stopped one.
std::unique_ptr<keywayd_process> start_on(const std::string& url,
                                          std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--listen", url, "--workers", "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  return std::make_unique<keywayd_process>(args);
}

publish_options keyed(const std::string& key) {
  publish_options o;
  o.key = key;
  return o;
}

/// Fast reconnects, so tests wait in tens of milliseconds.
connect_options quick(connect_options o = {}) {
  o.op_timeout = 10s;
  o.connect_timeout = 2s;
  o.reconnect.initial_wait = 20ms;
  o.reconnect.max_wait = 200ms;
  return o;
}

std::unique_ptr<connection> must_connect(const std::string& urls, connect_options o) {
  auto c = connect(urls, std::move(o));
  REQUIRE_MESSAGE(c.has_value(), (c ? std::string() : c.error().to_string()));
  return std::move(*c);
}

/// Link events of one connection.
struct events {
  std::mutex mu;
  std::condition_variable cv;
  int disconnected = 0, reconnected = 0, closed = 0, lame_duck = 0;
  std::string last_reason;
  steady::time_point reconnected_at{};

  connect_options wire(connect_options o) {
    o.on_disconnected = [this](const error& e) {
      std::lock_guard lock(mu);
      ++disconnected;
      last_reason = e.to_string();
      cv.notify_all();
    };
    o.on_reconnected = [this] {
      std::lock_guard lock(mu);
      ++reconnected;
      reconnected_at = steady::now();
      cv.notify_all();
    };
    o.on_lame_duck = [this] {
      std::lock_guard lock(mu);
      ++lame_duck;
      cv.notify_all();
    };
    o.on_closed = [this](const error& e) {
      std::lock_guard lock(mu);
      ++closed;
      last_reason = e.to_string();
      cv.notify_all();
    };
    return o;
  }
  /// One field, read under the lock (the callbacks write them on the IO thread).
  template <class T>
  T get(T events::*field) {
    std::lock_guard lock(mu);
    return this->*field;
  }
  template <class P>
  bool wait(P pred, std::chrono::milliseconds limit = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, [&] { return pred(*this); });
  }
};

/// Deliveries by payload, from the IO thread.
struct inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> payloads;
  connection::message_handler handler() {
    return [this](const message& m) {
      std::lock_guard lock(mu);
      payloads.push_back(m.payload);
      cv.notify_all();
    };
  }
  bool wait_for(std::size_t n, std::chrono::milliseconds limit = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, [&] { return payloads.size() >= n; });
  }
  std::vector<std::string> snapshot() {
    std::lock_guard lock(mu);
    return payloads;
  }
};

}  // namespace

TEST_CASE("reconnect: subscriber and acked publisher ride through a restart on the same address") {
  auto d1 = start_daemon();
  const std::string url = d1->url();
  events sub_ev, pub_ev;
  inbox got;
  auto sub = must_connect(url, sub_ev.wire(quick()));
  auto pub = must_connect(url, pub_ev.wire(quick()));
  subscribe_options grouped;
  grouped.queue_group = "g";
  REQUIRE(sub->subscribe("ride.>", got.handler(), grouped));

  // 60 acknowledged publishes, one every 20 ms, on keys k0..k3; keywayd
  // restarts on the same address after the 20th. An ack says how many
  // subscribers the publish reached: 0 while the subscriber is not yet
  // subscribed again on the new keywayd, 1 otherwise.
  std::vector<std::string> acked, unheard, lost;
  steady::time_point stopping{}, launched{};
  std::unique_ptr<keywayd_process> d2;
  for (int i = 0; i < 60; ++i) {
    if (i == 20) {
      stopping = steady::now();
      CHECK(d1->stop() == 0);
      launched = steady::now();
      d2 = start_on(url);
    }
    const std::string payload = std::to_string(i);
    const bool subscriber_back = sub_ev.get(&events::reconnected) > 0;
    auto r = pub->publish_ack("ride.x", payload, keyed(numbered("k", i % 4)));
    if (r) {
      REQUIRE(*r <= 1);
      (*r == 1 ? acked : unheard).push_back(payload);
      if (*r == 0)
        CHECK_MESSAGE(!subscriber_back, "publish ", i,
                      " reached no one though made after the resubscribe");
    } else {
      INFO(r.error().to_string());
      REQUIRE((r.error().code == errc::connection_lost));
      lost.push_back(payload);
    }
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(sub_ev.wait([](events& e) { return e.reconnected >= 1; }));
  CHECK(sub_ev.get(&events::disconnected) == 1);
  CHECK(pub_ev.get(&events::disconnected) == 1);
  CHECK(pub_ev.get(&events::reconnected) == 1);
  CHECK(sub->stats().reconnects == 1);
  CHECK(sub->status() == connection_status::connected);
  CHECK(pub->flush());

  // Every acknowledged publish arrived, once; a connection_lost one at most
  // once; nothing else. Per key, in publish order.
  got.wait_for(acked.size(), 5s);
  const auto delivered = got.snapshot();
  std::map<std::string, int> seen;
  for (const auto& p : delivered) ++seen[p];
  for (const auto& p : acked)
    CHECK_MESSAGE(seen[p] == 1, "acked publish ", p, " delivered ", seen[p], " times");
  for (const auto& p : unheard) CHECK(seen[p] == 0);
  for (const auto& p : lost) CHECK(seen[p] <= 1);
  CHECK(delivered.size() <= acked.size() + lost.size());
  CHECK(acked.size() + unheard.size() + lost.size() == 60);
  std::map<int, int> last_per_key;
  for (const auto& p : delivered) {
    const int i = std::stoi(p);
    auto [it, fresh] = last_per_key.emplace(i % 4, i);
    if (!fresh) {
      CHECK_MESSAGE(i > it->second, "key k", i % 4, ": ", i, " after ", it->second);
      it->second = i;
    }
  }
  const auto ms = [](steady::duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  const steady::time_point back = sub_ev.get(&events::reconnected_at);
  MESSAGE("SIGTERM -> subscriber resubscribed: "
          << ms(back - stopping) << " ms, of which the old keywayd's exit and the new one's start "
          << ms(launched - stopping) << " ms; new keywayd launched -> resubscribed: "
          << ms(back - launched) << " ms; acked to the subscriber " << acked.size()
          << ", acked to no one " << unheard.size() << ", connection_lost " << lost.size()
          << ", delivered " << delivered.size());
  sub.reset();
  pub.reset();
  stop_daemon(*d2);
}

TEST_CASE(
    "reconnect: subscriptions come back before buffered publishes, and the buffer has a limit") {
  auto d1 = start_daemon();
  const std::string url = d1->url();
  events ev;
  inbox got;
  connect_options o = quick();
  o.reconnect.buffer_bytes = 64 * 1024;
  auto c = must_connect(url, ev.wire(o));
  REQUIRE(c->subscribe("buf.>", got.handler()));
  REQUIRE(c->publish("buf.a", "before"));
  REQUIRE(got.wait_for(1));

  CHECK(d1->stop() == 0);
  REQUIRE(ev.wait([](events& e) { return e.disconnected == 1; }));
  CHECK(c->status() == connection_status::reconnecting);
  CHECK(c->is_open());
  // While down: publishes wait in the reconnect buffer until it is full.
  const std::string payload(1000, 'p');
  int buffered = 0;
  outcome<void> r;
  while ((r = c->publish("buf.a", payload, keyed(std::to_string(buffered))))) ++buffered;
  REQUIRE((r.error().code == errc::buffer_full));
  CHECK(r.error().message.find("reconnect.buffer_bytes") != std::string::npos);
  CHECK(buffered > 30);
  CHECK(buffered < 66);
  CHECK(c->stats().buffered_publishes == static_cast<std::uint64_t>(buffered));

  // Back on the same address: the subscription is re-established first, so
  // every buffered publish reaches it.
  auto d2 = start_on(url);
  REQUIRE(ev.wait([](events& e) { return e.reconnected == 1; }));
  REQUIRE(c->flush());
  CHECK(got.wait_for(1 + buffered, 5s));
  CHECK(got.snapshot().size() == 1u + buffered);
  CHECK(c->stats().lost_publishes == 0);
  c.reset();
  stop_daemon(*d2);
}

TEST_CASE("reconnect: calls the lost link carried fail with connection_lost, never resent") {
  auto d = start_daemon();
  events ev;
  auto c = must_connect(d->url(), ev.wire(quick()));
  // Stopped, keywayd reads nothing: the acked publishes are written to the
  // socket and wait. Then the link dies with them.
  REQUIRE(::kill(d->pid(), SIGSTOP) == 0);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<error> results;
  for (int i = 0; i < 50; ++i) {
    c->publish_ack_async("lost.x", "p", {}, [&](outcome<std::uint32_t> r) {
      std::lock_guard lock(mu);
      results.push_back(r ? error{} : r.error());
      cv.notify_all();
    });
  }
  std::this_thread::sleep_for(200ms);  // written out
  REQUIRE(::kill(d->pid(), SIGKILL) == 0);
  std::unique_lock lock(mu);
  REQUIRE(cv.wait_for(lock, 10s, [&] { return results.size() == 50; }));
  for (const auto& e : results) {
    CHECK((e.code == errc::connection_lost));
    CHECK(e.message.find("may or may not have taken effect") != std::string::npos);
  }
  lock.unlock();
  CHECK(ev.wait([](events& e) { return e.disconnected == 1; }));
  CHECK(c->status() == connection_status::reconnecting);
  c->close();
  CHECK(c->status() == connection_status::closed);
  d->stop();
}

TEST_CASE("reconnect: the next server of the list takes over, and max_attempts ends it") {
  auto a = start_daemon();
  auto b = start_daemon();
  events ev;
  inbox got;
  connect_options o = quick();
  o.reconnect.max_attempts = 3;
  auto c = must_connect(a->url() + "," + b->url(), ev.wire(o));
  CHECK(c->info().url == a->url());
  REQUIRE(c->subscribe("fail.>", got.handler()));

  CHECK(a->stop() == 0);
  REQUIRE(ev.wait([](events& e) { return e.reconnected == 1; }));
  CHECK(c->info().url == b->url());
  // Everything published after the switch arrives, once, in order per key.
  for (int i = 0; i < 200; ++i)
    REQUIRE(c->publish("fail.over", std::to_string(i), keyed(numbered("k", i % 5))));
  REQUIRE(c->flush());
  const auto after = got.snapshot();
  REQUIRE(after.size() == 200);
  std::map<int, int> last;
  for (const auto& p : after) {
    const int i = std::stoi(p);
    auto [it, fresh] = last.emplace(i % 5, i);
    if (!fresh) {
      CHECK(i > it->second);
      it->second = i;
    }
  }

  // Both gone: three failed rounds, then closed for good.
  CHECK(b->stop() == 0);
  REQUIRE(ev.wait([](events& e) { return e.closed == 1; }));
  CHECK(ev.get(&events::last_reason).find("gave up reconnecting") != std::string::npos);
  CHECK(c->status() == connection_status::closed);
  auto r = c->publish("fail.x", "x");
  REQUIRE_FALSE(r);
  CHECK((r.error().code == errc::closed));
}

TEST_CASE("reconnect: connect tries every server of the list and names them when all fail") {
  auto d = start_daemon();
  const std::string live = d->url();
  CHECK(d->stop() == 0);
  auto r = connect(live + ", unix:///nonexistent/keyway.sock", quick());
  REQUIRE_FALSE(r);
  CHECK((r.error().code == errc::connect_failed));
  CHECK(r.error().message.find(live) != std::string::npos);
  CHECK(r.error().message.find("unix:///nonexistent/keyway.sock") != std::string::npos);
  auto bad = connect("tcp://127.0.0.1:1,,tcp://127.0.0.1:2", quick());
  REQUIRE_FALSE(bad);
  CHECK((bad.error().code == errc::invalid_url));
}

TEST_CASE("flush: every earlier publish to one's own subscription has arrived when it returns") {
  for (const char* workers : {"1", "2"}) {
    CAPTURE(workers);
    auto d = std::make_unique<keywayd_process>(std::vector<std::string>{"--workers", workers});
    inbox got;
    auto c = must_connect(d->url(), quick());
    REQUIRE(c->subscribe("own.>", got.handler()));
    for (int round = 0; round < 20; ++round) {
      CAPTURE(round);
      for (int i = 0; i < 1000; ++i)
        REQUIRE(c->publish("own.x", "m", keyed("key-" + std::to_string(i))));
      REQUIRE(c->flush());
      CHECK(got.snapshot().size() == 1000u * (round + 1));
    }
    c.reset();
    stop_daemon(*d);
  }
}

TEST_CASE("client: synchronous subscriptions, auto-unsubscribe, respond, drain and stats") {
  auto d = start_daemon();
  auto c = must_connect(d->url(), quick());

  subscribe_options three;
  three.max_messages = 3;
  auto sync = c->subscribe_sync("sync.>", three);
  REQUIRE(sync);
  for (int i = 0; i < 5; ++i) REQUIRE(c->publish("sync.x", std::to_string(i)));
  REQUIRE(c->flush());
  for (int i = 0; i < 3; ++i) {
    auto m = c->next_message(*sync, 2s);
    REQUIRE(m);
    CHECK(m->payload == std::to_string(i));
  }
  // Auto-unsubscribed after 3: the queue has ended.
  auto end = c->next_message(*sync, 200ms);
  REQUIRE_FALSE(end);
  CHECK((end.error().code == errc::closed));
  auto wrong = c->next_message(subscription{9999}, 10ms);
  REQUIRE_FALSE(wrong);
  CHECK((wrong.error().code == errc::invalid_argument));

  // auto_unsubscribe on a live callback subscription.
  inbox two;
  auto s2 = c->subscribe("auto.x", two.handler());
  REQUIRE(s2);
  REQUIRE(c->auto_unsubscribe(*s2, 2));
  for (int i = 0; i < 4; ++i) REQUIRE(c->publish("auto.x", "a"));
  REQUIRE(c->flush());
  CHECK(two.snapshot().size() == 2);

  // respond() answers a request; a plain message cannot be answered.
  auto responder = must_connect(d->url(), quick());
  REQUIRE(responder->subscribe(
      "svc.echo", [&](const message& m) { (void)responder->respond(m, "echo:" + m.payload); }));
  auto reply = c->request("svc.echo", "hi", 2s);
  REQUIRE(reply);
  CHECK(reply->payload == "echo:hi");
  message plain;
  plain.subject = "x";
  auto no = c->respond(plain, "x");
  REQUIRE_FALSE(no);
  CHECK((no.error().code == errc::no_reply_to));

  const statistics s = c->stats();
  CHECK(s.out_msgs == 5 + 4 + 1);
  CHECK(s.in_msgs == 3 + 2);
  CHECK(s.reconnects == 0);

  // drain(): deliveries already routed reach the handler, then it is closed.
  inbox drained;
  auto sub = must_connect(d->url(), quick());
  REQUIRE(sub->subscribe("drain.>", drained.handler()));
  for (int i = 0; i < 500; ++i) REQUIRE(c->publish("drain.x", "d", keyed(std::to_string(i))));
  REQUIRE(c->flush());
  REQUIRE(sub->drain());
  CHECK(drained.snapshot().size() == 500);
  CHECK(sub->status() == connection_status::closed);
  responder.reset();
  sub.reset();
  c.reset();
  stop_daemon(*d);
}

TEST_CASE("lame duck: a draining server sends its clients to the next server before it closes") {
  auto a = start_daemon({"--lame-duck-grace", "2s"});
  auto b = start_daemon();
  events ev;
  inbox got;
  auto c = must_connect(a->url() + "," + b->url(), ev.wire(quick()));
  REQUIRE(c->subscribe("duck.>", got.handler()));
  REQUIRE(::kill(a->pid(), SIGTERM) == 0);
  // The move happens within the grace, while a still has the socket open.
  REQUIRE(ev.wait([](events& e) { return e.reconnected == 1; }, 1900ms));
  CHECK(ev.get(&events::lame_duck) == 1);
  CHECK(ev.get(&events::last_reason).find("shutting down") != std::string::npos);
  CHECK(c->info().url == b->url());
  REQUIRE(c->publish("duck.x", "on b"));
  REQUIRE(c->flush());
  CHECK(got.wait_for(1));
  CHECK(a->stop() == 0);
  c.reset();
  stop_daemon(*b);
}

TEST_CASE("welcome: servers a keywayd announces join the list the client reconnects to") {
  auto b = start_daemon();
  auto a = start_daemon({"--advertise", b->url(), "--advertise", "unix:///run/keyway/other.sock"});
  events ev;
  auto c = must_connect(a->url(), ev.wire(quick()));
  const server_info info = c->info();
  REQUIRE(info.connect_urls.size() == 2);
  CHECK(info.connect_urls[0] == b->url());
  CHECK(info.connect_urls[1] == "unix:///run/keyway/other.sock");
  CHECK(a->stop() == 0);
  REQUIRE(ev.wait([](events& e) { return e.reconnected == 1; }));
  CHECK(c->info().url == b->url());
  c.reset();
  stop_daemon(*b);
}
