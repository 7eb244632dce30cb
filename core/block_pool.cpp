#include "core/block_pool.hpp"

#include <algorithm>
#include <bit>
#include <new>

#if defined(__SANITIZE_ADDRESS__)  // g++
#define KEYWAY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang
#define KEYWAY_ASAN 1
#endif
#endif
#if defined(KEYWAY_ASAN)
#include <sanitizer/asan_interface.h>
#define KEYWAY_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define KEYWAY_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define KEYWAY_POISON(p, n) ((void)(p), (void)(n))
#define KEYWAY_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace keyway::core {

// Sits in front of every block; the user's memory starts header_bytes later,
// so it keeps operator new's 16-byte alignment.
struct block_pool::header {
  block_pool* pool;
  std::uint32_t size_class;  // class_count: not pooled (operator delete)
  std::uint32_t unused;
};

namespace {
constexpr std::uint32_t unpooled = block_pool::class_count;
// Pooled blocks start on a cache line, so that a block shares no line with
// its neighbour, which another CPU may be reading while this one fills it.
constexpr std::align_val_t pooled_alignment{cache_line};
// allocate() prefetches up to this much of the block it will hand out next.
constexpr std::size_t prefetch_bytes = 256;

std::size_t class_of(std::size_t total) noexcept {
  if (total <= block_pool::min_block) return 0;
  return static_cast<std::size_t>(std::bit_width((total - 1) / block_pool::min_block));
}

std::size_t class_bytes(std::size_t size_class) noexcept {
  return block_pool::min_block << size_class;
}
}  // namespace

block_pool::header* block_pool::header_of(void* user) noexcept {
  return reinterpret_cast<header*>(static_cast<std::byte*>(user) - header_bytes);
}

block_pool::free_block* block_pool::chain_of(std::uint64_t head_word) noexcept {
  return reinterpret_cast<free_block*>(head_word & address_mask);
}

block_pool::~block_pool() {
  static_assert(sizeof(header) == header_bytes);
  for (std::size_t c = 0; c < class_count; ++c) {
    release_all(free_[c].head, c);
    const std::uint64_t word = remote_[c].head.exchange(0, std::memory_order_acquire);
    release_all(chain_of(word), c);
  }
}

void block_pool::release_all(free_block* b, std::size_t size_class) noexcept {
  while (b != nullptr) {
    free_block* next = b->next;
    header* h = header_of(b);
    KEYWAY_UNPOISON(h, class_bytes(size_class));
    ::operator delete(static_cast<void*>(h), pooled_alignment);
    b = next;
  }
}

void* block_pool::allocate(std::size_t bytes) {
  KEYWAY_ASSERT_OWNER(owner_);
  const std::size_t total = bytes + header_bytes;
  if (total > max_block) return from_system(total, unpooled);
  const std::size_t c = class_of(total);
  if (free_[c].head == nullptr) refill(c);
  free_list& l = free_[c];
  if (l.head == nullptr) return from_system(class_bytes(c), static_cast<std::uint32_t>(c));
  free_block* b = l.head;
  KEYWAY_UNPOISON(b, class_bytes(c) - header_bytes);
  l.head = b->next;
  --l.count;
  // The next block was likely last written on another CPU (freed there):
  // start moving its lines here, writable, while the caller fills this one.
  // Without this, on a VM whose vCPUs sat ~240 ns apart, the stores into
  // every new message waited on those lines
  // (bench/log/2026-12-04-e2e-cross-cpu-and-request-reply.md).
  if (l.head != nullptr) {
    const auto* first = reinterpret_cast<const std::byte*>(header_of(l.head));
    const std::size_t bytes = std::min<std::size_t>(class_bytes(c), prefetch_bytes);
    for (std::size_t off = 0; off < bytes; off += cache_line) prefetch_for_write(first + off);
  }
  return b;
}

void* block_pool::from_system(std::size_t total, std::uint32_t size_class) {
  auto* h = static_cast<header*>(size_class == unpooled ? ::operator new(total)
                                                        : ::operator new(total, pooled_alignment));
  h->pool = this;
  h->size_class = size_class;
  ++system_allocations_;
  return reinterpret_cast<std::byte*>(h) + header_bytes;
}

void block_pool::deallocate(void* p) noexcept {
  if (p == nullptr) return;
  header* h = header_of(p);
  if (h->size_class == unpooled) {
    ::operator delete(static_cast<void*>(h));
    return;
  }
  auto* b = static_cast<free_block*>(p);
  block_pool& pool = *h->pool;
  if (pool.owner_.is_owner())
    pool.push_local(b, h->size_class);
  else
    pool.push_remote(b, h->size_class);
}

void block_pool::push_local(free_block* b, std::size_t size_class) noexcept {
  free_list& l = free_[size_class];
  if (l.count >= cache_limit(size_class)) {
    ::operator delete(static_cast<void*>(header_of(b)), pooled_alignment);
    return;
  }
  b->next = l.head;
  l.head = b;
  ++l.count;
  // The link stays readable; the rest of the block is off limits until reused.
  KEYWAY_POISON(reinterpret_cast<std::byte*>(b) + sizeof(free_block),
                class_bytes(size_class) - header_bytes - sizeof(free_block));
}

void block_pool::push_remote(free_block* b, std::size_t size_class) noexcept {
  // Poisoned before it is published: afterwards the owner may already reuse it.
  KEYWAY_POISON(reinterpret_cast<std::byte*>(b) + sizeof(free_block),
                class_bytes(size_class) - header_bytes - sizeof(free_block));
  const auto address = reinterpret_cast<std::uintptr_t>(b);
  KEYWAY_ASSERT((address & ~address_mask) == 0);
  std::atomic<std::uint64_t>& top = remote_[size_class].head;
  std::uint64_t head = top.load(std::memory_order_relaxed);
  std::uint64_t next;
  do {
    b->next = chain_of(head);
    const std::uint64_t count = std::min(count_max, (head >> count_shift) + 1);
    next = (count << count_shift) | address;
    // Release: the owner's exchange (acquire) sees the link written above.
  } while (
      !top.compare_exchange_weak(head, next, std::memory_order_release, std::memory_order_relaxed));
}

void block_pool::refill(std::size_t size_class) noexcept {
  std::atomic<std::uint64_t>& top = remote_[size_class].head;
  if (top.load(std::memory_order_relaxed) == 0) return;
  const std::uint64_t word = top.exchange(0, std::memory_order_acquire);
  free_block* chain = chain_of(word);
  std::size_t count = static_cast<std::size_t>(word >> count_shift);
  if (count == count_max) {  // saturated: count by walking (only after a burst)
    count = 0;
    for (free_block* b = chain; b != nullptr; b = b->next) ++count;
  }
  // The list is empty (allocate() refills only then): the chain becomes it,
  // up to the cache limit; the rest goes back to the system.
  const std::size_t limit = cache_limit(size_class);
  if (count > limit) {
    free_block** cut = &chain;
    for (std::size_t i = 0; i < limit; ++i) cut = &(*cut)->next;
    release_all(*cut, size_class);
    *cut = nullptr;
    count = limit;
  }
  free_[size_class] = free_list{chain, count};
}

std::size_t block_pool::cached_blocks() const noexcept {
  std::size_t n = 0;
  for (std::size_t c = 0; c < class_count; ++c)
    n += free_[c].count + (remote_[c].head.load(std::memory_order_relaxed) >> count_shift);
  return n;
}

}  // namespace keyway::core
