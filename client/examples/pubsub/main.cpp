// pubsub: subscribes to orders.>, publishes 10 keyed messages, flushes, and
// prints what arrived. Exit 0 if every message arrived, else 1.
// Usage: pubsub [URL]   (default: $KEYWAY_URL, else tcp://127.0.0.1:7400)
#include <keyway/client.hpp>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace kc = keyway::client;

static int fail(const char* what, const kc::error& e) {
  std::fprintf(stderr, "pubsub: %s failed: %s\n", what, e.to_string().c_str());
  return 1;
}

int main(int argc, char** argv) {
  const char* env = std::getenv("KEYWAY_URL");
  const std::string url = argc > 1 ? argv[1] : env != nullptr ? env : "tcp://127.0.0.1:7400";
  auto conn = kc::connect(url);
  if (!conn) return fail("connect", conn.error());
  kc::connection& c = **conn;

  // The handler runs on the connection's IO thread; the message it gets is
  // reused for the next delivery, so keep a copy.
  std::mutex mutex;
  std::vector<kc::message> received;
  auto sub = c.subscribe("orders.>", [&](const kc::message& m) {
    std::lock_guard lock(mutex);
    received.push_back(m);
  });
  if (!sub) return fail("subscribe", sub.error());

  constexpr std::size_t count = 10;
  for (std::size_t i = 0; i < count; ++i) {
    const std::string key = "customer-" + std::to_string(i % 3);  // each key keeps its order
    kc::publish_options options;
    options.key = key;
    if (auto r = c.publish("orders.eu", "order " + std::to_string(i), options); !r)
      return fail("publish", r.error());
  }
  // Returns once the server routed every publish and this connection read
  // every delivery sent before the answer: all 10 have reached the handler.
  if (auto r = c.flush(); !r) return fail("flush", r.error());

  std::lock_guard lock(mutex);
  for (const auto& m : received)
    std::printf("[%u/%llu] %s %s: %s\n", m.owner_core, static_cast<unsigned long long>(m.seq),
                m.subject.c_str(), m.key.c_str(), m.payload.c_str());
  std::printf("received %zu of %zu messages from %s\n", received.size(), count, url.c_str());
  return received.size() == count ? 0 : 1;
}
