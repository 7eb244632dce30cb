// mesh<T>: the only channel between workers. rings[to][from] holds one bounded
// spsc_ring<T> for every ordered pair of workers (including a worker to
// itself), allocated by the receiving worker in attach() so that its memory is
// first touched on the receiver's CPU.
//
// Threads: endpoint `i` is used only on worker i's thread (asserted). The
// mesh object itself is built before the workers start and is immutable after
// every endpoint has attached; depth() may be read from any thread.
//
// Sending: messages are staged per destination and published with one release
// store per batch: when 16 are staged, or at flush() at the end of each loop
// turn. A flush that published something wakes the destination only if it is
// asleep (waker::wake() costs a fence and a load when it is not).
//
// Credits and backpressure: try_send() is for traffic a worker may refuse
// (publishes read from a socket). Credits for a destination are the free
// slots of the ring minus what is already staged; with none left, try_send()
// returns false, counts a credit stall, and the caller stops reading its
// socket until credits(to) > 0 again. The receiver, after draining a ring whose
// sender is waiting, wakes that sender. send() is for derived traffic that must
// not be refused (deliveries, acks): it always stages, and what does not fit
// in the ring stays staged until room appears. That staged backlog is bounded
// by feeding it back into credit: an endpoint with more than the ring
// capacity staged for any one destination is `backlogged` (a flag any worker
// may read), and while it is, every try_send() to it is refused as if its
// ring were full, so no new publish reaches it until its backlog is back
// under the capacity; it then wakes every worker. What is still in its
// inbound rings can add at most capacity × fan-out more. The staged total is
// exported as worker_stats::mesh_staged.
//
// Receiving: drain() consumes every inbound ring whole, in sender order per
// ring, calling fn(T&) for each message.
//
// Cost: a send is a vector push; a flush is one push_batch (one release store)
// plus one fence; a drain is one acquire load per non-empty ring plus one
// release store.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/assert.hpp"
#include "core/cache.hpp"
#include "core/spsc_ring.hpp"
#include "core/stats.hpp"
#include "core/worker.hpp"

namespace keyway::core {

template <class T>
class mesh {
  struct link;

 public:
  static constexpr std::size_t batch_size = 16;

  mesh(std::size_t workers, std::size_t ring_capacity)
      : n_(workers), capacity_(ring_capacity), links_(workers * workers), wakers_(workers) {
    endpoints_.reserve(workers);
    for (std::size_t i = 0; i < workers; ++i)
      endpoints_.push_back(
          std::unique_ptr<endpoint>(new endpoint(*this, static_cast<std::uint32_t>(i))));
  }

  std::size_t size() const noexcept { return n_; }
  std::size_t ring_capacity() const noexcept { return capacity_; }

  /// Any thread, approximate: messages waiting in rings[to][from].
  std::size_t depth(std::uint32_t to, std::uint32_t from) const noexcept {
    const link* l = links_[to * n_ + from].get();
    return l ? l->ring.size_approx() : 0;
  }

  class endpoint {
   public:
    std::uint32_t id() const noexcept { return id_; }

    /// On the owning worker's thread, before any worker sends: allocates the
    /// inbound rings and binds the waker and the statistics block.
    void attach(waker& self, worker_stats& stats) {
      owner_.bind_to_this_thread();
      stats_ = &stats;
      m_.wakers_[id_] = &self;
      for (std::size_t from = 0; from < m_.n_; ++from)
        m_.links_[id_ * m_.n_ + from] = std::make_unique<link>(m_.capacity_);
    }

    /// Credits left for `to`; 0 means a try_send() would be refused.
    std::size_t credits(std::uint32_t to) noexcept {
      KEYWAY_ASSERT_OWNER(owner_);
      out& o = out_[to];
      if (o.credit == 0) refresh_credit(to);
      return o.credit;
    }

    /// Stages `msg` for `to` if it has credit; otherwise returns false, leaves
    /// `msg` untouched, and arranges to be woken when credit returns.
    bool try_send(std::uint32_t to, T&& msg) {
      if (credits(to) == 0 || m_.endpoints_[to]->backlogged()) {
        stats_->credit_stalls.add();
        out_[to].awaiting_credit = true;
        inbound(to).sender_waiting.store(true, std::memory_order_relaxed);
        return false;
      }
      stage(to, std::move(msg));
      return true;
    }

    /// Stages `msg` for `to` unconditionally (derived traffic; see above).
    void send(std::uint32_t to, T&& msg) {
      KEYWAY_ASSERT_OWNER(owner_);
      stage(to, std::move(msg));
    }

    /// Publishes everything staged that fits, then updates the backlog flag
    /// and staged_total(). End of every loop turn.
    void flush() {
      KEYWAY_ASSERT_OWNER(owner_);
      std::size_t total = 0;
      bool over = false;
      for (std::uint32_t to = 0; to < m_.n_; ++to) {
        if (!out_[to].staged.empty()) flush_to(to);
        total += out_[to].staged.size();
        over = over || out_[to].staged.size() > m_.capacity_;
      }
      stats_->mesh_staged.set(total);
      if (over == backlogged_.load(std::memory_order_relaxed)) return;
      backlogged_.store(over, std::memory_order_relaxed);
      // Senders refused meanwhile wait for credit; tell them it is back
      // (wake() fences against their has_work() check).
      if (!over)
        for (std::uint32_t w = 0; w < m_.n_; ++w)
          if (w != id_ && m_.wakers_[w]->wake()) stats_->wakeups_sent.add();
    }

