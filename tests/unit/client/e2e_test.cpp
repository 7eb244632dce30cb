// End-to-end tests of keyway::client against the real keywayd (KEYWAYD_PATH),
// started per test on tcp://127.0.0.1:0 (and a temporary Unix socket) with
// --workers 2. Every wait has a deadline; each test ends by stopping the
// daemon with SIGTERM and checking that it exits 0.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <keyway/client.hpp>
#include "proto/errc.hpp"
#include "proto/limits.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/unit/client/test_daemon.hpp"

using namespace keyway::client;
using namespace std::chrono_literals;
using keyway::test::keywayd_process;
using keyway::test::start_daemon;
using keyway::test::stop_daemon;

namespace {

std::unique_ptr<connection> must_connect(const std::string& url, connect_options options = {}) {
  options.op_timeout = 5s;
  auto c = connect(url, std::move(options));
  REQUIRE_MESSAGE(c.has_value(), (c ? std::string() : c.error().to_string()));
  return std::move(*c);
}

/// Collects deliveries from the IO thread; waits with a deadline.
class collector {
 public:
  connection::message_handler handler() {
    return [this](const message& m) {
      std::lock_guard lock(mu_);
      got_.push_back(m);
      cv_.notify_all();
    };
  }
  bool wait_for(std::size_t n, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return got_.size() >= n; });
  }
  std::vector<message> messages() {
    std::lock_guard lock(mu_);
    return got_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<message> got_;
};

std::string temp_socket_path() {
  static std::atomic<int> n{0};
  return "/tmp/keyway-client-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++) +
         ".sock";
}

}  // namespace

