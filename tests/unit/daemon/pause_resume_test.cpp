// Credit pauses and resumes, over and over: keywayd's server in this process
// with mesh rings of 8 slots, so that publishers run out of credit every few
// messages. Each resume reads on and usually pauses again inside
// router::resume_paused, the path that once pushed onto the list it was
// walking (a heap-use-after-free under ASan, a crash in release builds).
// The test checks that nothing is lost and every key keeps its order.
#include <doctest/doctest.h>

#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/router.hpp"
#include "daemon/server.hpp"
#include "tests/support/raw_client.hpp"

namespace keyway::daemon {
namespace {

using namespace std::chrono_literals;
using itest::message_frame;
using itest::open_client;
using itest::raw_client;

constexpr int publishers = 4;
constexpr int per_publisher = 4000;
constexpr int keys = 64;
constexpr std::size_t total = std::size_t{publishers} * per_publisher;

std::uint64_t paused_reads(const server& s) {
  std::uint64_t n = 0;
  for (std::uint32_t w = 0; w < s.context().workers; ++w) n += s.context().stats[w]->paused_reads();
  return n;
}

}  // namespace

TEST_CASE(
    "pause/resume: 4 publishers on 8-slot mesh rings pause again and again and lose nothing") {
  server_options o;
  o.listen = {parse_listen_url("tcp://127.0.0.1:0")};
  o.admin.reset();
  o.workers = 2;
  o.ring_capacity = 8;
  server s(o);
  s.start();
  const std::string url = s.addresses().front();

  // Two subscribers and four publishers: connections go to the workers in
  // turn, so both workers have publishers and subscribers.
  std::vector<raw_client> subs;
  for (int i = 0; i < 2; ++i) {
    subs.push_back(open_client(url, "sub-" + std::to_string(i)));
    subs.back().subscribe(static_cast<std::uint32_t>(i + 1), "pr.>");
  }
  std::vector<raw_client> pubs;
  for (int p = 0; p < publishers; ++p) pubs.push_back(open_client(url, "pub-" + std::to_string(p)));

  std::mutex error_mutex;
  std::vector<std::string> errors;
  auto note_error = [&](const std::exception& e) {
    std::lock_guard lock(error_mutex);
    errors.emplace_back(e.what());
  };

  std::vector<std::vector<message_frame>> got(subs.size());
  std::vector<std::thread> threads;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (std::size_t i = 0; i < subs.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        while (got[i].size() < total && std::chrono::steady_clock::now() < deadline &&
               !subs[i].eof())
          for (auto& m : subs[i].collect(total - got[i].size(), 200ms))
            got[i].push_back(std::move(m));
      } catch (const std::exception& e) {
        note_error(e);
      }
    });
  }
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      try {
        raw_client& c = pubs[static_cast<std::size_t>(p)];
        for (int i = 0; i < per_publisher; ++i) {
          const std::string key = "key-" + std::to_string(i % keys);
          const std::string payload = std::to_string(p) + ":" + std::to_string(i);
          proto::publish_fields f;
          f.subject = "pr.data";
          f.key = std::as_bytes(std::span(key.data(), key.size()));
          f.payload = std::as_bytes(std::span(payload.data(), payload.size()));
          c.queue_publish(f);
          if (c.queued_bytes() > 16 * 1024) c.flush(30s);
        }
        c.flush(30s);
        c.ping(30s);
      } catch (const std::exception& e) {
        note_error(e);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors.empty());
  for (const auto& e : errors) MESSAGE(e);

  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK(got[i].size() == total);
    // Each publisher's messages for one key arrive in the order it sent them.
    std::map<std::pair<int, std::string>, int> last;
    std::size_t out_of_order = 0;
    for (const message_frame& m : got[i]) {
      const auto colon = m.payload.find(':');
      REQUIRE(colon != std::string::npos);
      const int p = std::stoi(m.payload.substr(0, colon));
      const int n = std::stoi(m.payload.substr(colon + 1));
      auto [it, fresh] = last.try_emplace({p, m.key}, n);
      if (!fresh) {
        if (n <= it->second) ++out_of_order;
        it->second = n;
      }
    }
    CHECK(out_of_order == 0);
  }
  // The path under test ran: publishers ran out of credit many times.
  CHECK(paused_reads(s) > 100);
  CHECK(s.drain_and_stop());
}

}  // namespace keyway::daemon
