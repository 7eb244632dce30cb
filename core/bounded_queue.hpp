// bounded_queue<T, Consumers>: bounded multi-producer queue with one consumer
// (mpsc_queue<T>) or many (mpmc_queue<T>); core/mpsc_queue.hpp and
// core/mpmc_queue.hpp name the two.
//
// Threads: any number of threads may call try_emplace/try_push at the same
// time. mpsc: exactly one consumer thread calls try_pop/drain. mpmc: any
// number of threads may call try_pop at the same time. capacity(),
// size_approx() and stats() may be called from any thread. Nothing blocks and
// nothing allocates after construction.
//
// Design (Dmitry Vyukov's bounded MPMC queue; the single-consumer variant
// drops the consumer's compare-and-swap):
//  * capacity is a power of two; each slot carries a sequence number. A slot
//    is free for position p when seq == p, and holds the (published) item of
//    p when seq == p + 1; the consumer of p hands it to the next lap by
//    storing p + capacity;
//  * producers claim a position with one compare-and-swap on tail_, then
//    construct the item and publish it with a release store to the slot's
//    sequence. mpmc consumers claim with one CAS on head_; the mpsc consumer
//    owns head_ and never uses a read-modify-write;
//  * a thread stalled between its claim and its release store delays only the
//    thread that reaches the same slot next (a consumer sees "empty", a
//    producer sees "full"); it never corrupts the queue;
//  * items of one producer come out in the order it pushed them (they take
//    increasing positions). With several consumers, "in order" means the
//    order of the consumers' claims: two consumers may finish out of order.
//
// Statistics: tail_ counts successful pushes (claims) and head_ counts pops,
// so stats() reads them and the hot path pays nothing extra (see
// core/queue_stats.hpp).
// Cost: a push is an acquire load of the slot, one CAS on tail_ (retried under
// contention) and a release store; an mpsc pop is an acquire load and two
// release stores; an mpmc pop is an acquire load, one CAS and a release store.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include "core/cache.hpp"
#include "core/queue_stats.hpp"

namespace keyway::core {

enum class consumers { one, many };

template <class T, consumers C>
class bounded_queue {
  static constexpr bool single_consumer = C == consumers::one;
  static_assert(std::is_nothrow_move_constructible_v<T>);
  static_assert(std::is_nothrow_move_assignable_v<T>);
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  /// capacity is rounded up to a power of two (at least 2).
  explicit bounded_queue(std::size_t capacity)
      : capacity_(round_up(capacity)), mask_(capacity_ - 1) {
    storage_ = static_cast<slot*>(
        ::operator new[]((capacity_ + 2 * pad_) * sizeof(slot), std::align_val_t{align_}));
    slots_ = storage_ + pad_;
    for (std::size_t i = 0; i < capacity_; ++i) ::new (&slots_[i]) slot(i);
  }
  bounded_queue(const bounded_queue&) = delete;
  bounded_queue& operator=(const bounded_queue&) = delete;
  ~bounded_queue() {
    // No thread is using the queue any more, so every position between head_
    // and tail_ holds a constructed item.
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (std::uint64_t i = head_.load(std::memory_order_relaxed); i != tail; ++i)
      slots_[i & mask_].value()->~T();
    for (std::size_t i = 0; i < capacity_; ++i) slots_[i].~slot();
    ::operator delete[](storage_, std::align_val_t{align_});
  }

  std::size_t capacity() const noexcept { return capacity_; }

  // ---- producers (any thread) ----------------------------------------------

