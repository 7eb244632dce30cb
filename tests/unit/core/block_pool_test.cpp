// block_pool: size classes, reuse, the cache limit, and blocks freed on another
// thread coming back to their owner (under TSan in the concurrency label).
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "core/block_pool.hpp"
#include "core/spsc_ring.hpp"
#include "tests/unit/test_seed.hpp"

using keyway::core::block_pool;

TEST_CASE("block_pool reuses a freed block of the same class and aligns to 16") {
  block_pool pool;
  pool.bind_to_this_thread();
  void* a = pool.allocate(100);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 16 == 0);
  std::memset(a, 0xab, 100);
  CHECK(pool.system_allocations() == 1);
  block_pool::deallocate(a);
  CHECK(pool.cached_blocks() == 1);
  // 100 + 16 header and 112 + 16 both fall in the 128-byte class.
  void* b = pool.allocate(112);
  CHECK(b == a);
  CHECK(pool.system_allocations() == 1);
  CHECK(pool.cached_blocks() == 0);
  // Another class does not take it.
  block_pool::deallocate(b);
  void* c = pool.allocate(113);
  CHECK(c != b);
  CHECK(pool.system_allocations() == 2);
  block_pool::deallocate(c);
  CHECK(pool.cached_blocks() == 2);
}

TEST_CASE("block_pool starts every pooled block on a cache line, so that blocks share no line") {
  block_pool pool;
  pool.bind_to_this_thread();
  std::vector<void*> blocks;
  for (std::size_t bytes : {1u, 48u, 100u, 200u, 1000u, 4000u, 4080u})
    for (int i = 0; i < 8; ++i) blocks.push_back(pool.allocate(bytes));
  for (void* p : blocks)
    CHECK(reinterpret_cast<std::uintptr_t>(p) % keyway::core::cache_line ==
          block_pool::header_bytes);
  for (void* p : blocks) block_pool::deallocate(p);
  // Reused blocks keep their alignment.
  void* again = pool.allocate(100);
  CHECK(reinterpret_cast<std::uintptr_t>(again) % keyway::core::cache_line ==
        block_pool::header_bytes);
  block_pool::deallocate(again);
}

TEST_CASE("block_pool sends blocks above its largest class to the system") {
  block_pool pool;
  pool.bind_to_this_thread();
  void* big = pool.allocate(block_pool::max_block);  // + header: one past the largest class
  std::memset(big, 1, block_pool::max_block);
  block_pool::deallocate(big);
  CHECK(pool.cached_blocks() == 0);
  void* fits = pool.allocate(block_pool::max_block - block_pool::header_bytes);
  block_pool::deallocate(fits);
  CHECK(pool.cached_blocks() == 1);
  block_pool::deallocate(nullptr);  // a no-op, like operator delete
}

TEST_CASE("block_pool caches at most cache_bytes per class") {
  block_pool pool(1024);  // 16 blocks of 64 bytes, 2 of 512
  pool.bind_to_this_thread();
  std::vector<void*> small, large;
  for (int i = 0; i < 40; ++i) small.push_back(pool.allocate(8));
  for (int i = 0; i < 5; ++i) large.push_back(pool.allocate(400));
  for (void* p : small) block_pool::deallocate(p);
  for (void* p : large) block_pool::deallocate(p);
  CHECK(pool.cached_blocks() == 16 + 2);

  // Freed on another thread, they wait on the remote stack; taking it back
  // keeps the limit too.
  std::vector<void*> held;
  for (int i = 0; i < 16; ++i) held.push_back(pool.allocate(8));  // empties the 64-byte list
  small.clear();
  for (int i = 0; i < 40; ++i) small.push_back(pool.allocate(8));
  std::thread([&] {
    for (void* p : small) block_pool::deallocate(p);
  }).join();
  CHECK(pool.cached_blocks() == 40 + 2);
  void* again = pool.allocate(8);  // refill: keeps 16, frees 24, hands out one
  CHECK(pool.cached_blocks() == 15 + 2);
  block_pool::deallocate(again);
  for (void* p : held) block_pool::deallocate(p);
}

TEST_CASE("block_pool: blocks freed on another thread return to their owner intact") {
  // The owner fills each block with a pattern derived from its sequence
  // number and hands it over a ring; the other thread checks the pattern and
  // frees the block. If a block were reused while still in use, or a free were
  // lost or repeated, the pattern check or the final count would fail.
  const auto seed = keyway::test::seed();
  std::mt19937_64 rng(seed);
  constexpr std::uint64_t total = 200'000;
  keyway::core::spsc_ring<std::pair<std::uint64_t, void*>> ring(1024);
  std::vector<std::size_t> sizes(total);
  for (auto& s : sizes) s = 8 + rng() % 600;

  block_pool pool;
  std::atomic<std::uint64_t> bad{0};
  std::atomic<bool> done{false};
  std::thread consumer([&] {
    std::uint64_t seen = 0;
    std::pair<std::uint64_t, void*> item;
    while (seen < total) {
      if (!ring.try_pop(item)) {
        std::this_thread::yield();
        continue;
      }
      const auto [seq, p] = item;
      const auto* bytes = static_cast<const unsigned char*>(p);
      for (std::size_t i = 0; i < sizes[seq]; ++i)
        if (bytes[i] != static_cast<unsigned char>(seq + i)) {
          bad.fetch_add(1, std::memory_order_relaxed);
          break;
        }
      block_pool::deallocate(p);
      ++seen;
    }
    done.store(true, std::memory_order_release);
  });

  pool.bind_to_this_thread();
  for (std::uint64_t seq = 0; seq < total; ++seq) {
    auto* p = static_cast<unsigned char*>(pool.allocate(sizes[seq]));
    for (std::size_t i = 0; i < sizes[seq]; ++i) p[i] = static_cast<unsigned char>(seq + i);
    while (!ring.try_push({seq, p})) std::this_thread::yield();
  }
  consumer.join();
  CHECK(done.load());
  CHECK_MESSAGE(bad.load() == 0, "seed ", seed);
  // At most a ring's worth (plus the blocks in transit per class) is ever out
  // at once, so nearly every allocation was a reuse.
  INFO("seed ", seed, ", system allocations ", pool.system_allocations());
  CHECK(pool.system_allocations() < total / 10);
  // Every block came back exactly once: all of them are free now.
  CHECK(pool.cached_blocks() == pool.system_allocations());
  // And the owner takes them back: one of each class the test used (sizes
  // 8..607 plus the header: 64..1,024 bytes), without the system.
  const auto before = pool.system_allocations();
  for (std::size_t bytes = block_pool::min_block; bytes <= 1024; bytes *= 2)
    block_pool::deallocate(pool.allocate(bytes - block_pool::header_bytes));
  CHECK(pool.system_allocations() == before);
}
