// block_pool against operator new/delete (glibc malloc) in the pattern keywayd
// has with two workers: thread A allocates a 128-byte block, writes it and
// hands its address over an SPSC ring; thread B reads it and frees it. A and B
// are pinned to different CPUs when there are two.
//
// Figure: ns per block, wall time from "go" until B has freed the last one.
// Each subject runs 5 rounds alternating with its baseline; the median counts.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "bench/report.hpp"
#include "core/block_pool.hpp"
#include "core/spsc_ring.hpp"
#include "core/worker.hpp"

namespace keyway::bench {
namespace {

constexpr std::size_t block_bytes = 128;

void pin(const std::vector<int>& cpus, std::size_t k) {
  if (cpus.size() > 1) core::pin_current_thread(cpus[k % cpus.size()]);
}

/// One round: blocks from `pool`, or from operator new when it is null.
double timed_round(core::block_pool* pool, std::uint64_t count, const std::vector<int>& cpus) {
  core::spsc_ring<void*> ring(1024);
  std::atomic<bool> go{false};
  std::chrono::steady_clock::time_point end;
  std::thread consumer([&] {
    pin(cpus, 1);
    while (!go.load(std::memory_order_acquire)) {
    }
    std::uint64_t sum = 0;
    for (std::uint64_t seen = 0; seen < count;) {
      void* p;
      if (!ring.try_pop(p)) continue;
      sum += *static_cast<unsigned char*>(p);
      if (pool != nullptr)
        core::block_pool::deallocate(p);
      else
        ::operator delete(p);
      ++seen;
    }
    end = std::chrono::steady_clock::now();
    if (sum == 42) std::abort();  // keeps the reads; every block holds 7s
  });
  std::thread producer([&] {
    pin(cpus, 0);
    if (pool != nullptr) pool->bind_to_this_thread();
    while (!go.load(std::memory_order_acquire)) {
    }
    for (std::uint64_t i = 0; i < count; ++i) {
      void* p = pool != nullptr ? pool->allocate(block_bytes) : ::operator new(block_bytes);
      std::memset(p, 7, block_bytes);
      while (!ring.try_push(p)) {
      }
    }
  });
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  producer.join();
  consumer.join();
  return std::chrono::duration<double, std::nano>(end - start).count() / static_cast<double>(count);
}

}  // namespace

void run_pool_benches(const options& opt, report& out) {
  const std::string name = "block_pool 128B, allocated on one thread, freed on another";
  if (!selected(name)) return;
  const std::uint64_t count = opt.messages ? opt.messages : (opt.quick ? 1'000'000 : 5'000'000);
  const std::vector<int> cpus = core::allowed_cpus();
  row r = compare_alternating(
      name,
      [&] {
        core::block_pool pool;  // fresh each round: its first blocks come from the system too
        return timed_round(&pool, count, cpus);
      },
      "operator new/delete (glibc malloc), same pattern",
      [&] { return timed_round(nullptr, count, cpus); }, 5);
  r.extra["messages"] = static_cast<double>(count);
  out.add(std::move(r));
}

}  // namespace keyway::bench
