// unbounded_spsc_queue<T>: single-producer/single-consumer queue that never
// reports "full".
//
// Threads: exactly one producer thread calls emplace/push; exactly one
// consumer thread calls try_pop. size_approx() and stats() may be called from
// any thread. The consumer never blocks and never allocates.
//
// Design: a chain of fixed-size blocks, each an array of BlockSize slots (a
// power of two), so there is no allocation per item.
//  * indices are free-running 64-bit counters, as in spsc_ring: tail_ counts
//    pushes, head_ counts pops; each side caches the other's index on its own
//    cache line, and the two lines are separate;
//  * the producer links a new block when the current one is full; the
//    consumer follows the link when it pops the first item of the next block;
//  * blocks are never freed while the queue lives: the producer keeps the
//    oldest block and reuses it once the consumer has left it, so after warm-up
//    a steady flow allocates nothing. Memory stays at the high-water mark
//    (blocks * BlockSize * sizeof(T)) until destruction.
// Use it where a producer must not be refused (a hand-off from a thread that
// cannot wait). It hides backpressure: prefer spsc_ring when a full queue
// should slow the producer down.
// Statistics: tail_ and head_ are the sent and received counts (see
// core/queue_stats.hpp), so the hot path pays nothing extra.
// Cost: a push is a construct plus a release store; once per BlockSize pushes
// it also reads head_ and may allocate one block. A pop is a move plus a
// release store, and an acquire load of tail_ only when the cached copy says
// empty.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "core/cache.hpp"
#include "core/queue_stats.hpp"

namespace keyway::core {

template <class T, std::size_t BlockSize = 1024>
class unbounded_spsc_queue {
  static_assert(BlockSize >= 2 && (BlockSize & (BlockSize - 1)) == 0,
                "BlockSize must be a power of two");
  static_assert(std::is_nothrow_move_constructible_v<T>);
  static_assert(std::is_nothrow_move_assignable_v<T>);
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  unbounded_spsc_queue() : first_(new block), tail_block_(first_), head_block_(first_) {}
  unbounded_spsc_queue(const unbounded_spsc_queue&) = delete;
  unbounded_spsc_queue& operator=(const unbounded_spsc_queue&) = delete;
  ~unbounded_spsc_queue() {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    block* b = head_block_;
    for (std::uint64_t i = head_.load(std::memory_order_relaxed); i != tail; ++i) {
      if (starts_block(i)) b = b->next.load(std::memory_order_relaxed);
      b->slot(i & mask_)->~T();
    }
    while (first_ != nullptr) {
      block* next = first_->next.load(std::memory_order_relaxed);
      delete first_;
      first_ = next;
    }
  }

  static constexpr std::size_t block_size() noexcept { return BlockSize; }

  // ---- producer side -------------------------------------------------------

  /// Always succeeds, unless a new block cannot be allocated: then
  /// std::bad_alloc propagates and the queue is unchanged. Construction must
  /// not throw.
  template <class... Args>
  requires std::is_nothrow_constructible_v<T, Args...>
  void emplace(Args&&... args) {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (starts_block(tail)) {
      block* next = take_block();
      ::new (next->slot(0)) T(std::forward<Args>(args)...);
      // The consumer reads this link only after it has seen the tail_ store
      // below, which orders it; release keeps the intent obvious.
      tail_block_->next.store(next, std::memory_order_release);
      tail_block_ = next;
    } else {
      ::new (tail_block_->slot(tail & mask_)) T(std::forward<Args>(args)...);
    }
    tail_.store(tail + 1, std::memory_order_release);
  }
  void push(T&& v) { emplace(std::move(v)); }
  void push(const T& v) requires std::is_nothrow_copy_constructible_v<T> { emplace(v); }

  // ---- consumer side -------------------------------------------------------

  bool try_pop(T& out) noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_cache_) {
      tail_cache_ = tail_.load(std::memory_order_acquire);
      if (head == tail_cache_) return false;
    }
    if (starts_block(head)) head_block_ = head_block_->next.load(std::memory_order_acquire);
    T* v = head_block_->slot(head & mask_);
    out = std::move(*v);
    v->~T();
    head_.store(head + 1, std::memory_order_release);
    return true;
  }

  // ---- any thread ----------------------------------------------------------

  std::size_t size_approx() const noexcept {
    const queue_stats s = stats();
    return static_cast<std::size_t>(s.depth());
  }
  queue_stats stats() const noexcept { return load_queue_stats(tail_, head_); }

 private:
  static constexpr std::size_t mask_ = BlockSize - 1;
  static constexpr std::size_t slot_align_ = alignof(T) > cache_line ? alignof(T) : cache_line;

  // The link sits on a line of its own, ahead of the slots, and sizeof is a
  // whole number of lines: a block shares no line with other heap data.
  struct alignas(cache_line) block {
    T* slot(std::size_t i) noexcept {
      return std::launder(reinterpret_cast<T*>(data + i * sizeof(T)));
    }
    std::atomic<block*> next{nullptr};
    alignas(slot_align_) unsigned char data[BlockSize * sizeof(T)];
  };

  /// Index i is the first slot of a block other than the very first one: the
  /// producer must link a block before writing it, the consumer must follow
  /// the link before reading it.
  static bool starts_block(std::uint64_t i) noexcept { return (i & mask_) == 0 && i != 0; }

  /// Producer only: the oldest block if the consumer has left it, else a new one.
  block* take_block() {
    // The consumer leaves block [s, s + BlockSize) when it pops index
    // s + BlockSize, after which head_ > s + BlockSize. The acquire pairs with
    // its release store, so its reads of the block are done.
    if (head_.load(std::memory_order_acquire) > first_start_ + BlockSize) {
      block* b = first_;
      first_ = b->next.load(std::memory_order_relaxed);
      first_start_ += BlockSize;
      b->next.store(nullptr, std::memory_order_relaxed);
      return b;
    }
    return new block;
  }

  // producer line
  alignas(cache_line) std::atomic<std::uint64_t> tail_{0};
  block* first_;                   // oldest block still owned; first of the chain
  std::uint64_t first_start_ = 0;  // index of first_'s slot 0
  block* tail_block_;              // block holding index tail_ - 1

  // consumer line
  alignas(cache_line) std::atomic<std::uint64_t> head_{0};
  std::uint64_t tail_cache_ = 0;  // consumer's copy of tail_
  block* head_block_;             // block holding index head_ - 1 (or the first)
};

}  // namespace keyway::core
