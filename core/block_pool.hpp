// block_pool: one worker's allocator for blocks that are built on that worker
// and freed on any thread, such as a message built at ingress and released by
// the worker that delivered it last.
//
// Why not malloc: glibc hands a block freed on another thread back to the
// arena of the thread that allocated it, under that arena's lock. With two
// workers trading every message, the lock and its futex calls were about a
// fifth of keywayd's CPU (perf, bench/log/2026-12-02-e2e-allocator-and-reads.md).
// Here a block freed on its own worker goes on a plain free list; a block
// freed elsewhere goes on the pool's remote stack for its size class with one
// CAS, and the owner takes the whole stack back with one exchange when that
// class's free list runs dry (mimalloc's "remote free" list). The stack's head word also counts its
// blocks, so taking it back is O(1): no walk over lines another CPU wrote.
//
// Size classes are powers of two from 64 to 4,096 bytes, header included;
// a pooled block starts on a cache line, so no two blocks share a line;
// larger blocks go straight to operator new/delete. Each class keeps at most
// cache_bytes of free blocks; a block beyond that is freed to the system, on
// the owner's thread.
//
// Threads: allocate() only on the owner (bind_to_this_thread(); asserted);
// deallocate() from any thread. The pool must outlive every block it handed
// out; its destructor frees what it caches.
// Cost: allocate and a local deallocate are a few loads and stores (allocate
// also prefetches, writable, the lines of the block it will hand out next); a
// remote deallocate is one CAS on a line the owner touches once per refill.
// Under ASan a free block is poisoned, so a use after free is still caught.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/assert.hpp"
#include "core/cache.hpp"

namespace keyway::core {

class block_pool {
 public:
  static constexpr std::size_t min_block = 64;
  static constexpr std::size_t class_count = 7;  // 64 .. 4,096 bytes
  static constexpr std::size_t max_block = min_block << (class_count - 1);
  static constexpr std::size_t header_bytes = 16;
  static constexpr std::size_t default_cache_bytes = 4 * 1024 * 1024;

  explicit block_pool(std::size_t cache_bytes = default_cache_bytes) noexcept
      : cache_bytes_(cache_bytes) {}
  ~block_pool();
  block_pool(const block_pool&) = delete;
  block_pool& operator=(const block_pool&) = delete;

  /// The calling thread becomes the owner, the only one that may allocate.
  void bind_to_this_thread() noexcept { owner_.bind_to_this_thread(); }

  /// Owner thread: `bytes` of memory aligned to 16. Throws std::bad_alloc.
  void* allocate(std::size_t bytes);
  /// Any thread: frees what some pool's allocate() returned.
  static void deallocate(void* p) noexcept;

  /// Owner thread, for tests and statistics: free blocks, on the free lists
  /// and on the remote stacks (each of those counted up to 65,535).
  std::size_t cached_blocks() const noexcept;
  /// Blocks taken from the system so far (not from a free list).
  std::uint64_t system_allocations() const noexcept { return system_allocations_; }

 private:
  struct header;
  struct free_block {
    free_block* next;
  };
  struct free_list {
    free_block* head = nullptr;
    std::size_t count = 0;
  };

  // A remote stack's head: the top block's address in the low 48 bits, the
  // number of blocks (saturating at count_max) in the high 16.
  static constexpr unsigned count_shift = 48;
  static constexpr std::uint64_t address_mask = (std::uint64_t{1} << count_shift) - 1;
  static constexpr std::uint64_t count_max = 0xffff;
  struct alignas(cache_line) remote_stack {
    std::atomic<std::uint64_t> head{0};
  };

  static header* header_of(void* user) noexcept;
  static free_block* chain_of(std::uint64_t head_word) noexcept;
  /// A fresh block of `total` bytes, header included, from operator new.
  void* from_system(std::size_t total, std::uint32_t size_class);
  void push_local(free_block* b, std::size_t size_class) noexcept;
  void push_remote(free_block* b, std::size_t size_class) noexcept;
  /// Moves the remote stack of `size_class` onto its (empty) free list.
  void refill(std::size_t size_class) noexcept;
  void release_all(free_block* b, std::size_t size_class) noexcept;
  std::size_t cache_limit(std::size_t size_class) const noexcept {
    return cache_bytes_ / (min_block << size_class);
  }

  // Read by every thread that frees a block here, and written only before
  // the pool is used.
  owner_check owner_;
  const std::size_t cache_bytes_;
  // Written by the owner on every allocation: on cache lines of their own, or
  // each free by another thread (which reads owner_) would pull the line
  // away from the owner, and perf showed allocate() and deallocate() stalled
  // on it.
  alignas(cache_line) std::array<free_list, class_count> free_{};
  std::uint64_t system_allocations_ = 0;
  // Written by other threads: each on its own cache line.
  std::array<remote_stack, class_count> remote_{};
};

}  // namespace keyway::core
