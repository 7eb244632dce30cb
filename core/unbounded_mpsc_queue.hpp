// unbounded_mpsc_queue<T>: multi-producer/single-consumer queue that never
// reports "full".
//
// Threads: any number of threads may call emplace/push at the same time;
// exactly one consumer thread calls try_pop. size_approx() and stats() may be
// called from any thread. The consumer never blocks and never allocates.
//
// Design (after the list channel of Rust's crossbeam): a chain of blocks of
// BlockSlots slots each; no allocation per item.
//  * tail_ encodes (lap, offset) with lap = tail_ / (BlockSlots + 1). Offsets
//    0 .. BlockSlots-1 are slots of the current block; offset BlockSlots means
//    "the next block is being installed" and makes other producers wait;
//  * a producer claims a slot with one CAS on tail_. The producer that claims
//    the last slot of a block installs the next one (tail_block_, then tail_
//    moves to the next lap, then the old block's link), then writes its item.
//    It allocates (or takes the spare block) *before* its claim, so other
//    producers wait only for three stores;
//  * a producer touches a block only after its claim succeeded, and the block
//    cannot be retired before every claimed slot in it is filled, so there is
//    no use-after-free and no ABA on the block pointer;
//  * each slot has a ready flag; the consumer owns its position privately and
//    pops only published items, in claim order. A producer stalled between its
//    claim and its publish makes the consumer see "empty" until it resumes:
//    per-producer FIFO order is kept and nothing is skipped;
//  * a consumed block is kept as the one spare block (the previous spare, if
//    any, is freed), so a steady flow allocates nothing; memory is at most the
//    blocks in flight plus one.
// Use it where a producer must not be refused. It hides backpressure: prefer
// mpsc_queue when a full queue should slow producers down.
// Statistics: sent is decoded from tail_, received is head_, a count only the
// consumer writes; the hot path pays nothing extra (see core/queue_stats.hpp).
// Cost: a push is one CAS on the shared tail_ (retried under contention), a
// construct and a release store; once per block it also installs a block. A
// pop is an acquire load of the slot's flag, a move and two plain stores.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#include "core/cache.hpp"
#include "core/queue_stats.hpp"

namespace keyway::core {

template <class T, std::size_t BlockSlots = 1023>
class unbounded_mpsc_queue {
  static_assert(BlockSlots >= 1 && ((BlockSlots + 1) & BlockSlots) == 0,
                "BlockSlots + 1 must be a power of two");
  static_assert(std::is_nothrow_move_constructible_v<T>);
  static_assert(std::is_nothrow_move_assignable_v<T>);
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  unbounded_mpsc_queue() : tail_block_(new block), head_block_(tail_block_.load()) {}
  unbounded_mpsc_queue(const unbounded_mpsc_queue&) = delete;
  unbounded_mpsc_queue& operator=(const unbounded_mpsc_queue&) = delete;
  ~unbounded_mpsc_queue() {
    // No producer is running, so every claimed slot is ready, and the chain
    // from head_block_ ends at tail_block_.
    std::size_t off = head_off_;
    for (block* b = head_block_; b != nullptr; off = 0) {
      for (; off < BlockSlots; ++off)
        if (b->slots[off].ready.load(std::memory_order_relaxed)) b->slots[off].value()->~T();
      block* next = b->next.load(std::memory_order_relaxed);
      delete b;
      b = next;
    }
    delete spare_.load(std::memory_order_relaxed);
  }

  static constexpr std::size_t block_slots() noexcept { return BlockSlots; }

  // ---- producers (any thread) ----------------------------------------------

