// queue_worker: two workers (two connections) in the queue group "workers" on
// jobs.>, and a publisher that sends every key several times. Each message
// goes to one member of the group, and queue groups are key-affine: the same
// key always goes to the same worker. Prints which worker got which key.
// Exit 0 if every message arrived and every key stayed with one worker.
// Usage: queue_worker [URL]   (default: $KEYWAY_URL, else tcp://127.0.0.1:7400)
#include <keyway/client.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace kc = keyway::client;
using namespace std::chrono_literals;

static int fail(const char* what, const kc::error& e) {
  std::fprintf(stderr, "queue_worker: %s failed: %s\n", what, e.to_string().c_str());
  return 1;
}

int main(int argc, char** argv) {
  const char* env = std::getenv("KEYWAY_URL");
  const std::string url = argc > 1 ? argv[1] : env != nullptr ? env : "tcp://127.0.0.1:7400";

  // What the workers saw, updated from their IO threads.
  std::mutex mutex;
  std::condition_variable arrived;
  std::map<std::string, std::set<std::string>> workers_of;  // key -> workers that got it
  std::map<std::string, int> messages_of;                   // key -> messages
  int received = 0;

  std::vector<std::unique_ptr<kc::connection>> workers;
  for (const char* name : {"A", "B"}) {
    auto worker = kc::connect(url);
    if (!worker) return fail("connect", worker.error());
    kc::subscribe_options options;
    options.queue_group = "workers";
    auto sub = (*worker)->subscribe(
        "jobs.>",
        [&, name](const kc::message& m) {
          std::lock_guard lock(mutex);
          workers_of[m.key].insert(name);
          ++messages_of[m.key];
          ++received;
          arrived.notify_all();
        },
        options);
    if (!sub) return fail("subscribe", sub.error());
    workers.push_back(std::move(*worker));
  }

  auto publisher = kc::connect(url);
  if (!publisher) return fail("connect", publisher.error());
  constexpr int keys = 8, rounds = 4;
  for (int round = 0; round < rounds; ++round) {
    for (int k = 0; k < keys; ++k) {
      const std::string key = "user-" + std::to_string(k);
      kc::publish_options options;
      options.key = key;
      if (auto r = (*publisher)->publish("jobs.resize", "job " + std::to_string(round), options);
          !r)
        return fail("publish", r.error());
    }
  }
  if (auto r = (*publisher)->flush(); !r) return fail("flush", r.error());

  // The deliveries travel on the workers' own connections: wait for them.
  std::unique_lock lock(mutex);
  arrived.wait_for(lock, 5s, [&] { return received == keys * rounds; });
  bool affine = true;
  for (const auto& [key, names] : workers_of) {
    std::string who;
    for (const auto& n : names) who += (who.empty() ? "" : " and ") + n;
    std::printf("%s -> worker %s (%d messages)\n", key.c_str(), who.c_str(), messages_of[key]);
    affine = affine && names.size() == 1;
  }
  std::printf("received %d of %d messages; %s\n", received, keys * rounds,
              affine ? "each key stayed with one worker" : "a key went to both workers");
  return received == keys * rounds && affine ? 0 : 1;
}
