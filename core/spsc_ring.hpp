// spsc_ring<T>: bounded single-producer/single-consumer ring.
//
// Threads: exactly one producer thread calls try_push/push_batch/free_slots;
// exactly one consumer thread calls try_pop/drain/size_approx. Neither side
// ever blocks or allocates after construction.
//
// Design (after rigtorp/SPSCQueue):
//  * capacity is a power of two, so wrapping is a mask;
//  * head (consumer) and tail (producer) live on separate cache lines, and each
//    side keeps a cached copy of the other's index on its own line, so in the
//    steady state a push or pop touches no line the other side writes;
//  * the slot array is padded by a cache line at both ends so that neither end
//    shares a line with neighbouring heap data.
// Indices are free-running 64-bit counters; (tail - head) is the fill level,
// and tail/head are the sent/received counts that stats() reports.
// Cost: a push or pop is a few instructions plus, when the cached index says
// full/empty, one acquire load of the other side's index.
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include "core/cache.hpp"
#include "core/queue_stats.hpp"

namespace keyway::core {

/// The default `ahead` of spsc_ring::consume_all and mesh::endpoint::drain:
/// sees nothing, and compiles to nothing (a function-pointer default would be
/// an indirect call per item unless the compiler proves its target).
struct no_lookahead {
  template <class T>
  void operator()(T&) const noexcept {}
};

template <class T>
class spsc_ring {
  static_assert(std::is_nothrow_move_constructible_v<T>);
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  /// capacity is rounded up to a power of two (at least 2).
  explicit spsc_ring(std::size_t capacity) : capacity_(round_up(capacity)), mask_(capacity_ - 1) {
    storage_ = static_cast<T*>(
        ::operator new[]((capacity_ + 2 * pad_) * sizeof(T), std::align_val_t{storage_align_}));
  }
  spsc_ring(const spsc_ring&) = delete;
  spsc_ring& operator=(const spsc_ring&) = delete;
  ~spsc_ring() {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (std::uint64_t i = head_.load(std::memory_order_relaxed); i != tail; ++i) slot(i)->~T();
    ::operator delete[](storage_, std::align_val_t{storage_align_});
  }

  std::size_t capacity() const noexcept { return capacity_; }

  // ---- producer side -------------------------------------------------------

  template <class... Args>
  bool try_emplace(Args&&... args) noexcept(std::is_nothrow_constructible_v<T, Args...>) {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_cache_ == capacity_) {
      head_cache_ = head_.load(std::memory_order_acquire);
      if (tail - head_cache_ == capacity_) return false;
    }
    ::new (slot(tail)) T(std::forward<Args>(args)...);
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }
  bool try_push(T&& v) noexcept { return try_emplace(std::move(v)); }
  bool try_push(const T& v) noexcept(std::is_nothrow_copy_constructible_v<T>) {
    return try_emplace(v);
  }