  /// Always succeeds, unless a new block cannot be allocated: then
  /// std::bad_alloc propagates and the queue is unchanged. Construction must
  /// not throw: a claimed slot that is never filled would stall the consumer.
  template <class... Args>
  requires std::is_nothrow_constructible_v<T, Args...>
  void emplace(Args&&... args) {
    block* next = nullptr;  // taken before claiming the last slot of a block
    std::uint64_t tail = tail_.load(std::memory_order_acquire);
    block* b = tail_block_.load(std::memory_order_acquire);
    for (unsigned spins = 0;;) {
      const std::size_t off = static_cast<std::size_t>(tail & lap_mask_);
      if (off == BlockSlots) {
        // Another producer is installing the next block: a few stores away,
        // unless it was preempted.
        if (++spins > 64) std::this_thread::yield();
        tail = tail_.load(std::memory_order_acquire);
        b = tail_block_.load(std::memory_order_acquire);
        continue;
      }
      const bool last = off + 1 == BlockSlots;
      if (last && next == nullptr) next = take_block();  // may throw; nothing claimed yet
      // On success nothing needs ordering (the slot's flag publishes the
      // item); on failure acquire pairs with the installer's release, so the
      // tail_block_ loaded next is at least as new as the lap just read.
      if (tail_.compare_exchange_weak(tail, tail + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        if (last) {
          tail_block_.store(next, std::memory_order_release);
          tail_.fetch_add(1, std::memory_order_release);  // sentinel -> next lap, offset 0
          b->next.store(next, std::memory_order_release);
          next = nullptr;
        }
        slot& s = b->slots[off];
        ::new (s.storage) T(std::forward<Args>(args)...);
        s.ready.store(1, std::memory_order_release);
        if (next != nullptr) put_spare(next);  // another producer installed the block
        return;
      }
      b = tail_block_.load(std::memory_order_acquire);
    }
  }
  void push(T&& v) { emplace(std::move(v)); }
  void push(const T& v) requires std::is_nothrow_copy_constructible_v<T> { emplace(v); }

  // ---- consumer (one thread) -----------------------------------------------

  bool try_pop(T& out) noexcept {
    slot& s = head_block_->slots[head_off_];
    if (s.ready.load(std::memory_order_acquire) == 0) return false;
    T* v = s.value();
    out = std::move(*v);
    v->~T();
    s.ready.store(0, std::memory_order_relaxed);  // clean for reuse of the block
    if (++head_off_ == BlockSlots) {
      // The producer of the last slot linked the next block before it
      // published, so the link is there.
      block* done = head_block_;
      head_block_ = done->next.load(std::memory_order_acquire);
      head_off_ = 0;
      done->next.store(nullptr, std::memory_order_relaxed);
      put_spare(done);
    }
    head_.store(head_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    return true;
  }

  // ---- any thread ----------------------------------------------------------

  std::size_t size_approx() const noexcept { return static_cast<std::size_t>(stats().depth()); }

  queue_stats stats() const noexcept {
    queue_stats s;
    s.received = head_.load(std::memory_order_acquire);
    const std::uint64_t tail = tail_.load(std::memory_order_acquire);
    const std::uint64_t off = tail & lap_mask_;
    s.sent = (tail >> lap_shift_) * BlockSlots + (off < BlockSlots ? off : BlockSlots);
    return s;
  }

 private:
  static constexpr std::uint64_t lap_mask_ = BlockSlots;  // lap size BlockSlots + 1
  static constexpr int lap_shift_ = [] {
    int s = 0;
    while ((std::uint64_t{1} << s) != BlockSlots + 1) ++s;
    return s;
  }();

  struct slot {
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    std::atomic<std::uint32_t> ready{0};
    alignas(T) unsigned char storage[sizeof(T)];
  };
  // The link sits on a line of its own, ahead of the slots, and sizeof is a
  // whole number of lines: a block shares no line with other heap data.
  struct alignas(cache_line) block {
    std::atomic<block*> next{nullptr};
    alignas(cache_line) slot slots[BlockSlots];
  };

  /// Any producer: the spare block if there is one, else a new block.
  block* take_block() {
    block* b = spare_.exchange(nullptr, std::memory_order_acquire);
    return b != nullptr ? b : new block;
  }
  /// Keeps b (clean: no ready flag set, no link) as the spare, freeing the old one.
  void put_spare(block* b) noexcept { delete spare_.exchange(b, std::memory_order_acq_rel); }

  // producers' line
  alignas(cache_line) std::atomic<std::uint64_t> tail_{0};
  std::atomic<block*> tail_block_;

  alignas(cache_line) std::atomic<block*> spare_{nullptr};

  // consumer's line
  alignas(cache_line) std::atomic<std::uint64_t> head_{0};  // items popped
  block* head_block_;
  std::size_t head_off_ = 0;
};

}  // namespace keyway::core