    /// Any thread: this endpoint holds more than the ring capacity staged
    /// for some destination (as of its last flush); senders must hold off.
    bool backlogged() const noexcept { return backlogged_.load(std::memory_order_relaxed); }

    /// Consumes every inbound ring whole; fn(T&) runs for each message.
    /// fn may send() or try_send() on this endpoint. Returns the count.
    /// ahead(T&) sees each message a few messages before fn does
    /// (spsc_ring::consume_all), to prefetch what fn will read.
    template <class Fn, class Ahead = no_lookahead>
    std::size_t drain(Fn&& fn, Ahead&& ahead = {}) {
      KEYWAY_ASSERT_OWNER(owner_);
      std::size_t total = 0;
      for (std::uint32_t from = 0; from < m_.n_; ++from) {
        link& l = *m_.links_[id_ * m_.n_ + from];
        const std::size_t n = l.ring.consume_all(fn, ahead);
        if (n == 0) continue;
        total += n;
        // Pairs with the sender raising sender_waiting, then re-checking room.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (l.sender_waiting.load(std::memory_order_relaxed) &&
            l.sender_waiting.exchange(false, std::memory_order_acq_rel)) {
          if (m_.wakers_[from]->wake()) stats_->wakeups_sent.add();
        }
      }
      stats_->mesh_received.add(total);
      return total;
    }

    /// Checked before the worker sleeps: inbound messages waiting, or staged
    /// output / a refused sender that can now make progress.
    bool has_work() {
      KEYWAY_ASSERT_OWNER(owner_);
      for (std::uint32_t from = 0; from < m_.n_; ++from)
        if (!m_.links_[id_ * m_.n_ + from]->ring.empty_approx()) return true;
      for (std::uint32_t to = 0; to < m_.n_; ++to) {
        out& o = out_[to];
        if (o.staged.empty() && !o.awaiting_credit) continue;
        if (inbound(to).ring.free_slots() > o.staged.size() && !m_.endpoints_[to]->backlogged()) {
          o.awaiting_credit = false;
          return true;
        }
      }
      return false;
    }

    /// Messages staged but not yet in a ring, for statistics.
    std::size_t staged(std::uint32_t to) const noexcept { return out_[to].staged.size(); }

   private:
    friend class mesh;
    struct out {
      std::vector<T> staged;
      std::size_t credit = 0;
      bool awaiting_credit = false;
    };

    endpoint(mesh& m, std::uint32_t id) : m_(m), id_(id), out_(m.n_) {
      for (out& o : out_) o.staged.reserve(batch_size);
    }

    /// The ring this endpoint writes into for `to` (inbound from `to`'s view).
    link& inbound(std::uint32_t to) noexcept { return *m_.links_[to * m_.n_ + id_]; }

    void refresh_credit(std::uint32_t to) noexcept {
      out& o = out_[to];
      const std::size_t free = inbound(to).ring.free_slots();
      o.credit = free > o.staged.size() ? free - o.staged.size() : 0;
    }

    void stage(std::uint32_t to, T&& msg) {
      out& o = out_[to];
      o.staged.push_back(std::move(msg));
      if (o.credit != 0) --o.credit;
      if (o.staged.size() >= batch_size) flush_to(to);
    }

    void flush_to(std::uint32_t to) {
      out& o = out_[to];
      link& l = inbound(to);
      const std::size_t n = l.ring.push_batch(std::span<T>(o.staged));
      if (n == o.staged.size()) {
        o.staged.clear();
      } else {
        o.staged.erase(o.staged.begin(), o.staged.begin() + static_cast<std::ptrdiff_t>(n));
        // Ring full: ask the receiver to wake us once it has drained.
        l.sender_waiting.store(true, std::memory_order_relaxed);
      }
      if (n == 0) return;
      stats_->mesh_sent.add(n);
      if (to != id_ && m_.wakers_[to]->wake()) stats_->wakeups_sent.add();
    }

    mesh& m_;
    const std::uint32_t id_;
    owner_check owner_;
    worker_stats* stats_ = nullptr;
    std::vector<out> out_;
    // Written by the owner at flush, read by every sender.
    alignas(cache_line) std::atomic<bool> backlogged_{false};
  };

  /// Endpoint of worker i. Hand each to its worker; use it only there.
  endpoint& at(std::uint32_t i) noexcept { return *endpoints_[i]; }

 private:
  struct link {
    explicit link(std::size_t capacity) : ring(capacity) {}
    spsc_ring<T> ring;
    alignas(cache_line) std::atomic<bool> sender_waiting{false};
  };

  const std::size_t n_;
  const std::size_t capacity_;
  std::vector<std::unique_ptr<link>> links_;  // [to * n + from]
  std::vector<waker*> wakers_;
  std::vector<std::unique_ptr<endpoint>> endpoints_;
};

}  // namespace keyway::core