  /// Moves as many items from the front of `items` as fit, publishing them with
  /// one release store. Returns how many were taken.
  std::size_t push_batch(std::span<T> items) noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    std::size_t room = capacity_ - (tail - head_cache_);
    if (room < items.size()) {
      head_cache_ = head_.load(std::memory_order_acquire);
      room = capacity_ - (tail - head_cache_);
    }
    const std::size_t n = room < items.size() ? room : items.size();
    for (std::size_t i = 0; i < n; ++i) ::new (slot(tail + i)) T(std::move(items[i]));
    if (n != 0) tail_.store(tail + n, std::memory_order_release);
    return n;
  }

  /// Free slots as the producer sees them now (refreshes its cached head).
  std::size_t free_slots() noexcept {
    head_cache_ = head_.load(std::memory_order_acquire);
    return capacity_ - (tail_.load(std::memory_order_relaxed) - head_cache_);
  }

  // ---- consumer side -------------------------------------------------------

  bool try_pop(T& out) noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_cache_) {
      tail_cache_ = tail_.load(std::memory_order_acquire);
      if (head == tail_cache_) return false;
    }
    T* s = slot(head);
    out = std::move(*s);
    s->~T();
    head_.store(head + 1, std::memory_order_release);
    return true;
  }

  /// Moves up to out.size() items into `out` and frees their slots with one
  /// release store. Returns how many were moved.
  std::size_t drain(std::span<T> out) noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    tail_cache_ = tail_.load(std::memory_order_acquire);
    std::size_t n = static_cast<std::size_t>(tail_cache_ - head);
    if (n > out.size()) n = out.size();
    for (std::size_t i = 0; i < n; ++i) {
      T* s = slot(head + i);
      out[i] = std::move(*s);
      s->~T();
    }
    if (n != 0) head_.store(head + n, std::memory_order_release);
    return n;
  }

  /// Items ahead of the one consume_all() hands to fn that it shows to `ahead`.
  static constexpr std::uint64_t consume_lookahead = 4;

  /// Calls fn(T&) for every item present now, then frees them all at once.
  /// Returns the count. fn must not touch this ring. If fn throws, the item it
  /// was given and those before it are consumed, the rest stay in the ring.
  /// ahead(T&) sees each item once, in order, consume_lookahead items before
  /// fn does: time to prefetch what fn will read through the item (memory the
  /// producer's CPU wrote). It must not throw or change the item.
  template <class Fn, class Ahead = no_lookahead>
  std::size_t consume_all(Fn&& fn, Ahead&& ahead = {}) {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    tail_cache_ = tail_.load(std::memory_order_acquire);
    const std::uint64_t tail = tail_cache_;
    // Destroys the current item and publishes the new head even when fn
    // throws; otherwise the destroyed items would be destroyed again later.
    struct advance {
      spsc_ring& ring;
      std::uint64_t i;
      ~advance() {
        if (i != ring.head_.load(std::memory_order_relaxed))
          ring.head_.store(i, std::memory_order_release);
      }
    } done{*this, head};
    for (std::uint64_t i = head; i != tail && i != head + consume_lookahead; ++i) ahead(*slot(i));
    while (done.i != tail) {
      if (tail - done.i > consume_lookahead) ahead(*slot(done.i + consume_lookahead));
      T* s = slot(done.i++);  // consumed from here on, whatever fn does
      struct destroy {
        T* s;
        ~destroy() { s->~T(); }
      } d{s};
      fn(*s);
    }
    return static_cast<std::size_t>(tail - head);
  }

  /// Consumer-side view of the fill level; any thread may call it for
  /// statistics, where it is approximate.
  std::size_t size_approx() const noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_acquire);
    const std::uint64_t head = head_.load(std::memory_order_acquire);
    return tail >= head ? static_cast<std::size_t>(tail - head) : 0;
  }
  bool empty_approx() const noexcept { return size_approx() == 0; }

  /// Sent/received counts (the two indices). Any thread.
  queue_stats stats() const noexcept { return load_queue_stats(tail_, head_); }

 private:
  // At least a cache line, more if T asks for it.
  static constexpr std::size_t storage_align_ = alignof(T) > cache_line ? alignof(T) : cache_line;
  static constexpr std::size_t pad_ = (cache_line + sizeof(T) - 1) / sizeof(T);

  static std::size_t round_up(std::size_t n) {
    std::size_t c = 2;
    while (c < n) c <<= 1;
    return c;
  }
  T* slot(std::uint64_t i) const noexcept { return storage_ + pad_ + (i & mask_); }

  const std::size_t capacity_;
  const std::size_t mask_;
  T* storage_;

  alignas(cache_line) std::atomic<std::uint64_t> tail_{0};  // written by producer
  std::uint64_t head_cache_ = 0;                            // producer's copy of head_
  alignas(cache_line) std::atomic<std::uint64_t> head_{0};  // written by consumer
  std::uint64_t tail_cache_ = 0;                            // consumer's copy of tail_
  char tail_pad_[cache_line - sizeof(std::atomic<std::uint64_t>) - sizeof(std::uint64_t)];
};

}  // namespace keyway::core