TEST_CASE("client e2e: connect reads the welcome") {
  auto d = start_daemon({"--max-payload", "65536", "--max-subscriptions", "7"});
  {
    connect_options named;
    named.client_name = "e2e-welcome";
    auto c = must_connect(d->url(), named);
    CHECK(c->is_open());
    CHECK_FALSE(c->info().server_id.empty());
    CHECK(c->info().worker_count == 2);
    CHECK(c->info().protocol_version == keyway::proto::protocol_version);
    CHECK(c->info().limits.max_payload == 65536);
    CHECK(c->info().max_subscriptions == 7);
    CHECK(c->info().url == d->url());

    // The announced limit is enforced locally, with the server's rule and code.
    auto big = c->publish("a.b", std::string(65537, 'x'));
    REQUIRE_FALSE(big);
    CHECK((big.error().code == keyway::proto::errc::payload_too_large));
    CHECK_FALSE(big.error().from_server);
    CHECK(c->publish("a.b", std::string(65536, 'x')));
    CHECK(c->flush());
    c->close();
    CHECK_FALSE(c->is_open());
    auto after = c->publish("a.b", "x");
    REQUIRE_FALSE(after);
    CHECK((after.error().code == errc::closed));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: connect errors are clear") {
  connect_options quick;
  quick.connect_timeout = 3s;
  auto refused =
      connect("tcp://127.0.0.1:" + std::to_string(keyway::test::closed_loopback_port()), quick);
  REQUIRE_FALSE(refused);
  CHECK((refused.error().code == errc::connect_failed));
  CHECK(refused.error().message.find("refused") != std::string::npos);

  auto no_socket = connect("unix:///tmp/keyway-no-such-dir/x.sock", quick);
  REQUIRE_FALSE(no_socket);
  CHECK((no_socket.error().code == errc::connect_failed));

  auto bad = connect("localhost:7400");
  REQUIRE_FALSE(bad);
  CHECK((bad.error().code == errc::invalid_url));
}

TEST_CASE("client e2e: publish and subscribe round trip") {
  auto d = start_daemon();
  {
    auto sub_conn = must_connect(d->url());
    auto pub_conn = must_connect(d->url());
    collector got;
    auto sub = sub_conn->subscribe("e2e.*.rt", got.handler());
    REQUIRE_MESSAGE(sub.has_value(), (sub ? "" : sub.error().to_string()));
    CHECK(sub->sid != 0);

    constexpr int n = 500;
    const header hs[] = {{"trace", "t-1"}, {"bin", std::string_view("\0\xff", 2)}};
    for (int i = 0; i < n; ++i) {
      const std::string key = "key-" + std::to_string(i % 7);
      const std::string payload = "payload-" + std::to_string(i);
      publish_options po;
      po.key = key;
      po.headers = hs;
      REQUIRE(pub_conn->publish("e2e." + std::to_string(i % 3) + ".rt", payload, po));
    }
    CHECK(pub_conn->publish("e2e.other", "not matched"));
    REQUIRE(pub_conn->flush());
    REQUIRE(got.wait_for(n));

    const auto msgs = got.messages();
    CHECK(msgs.size() == n);
    std::map<std::uint32_t, std::uint64_t> last_seq;  // per owner core
    std::map<std::string, int> last_index;            // per key: publish order kept
    for (const message& m : msgs) {
      CHECK(m.sid == sub->sid);
      CHECK(m.owner_core < 2);
      CHECK(m.seq > last_seq[m.owner_core]);
      last_seq[m.owner_core] = m.seq;
      REQUIRE(m.payload.starts_with("payload-"));
      const int i = std::stoi(m.payload.substr(8));
      CHECK(m.key == "key-" + std::to_string(i % 7));
      CHECK(m.subject == "e2e." + std::to_string(i % 3) + ".rt");
      CHECK(m.reply_to.empty());
      REQUIRE(m.headers.size() == 2);
      CHECK(m.headers[0] == received_header{"trace", "t-1"});
      CHECK(m.headers[1] == received_header{"bin", std::string("\0\xff", 2)});
      auto [it, fresh] = last_index.try_emplace(m.key, i);
      if (!fresh) {
        CHECK(i > it->second);
        it->second = i;
      }
    }

    // After unsubscribe returns, nothing more arrives.
    REQUIRE(sub_conn->unsubscribe(*sub));
    auto delivered = pub_conn->publish_ack("e2e.0.rt", "late");
    REQUIRE(delivered);
    CHECK(*delivered == 0);
    CHECK(sub_conn->flush());
    CHECK(got.messages().size() == n);
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: publish_ack returns the delivered count") {
  auto d = start_daemon();
  {
    auto a = must_connect(d->url());
    auto b = must_connect(d->url());
    auto pub = must_connect(d->url());
    collector ca, cb;

    auto none = pub->publish_ack("acks.x", "p");
    REQUIRE(none);
    CHECK(*none == 0);

    REQUIRE(a->subscribe("acks.x", ca.handler()));
    REQUIRE(b->subscribe("acks.*", cb.handler()));
    REQUIRE(b->subscribe("acks.>", cb.handler()));
    publish_options keyed;
    keyed.key = "k";
    auto three = pub->publish_ack("acks.x", "p", keyed);
    REQUIRE(three);
    CHECK(*three == 3);

    // Pipelined: many acks in flight, each answered once.
    constexpr int n = 200;
    std::atomic<int> ok{0}, total{0};
    std::promise<void> all;
    for (int i = 0; i < n; ++i) {
      const std::string payload = std::to_string(i);
      pub->publish_ack_async("acks.x", payload, {}, [&](outcome<std::uint32_t> r) {
        if (r && *r == 3) ok.fetch_add(1);
        if (total.fetch_add(1) + 1 == n) all.set_value();
      });
    }
    REQUIRE(all.get_future().wait_for(5s) == std::future_status::ready);
    CHECK(ok.load() == n);
    CHECK(ca.wait_for(n + 1));
    CHECK(cb.wait_for(2 * (n + 1)));

    auto invalid = pub->publish_ack("acks.*", "p");
    REQUIRE_FALSE(invalid);
    CHECK((invalid.error().code == keyway::proto::errc::invalid_subject));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: request and reply") {
  auto d = start_daemon();
  {
    auto responder = must_connect(d->url());
    auto requester = must_connect(d->url());
    connection* r = responder.get();
    auto sub = responder->subscribe("svc.echo", [r](const message& m) {
      if (!m.reply_to.empty()) (void)r->publish(m.reply_to, "re:" + m.payload);
    });
    REQUIRE(sub);

    request_options ro;
    ro.key = "user-1";
    auto reply = requester->request("svc.echo", "hello", 3s, ro);
    REQUIRE_MESSAGE(reply.has_value(), (reply ? "" : reply.error().to_string()));
    CHECK(reply->payload == "re:hello");
    CHECK(reply->subject.starts_with("_INBOX."));

    // Many concurrent requests, each gets its own answer.
    constexpr int n = 100;
    std::mutex mu;
    std::set<std::string> answers;
    std::atomic<int> done{0}, failures{0};
    std::promise<void> all;
    for (int i = 0; i < n; ++i) {
      requester->request_async("svc.echo", std::to_string(i), 3s, {}, [&](outcome<message> m) {
        if (m) {
          std::lock_guard lock(mu);
          answers.insert(m->payload);
        } else {
          failures.fetch_add(1);
        }
        if (done.fetch_add(1) + 1 == n) all.set_value();
      });
    }
    REQUIRE(all.get_future().wait_for(10s) == std::future_status::ready);
    CHECK(failures.load() == 0);
    CHECK(answers.size() == n);
    CHECK(answers.count("re:42") == 1);
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: request times out when nobody answers") {
  auto d = start_daemon();
  {
    auto silent = must_connect(d->url());
    auto requester = must_connect(d->url());
    collector got;
    REQUIRE(silent->subscribe("svc.silent", got.handler()));

    const auto start = std::chrono::steady_clock::now();
    auto reply = requester->request("svc.silent", "anyone?", 300ms);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(reply);
    CHECK((reply.error().code == errc::timeout));
    CHECK(reply.error().message.find("svc.silent") != std::string::npos);
    CHECK(elapsed >= 300ms);
    CHECK(elapsed < 3s);
    // The request did reach the subscriber, with a reply_to in the inbox.
    REQUIRE(got.wait_for(1));
    CHECK(got.messages()[0].reply_to.starts_with("_INBOX."));

    // The connection is still good afterwards.
    CHECK(requester->flush());
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: request without subscribers fails with no_responders") {
  auto d = start_daemon();
  {
    auto requester = must_connect(d->url());
    const auto start = std::chrono::steady_clock::now();
    auto reply = requester->request("svc.nobody", "x", 5s);
    REQUIRE_FALSE(reply);
    CHECK((reply.error().code == keyway::proto::errc::no_responders));
    CHECK(reply.error().from_server);
    CHECK(std::chrono::steady_clock::now() - start < 2s);  // at once, not at the timeout
    request_options keyed;
    keyed.key = "k";
    auto again = requester->request("svc.nobody", "x", 5s, keyed);
    REQUIRE_FALSE(again);
    CHECK((again.error().code == keyway::proto::errc::no_responders));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: a queue group of two receives each message exactly once") {
  auto d = start_daemon();
  {
    auto m1 = must_connect(d->url());
    auto m2 = must_connect(d->url());
    auto other = must_connect(d->url());
    auto pub = must_connect(d->url());
    collector c1, c2, all;
    REQUIRE(m1->subscribe("work.>", c1.handler(), {.queue_group = "workers"}));
    REQUIRE(m2->subscribe("work.>", c2.handler(), {.queue_group = "workers"}));
    REQUIRE(other->subscribe("work.>", all.handler()));  // not in the group: sees everything

    constexpr int n = 400;
    std::uint64_t delivered = 0;
    for (int i = 0; i < n; ++i) {
      const std::string key = "key-" + std::to_string(i % 50);
      publish_options po;
      po.key = key;
      auto r = pub->publish_ack("work.item", std::to_string(i), po);
      REQUIRE(r);
      delivered += *r;
    }
    CHECK(delivered == 2 * n);  // one group member + the plain subscriber
    REQUIRE(all.wait_for(n));
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (c1.messages().size() + c2.messages().size() < n &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    CHECK(m1->flush());
    CHECK(m2->flush());

    std::multiset<std::string> seen;
    std::map<std::string, int> member_of_key;
    int i = 0;
    for (collector* c : {&c1, &c2}) {
      ++i;
      for (const message& m : c->messages()) {
        seen.insert(m.payload);
        auto [it, fresh] = member_of_key.try_emplace(m.key, i);
        CHECK(it->second == i);  // key affinity: a key always goes to the same member
      }
    }
    CHECK(seen.size() == n);
    for (int k = 0; k < n; ++k) CHECK(seen.count(std::to_string(k)) == 1);
    CHECK_FALSE(c1.messages().empty());
    CHECK_FALSE(c2.messages().empty());
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: unix socket URL") {
  const std::string path = temp_socket_path();
  auto d = start_daemon({"--listen", "unix://" + path});
  REQUIRE(d->addresses().size() == 2);
  CHECK(d->addresses()[1] == "unix://" + path);
  {
    auto sub_conn = must_connect("unix://" + path);
    auto pub_conn = must_connect("unix://" + path);
    auto tcp_conn = must_connect(d->url());
    collector got;
    REQUIRE(sub_conn->subscribe("unix.>", got.handler()));
    REQUIRE(pub_conn->publish("unix.a", "over unix"));
    REQUIRE(tcp_conn->publish("unix.b", "over tcp"));
    REQUIRE(got.wait_for(2));
    std::set<std::string> payloads;
    for (const auto& m : got.messages()) payloads.insert(m.payload);
    CHECK(payloads == std::set<std::string>{"over unix", "over tcp"});
  }
  stop_daemon(*d);
  CHECK(::access(path.c_str(), F_OK) != 0);  // the daemon removed its socket
}

TEST_CASE("client e2e: a refused subscribe carries the server's error") {
  auto d = start_daemon({"--max-subscriptions", "1"});
  {
    auto c = must_connect(d->url());
    collector got;
    REQUIRE(c->subscribe("one.x", got.handler()));
    auto second = c->subscribe("two.x", got.handler());
    REQUIRE_FALSE(second);
    CHECK((second.error().code == keyway::proto::errc::too_many_subscriptions));
    CHECK(second.error().from_server);
    CHECK(second.error().message.find("max_subscriptions") != std::string::npos);
    CHECK(c->is_open());  // not fatal

    auto bad = c->subscribe("a.>.b", got.handler());
    REQUIRE_FALSE(bad);
    CHECK((bad.error().code == keyway::proto::errc::invalid_subject));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: blocking calls from a callback return would_block") {
  auto d = start_daemon();
  {
    auto c = must_connect(d->url());
    std::promise<std::error_code> seen;
    connection* self = c.get();
    REQUIRE(c->subscribe("cb.x", [&, self](const message&) {
      auto r = self->publish_ack("cb.y", "from callback");
      seen.set_value(r ? std::error_code{} : r.error().code);
    }));
    REQUIRE(c->publish("cb.x", "go"));
    auto f = seen.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    CHECK((f.get() == errc::would_block));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: close fails pending calls with closed") {
  auto d = start_daemon();
  {
    auto silent = must_connect(d->url());
    collector got;
    REQUIRE(silent->subscribe("svc.never", got.handler()));
    auto c = must_connect(d->url());
    std::promise<outcome<message>> result;
    c->request_async("svc.never", "x", 30s, {},
                     [&](outcome<message> m) { result.set_value(std::move(m)); });
    REQUIRE(got.wait_for(1));
    const auto start = std::chrono::steady_clock::now();
    c->close();
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    auto f = result.get_future();
    REQUIRE(f.wait_for(1s) == std::future_status::ready);
    auto r = f.get();
    REQUIRE_FALSE(r);
    CHECK((r.error().code == errc::closed));
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: a slow consumer hears the server's fatal error") {
  auto d = start_daemon({"--max-pending-bytes", "65536", "--slow-consumer", "disconnect"});
  {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<error> fatal;
    std::promise<void> release;
    auto released = release.get_future().share();
    connect_options o;
    o.reconnect.enabled = false;  // the lost link closes the connection
    o.on_closed = [&](const error& e) {
      std::lock_guard lock(mu);
      fatal = e;
      cv.notify_all();
    };
    auto slow = must_connect(d->url(), o);
    std::atomic<int> received{0};
    REQUIRE(slow->subscribe("flood.x", [&](const message&) {
      if (received.fetch_add(1) == 0) released.wait_for(10s);  // stall the IO thread
    }));

    auto pub = must_connect(d->url());
    const std::string payload(32 * 1024, 'f');
    for (int i = 0; i < 1000 && !d->wait_log("slow consumer", 0ms); ++i)
      REQUIRE(pub->publish("flood.x", payload));
    CHECK(pub->flush());
    REQUIRE(d->wait_log("slow consumer", 10s));
    release.set_value();

    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return fatal.has_value(); }));
    CHECK(fatal->code == keyway::proto::errc::slow_consumer);
    CHECK(fatal->from_server);
    CHECK(fatal->message.find("max_pending_bytes") != std::string::npos);
    lock.unlock();
    CHECK_FALSE(slow->is_open());
    auto after = slow->publish("flood.x", "x");
    REQUIRE_FALSE(after);
    CHECK((after.error().code == errc::closed));
    CHECK(after.error().message.find("slow_consumer") != std::string::npos);
  }
  stop_daemon(*d);
}

TEST_CASE("client e2e: concurrent publishers under backpressure keep per-key order") {
  auto d = start_daemon();
  {
    auto sub_conn = must_connect(d->url());
    collector got;
    REQUIRE(sub_conn->subscribe("mt.>", got.handler()));
    connect_options tight;
    tight.max_pending_bytes = 4096;  // publish() blocks often
    auto pub = must_connect(d->url(), tight);

    // 2000 messages in all: fewer than a mesh ring holds (4096), so the
    // reported keywayd crash on credit exhaustion cannot be reached.
    constexpr int threads = 4, per_thread = 500;
    std::vector<std::thread> pool;
    std::atomic<int> failures{0};
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        publish_options po;
        const std::string key = "thread-" + std::to_string(t);
        po.key = key;
        for (int i = 0; i < per_thread; ++i) {
          if (!pub->publish("mt.x", std::to_string(i), po)) failures.fetch_add(1);
        }
      });
    }
    for (auto& th : pool) th.join();
    CHECK(failures.load() == 0);
    REQUIRE(pub->flush());
    REQUIRE(got.wait_for(threads * per_thread, 10s));

    std::map<std::string, int> next;  // per key, the next index expected
    for (const message& m : got.messages()) {
      const int i = std::stoi(m.payload);
      CHECK(i == next[m.key]);
      next[m.key] = i + 1;
    }
    CHECK(next.size() == threads);
    for (const auto& [key, n] : next) CHECK(n == per_thread);
  }
  stop_daemon(*d);
}

TEST_CASE(
    "client e2e: plain publishes go out in publishBatch frames, in order with every other frame") {
  auto d = start_daemon();
  {
    auto sub_conn = must_connect(d->url());
    collector got;
    REQUIRE(sub_conn->subscribe("cb.*", got.handler()));
    auto pub = must_connect(d->url());
    REQUIRE(pub->info().protocol_version == 2);

    // One key throughout: the subscriber must see exactly the publish order,
    // across batches, subject changes, a publish with headers and an acked one.
    publish_options po;
    po.key = "k";
    publish_options with_headers = po;
    const header hs[] = {{"h", "v"}};
    with_headers.headers = hs;
    int next = 0;
    std::vector<std::string> subjects;
    const auto plain = [&](const std::string& subject, int n) {
      for (int i = 0; i < n; ++i, ++next) {
        REQUIRE(pub->publish(subject, std::to_string(next), po));
        subjects.push_back(subject);
      }
    };
    plain("cb.a", 100);
    REQUIRE(pub->publish("cb.a", std::to_string(next++), with_headers));
    subjects.push_back("cb.a");
    plain("cb.b", 100);
    auto acked = pub->publish_ack("cb.a", std::to_string(next++), po);
    REQUIRE(acked);
    CHECK(*acked == 1);
    subjects.push_back("cb.a");
    plain("cb.a", 100);
    REQUIRE(pub->flush());
    const std::size_t total = static_cast<std::size_t>(next);
    REQUIRE(got.wait_for(total));

    const auto msgs = got.messages();
    REQUIRE(msgs.size() == total);
    for (std::size_t i = 0; i < total; ++i) {
      CHECK(msgs[i].payload == std::to_string(i));
      CHECK(msgs[i].subject == subjects[i]);
      CHECK(msgs[i].headers.size() == (i == 100 ? 1u : 0u));
    }

    // Fewer frames than publishes reached the daemon: the plain ones were
    // batched (without batches it would be every publish plus the hellos,
    // the subscribe and the flushes' pings).
    const auto metrics = keyway::test::http_get(d->admin_port(), "/metrics").body;
    double frames = 0;
    for (std::size_t at = metrics.find("\nkeyway_frames_received_total{"); at != std::string::npos;
         at = metrics.find("\nkeyway_frames_received_total{", at + 1)) {
      frames += std::stod(metrics.substr(metrics.find("} ", at) + 2));
    }
    INFO(metrics);
    CHECK(frames > 0);
    CHECK(frames < static_cast<double>(total));
  }
  stop_daemon(*d);
}
