// Client helpers of the cluster tests (keyway::client against the nodes of a
// keyway_cluster): connect without reconnecting, collect deliveries from the
// IO thread, wait for them with a deadline. Test-only; doctest assertions
// on the test's thread.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <keyway/client.hpp>

namespace keyway::ctest {

namespace kc = keyway::client;
using namespace std::chrono_literals;

/// Connects to `url` with reconnect off: a lost link closes the connection
/// (and fails the test's next call) instead of moving to another node
/// unnoticed. Acks, flushes and drains wait up to 10 s.
inline std::unique_ptr<kc::connection> must_connect(const std::string& url,
                                                    const std::string& name) {
  kc::connect_options o;
  o.client_name = name;
  o.reconnect.enabled = false;
  o.op_timeout = 10s;
  auto c = kc::connect(url, std::move(o));
  REQUIRE_MESSAGE(c.has_value(),
                  "connect to " << url << ": " << (c ? std::string() : c.error().to_string()));
  return std::move(*c);
}

/// Keeps a copy of every delivery of a callback subscription, in arrival
/// order; waits for a condition on them with a deadline.
class collector {
 public:
  kc::connection::message_handler handler() {
    return [this](const kc::message& m) {
      std::lock_guard lock(mu_);
      got_.push_back(m);
      cv_.notify_all();
    };
  }
  /// Waits until `done(messages so far)` holds; false after `timeout`.
  bool wait_until(const std::function<bool(const std::vector<kc::message>&)>& done,
                  std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done(got_); });
  }
  std::vector<kc::message> messages() const {
    std::lock_guard lock(mu_);
    return got_;
  }
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return got_.size();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<kc::message> got_;
};

/// Subscribes `c` to `pattern` (queue group `group` if not empty) with a
/// collector's handler; REQUIREs the ack.
inline kc::subscription must_subscribe(kc::connection& c, const std::string& pattern,
                                       collector& into, const std::string& group = {}) {
  kc::subscribe_options o;
  o.queue_group = group;
  auto s = c.subscribe(pattern, into.handler(), o);
  REQUIRE_MESSAGE(s.has_value(),
                  "subscribe " << pattern << ": " << (s ? std::string() : s.error().to_string()));
  return *s;
}

/// Fire-and-forget publish with a key; REQUIREs that it was queued.
inline void must_publish(kc::connection& c, const std::string& subject, const std::string& key,
                         const std::string& payload) {
  kc::publish_options o;
  o.key = key;
  auto r = c.publish(subject, payload, o);
  REQUIRE_MESSAGE(r.has_value(), "publish " << subject << " key " << key << ": "
                                            << (r ? std::string() : r.error().to_string()));
}

}  // namespace keyway::ctest