  /// Constructs the item in place if there is room. Construction must not
  /// throw: a claimed slot that is never filled would stall its consumer.
  template <class... Args>
  requires std::is_nothrow_constructible_v<T, Args...>
  bool try_emplace(Args&&... args) noexcept {
    std::uint64_t pos = tail_.load(std::memory_order_relaxed);
    slot* s;
    for (;;) {
      s = &slots_[pos & mask_];
      const std::uint64_t seq = s->seq.load(std::memory_order_acquire);
      const auto diff = static_cast<std::int64_t>(seq - pos);
      if (diff == 0) {
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed,
                                        std::memory_order_relaxed))
          break;
      } else if (diff < 0) {
        return false;  // the slot still holds the item of the previous lap: full
      } else {
        pos = tail_.load(std::memory_order_relaxed);  // another producer won it
      }
    }
    ::new (s->storage) T(std::forward<Args>(args)...);
    s->seq.store(pos + 1, std::memory_order_release);
    return true;
  }
  bool try_push(T&& v) noexcept { return try_emplace(std::move(v)); }
  bool try_push(const T& v) noexcept requires std::is_nothrow_copy_constructible_v<T> {
    return try_emplace(v);
  }

  // ---- consumers ------------------------------------------------------------

  bool try_pop(T& out) noexcept {
    std::uint64_t pos = head_.load(std::memory_order_relaxed);
    slot* s;
    for (;;) {
      s = &slots_[pos & mask_];
      const std::uint64_t seq = s->seq.load(std::memory_order_acquire);
      const auto diff = static_cast<std::int64_t>(seq - (pos + 1));
      if (diff < 0) return false;  // the producer of pos has not published yet: empty
      if constexpr (single_consumer) break;
      // release: a stats() reader that sees this claim also sees the tail_
      // claim of the item (so received never exceeds sent).
      if (diff == 0 && head_.compare_exchange_weak(pos, pos + 1, std::memory_order_release,
                                                   std::memory_order_relaxed))
        break;
      if (diff > 0) pos = head_.load(std::memory_order_relaxed);  // another consumer won it
    }
    T* v = s->value();
    out = std::move(*v);
    v->~T();
    s->seq.store(pos + capacity_, std::memory_order_release);
    if constexpr (single_consumer) head_.store(pos + 1, std::memory_order_release);
    return true;
  }

  /// Moves up to out.size() items, stopping at the first position that is not
  /// published yet. Returns how many were moved.
  /// Single consumer only.
  std::size_t drain(std::span<T> out) noexcept requires single_consumer {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::size_t n = 0;
    for (; n < out.size(); ++n) {
      slot& s = slots_[(head + n) & mask_];
      if (s.seq.load(std::memory_order_acquire) != head + n + 1) break;
      T* v = s.value();
      out[n] = std::move(*v);
      v->~T();
      s.seq.store(head + n + capacity_, std::memory_order_release);
    }
    if (n != 0) head_.store(head + n, std::memory_order_release);
    return n;
  }

  // ---- any thread ----------------------------------------------------------

  /// Fill level; exact only when no other thread is using the queue.
  std::size_t size_approx() const noexcept {
    const std::uint64_t head = head_.load(std::memory_order_acquire);
    const std::uint64_t tail = tail_.load(std::memory_order_acquire);
    return tail >= head ? static_cast<std::size_t>(tail - head) : 0;
  }
  queue_stats stats() const noexcept { return load_queue_stats(tail_, head_); }

 private:
  struct slot {
    explicit slot(std::uint64_t s) noexcept : seq(s) {}
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    std::atomic<std::uint64_t> seq;
    alignas(T) unsigned char storage[sizeof(T)];
  };
  static constexpr std::size_t align_ = std::max(alignof(slot), cache_line);
  static constexpr std::size_t pad_ = (cache_line + sizeof(slot) - 1) / sizeof(slot);

  static std::size_t round_up(std::size_t n) noexcept {
    std::size_t c = 2;
    while (c < n) c <<= 1;
    return c;
  }

  const std::size_t capacity_;
  const std::size_t mask_;
  slot* storage_;  // the allocation, padding included
  slot* slots_;    // storage_ + pad_

  alignas(cache_line) std::atomic<std::uint64_t> tail_{0};  // claimed by producers
  alignas(cache_line) std::atomic<std::uint64_t> head_{0};  // the consumers' side
  // alignas rounds sizeof up to whole lines, so head_ shares its line with nothing.
};

}  // namespace keyway::core
