// Credit backpressure (DESIGN.md "Credits and backpressure"): publishers that
// outrun an owner core are paused, not dropped and not crashed. Two publisher
// connections on different workers, each sending to keys owned by both
// cores, fill the mesh rings between the workers.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"

namespace keyway::itest {

TEST_CASE("backpressure: publishers that outrun the mesh are paused and lose nothing") {
  constexpr int publishers = 2;
  constexpr int per_publisher = 20000;
  constexpr std::size_t total = std::size_t{publishers} * per_publisher;
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "subscriber");
  sub.subscribe(1, "bp.>");
  // Connections are spread over the workers, so the publishers sit on both.
  std::vector<raw_client> pubs;
  for (int p = 0; p < publishers; ++p)
    pubs.push_back(open_client(d.url(), "pub-" + std::to_string(p)));

  std::vector<std::string> errors(publishers);
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      raw_client& c = pubs[static_cast<std::size_t>(p)];
      try {
        for (int i = 0; i < per_publisher; ++i) {
          const std::string key = "key-" + std::to_string(i % 1000);
          const std::string payload = std::to_string(p) + ":" + std::to_string(i);
          proto::publish_fields f;
          f.subject = "bp.data";
          f.key = as_bytes(key);
          f.payload = as_bytes(payload);
          c.queue_publish(f);
          if (c.queued_bytes() > 64 * 1024) c.flush(30s);
        }
        c.flush(30s);
        c.ping(30s);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(p)] = e.what();
      }
    });
  }
  std::set<std::string> got;
  std::size_t deliveries = 0;
  const auto deadline = steady::now() + 60s;
  while (deliveries < total && steady::now() < deadline && !sub.eof()) {
    for (const auto& m : sub.collect(total - deliveries, 200ms)) {
      ++deliveries;
      got.insert(m.payload);
    }
  }
  for (auto& t : threads) t.join();

  INFO("daemon log:\n" << d.log());
  for (const auto& e : errors) CHECK_MESSAGE(e.empty(), "publisher failed: " << e);
  CHECK_FALSE(sub.eof());
  CHECK(deliveries == total);
  CHECK(got.size() == total);
  // Nothing beyond `total`: sentinels from each publisher on every key it
  // used come after any other delivery of its publishes.
  {
    std::vector<std::string> fence_keys;
    for (int k = 0; k < 1000; ++k) fence_keys.push_back("key-" + std::to_string(k));
    sentinels fence;
    for (auto& c : pubs) fence.publish(c, "bp.data", fence_keys);
    const auto late = fence.await(sub, 30s);
    CHECK_MESSAGE(late.empty(), "late: " << describe_deliveries(late));
  }
  // The daemon is alive and exits cleanly.
  const auto code = d.stop();
  REQUIRE(code.has_value());
  CHECK_MESSAGE(*code == 0,
                "keywayd exit status " << *code << " (128 + signal when killed by one)");
}

}  // namespace keyway::itest
