// Queue micro-benchmarks: each queue of core/ against its moodycamel
// counterpart, with the same 8-byte message, the same message count, the same
// thread placement and the same spin/yield policy, measured in the same run.
//
// Figure: ns/msg = wall time from "go" until the last consumer is done,
// divided by the messages moved. Each case and its baseline run 5 times,
// alternating; ns_per_msg is the MEDIAN of the 5, extra "best" is the fastest.
// Threads are created and pinned before "go", queues are constructed before it
// too (unbounded queues allocate their blocks inside the timing, as moodycamel
// does).
//
// Placement: thread k (producers first, then consumers) is pinned to CPU
// k mod n, n = CPUs in the affinity mask. With 1 CPU pinning is skipped. When
// there are more threads than CPUs (MPSC 2P1C on 2 CPUs) the case name says
// so: two threads share a CPU and the spin policy (pause, then yield after 128
// misses) matters as much as the queue.
//
// Baselines: moodycamel::ReaderWriterQueue for SPSC (try_enqueue on a
// preallocated queue for the bounded ring, enqueue for the unbounded queue),
// moodycamel::ConcurrentQueue with a ProducerToken per producer and a
// ConsumerToken per consumer (its fastest mode) for MPSC/MPMC, preallocated
// with the same 4096 slots; try_enqueue for the bounded 1-producer case,
// enqueue otherwise (see cq_subject for why).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <concurrentqueue/concurrentqueue.h>
#include <readerwriterqueue/readerwriterqueue.h>

#include "bench/report.hpp"
#include "core/mpmc_queue.hpp"
#include "core/mpsc_queue.hpp"
#include "core/spsc_ring.hpp"
#include "core/unbounded_mpsc_queue.hpp"
#include "core/unbounded_spsc_queue.hpp"
#include "core/worker.hpp"

namespace keyway::bench {
namespace {

using msg = std::uint64_t;  // the 8-byte message of every case
constexpr std::size_t bounded_capacity = 4096;
constexpr int repetitions = 5;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/// The one wait policy for every case and baseline: after a miss (queue full
/// or empty) spin with pause, and after 128 misses in a row yield the CPU.
struct backoff {
  unsigned misses = 0;
  void wait() noexcept {
    if (++misses < 128)
      cpu_relax();
    else
      std::this_thread::yield();
  }
  void reset() noexcept { misses = 0; }
};

struct shape {
  int producers;
  int consumers;
  bool producers_share_cpu = false;  // all producers on the first CPU, consumers on the others
};

std::string shape_name(shape s, int cpus) {
  std::string n = std::to_string(s.producers) + "P" + std::to_string(s.consumers) + "C";
  if (s.producers_share_cpu && cpus > 1)
    n += " (P on 1 CPU)";
  else if (s.producers + s.consumers > cpus)
    n += " on " + std::to_string(cpus) + " CPU";
  return n;
}

/// CPU of thread k (producers first, then consumers).
int cpu_for(shape s, int k, const std::vector<int>& cpus) {
  const auto n = static_cast<int>(cpus.size());
  if (s.producers_share_cpu && n > 1)
    return k < s.producers ? cpus[0]
                           : cpus[static_cast<std::size_t>(1 + (k - s.producers) % (n - 1))];
  return cpus[static_cast<std::size_t>(k % n)];
}

/// One benchmark subject: builds its queue, then hands out the producer and
/// consumer bodies. produce(id, count) pushes values 1..count;
/// consume(id, remaining) pops until `remaining` (shared by the consumers)
/// reaches zero and returns the sum of what it popped.
struct subject {
  std::function<void()> setup;     // constructs a fresh queue
  std::function<void()> teardown;  // destroys it
  std::function<void(int, std::uint64_t)> produce;
  std::function<std::uint64_t(int, std::atomic<std::int64_t>&)> consume;
};

/// Pops with `pop(v)` until all messages are accounted for. Counts are
/// published to `remaining` every 256 messages and on every miss, so the
/// shared counter costs next to nothing and no consumer waits for ever.
template <class Pop>
std::uint64_t consume_loop(std::atomic<std::int64_t>& remaining, Pop pop) {
  std::uint64_t sum = 0;
  std::int64_t local = 0;
  backoff b;
  msg v;
  for (;;) {
    if (pop(v)) {
      b.reset();
      sum += v;
      if (++local == 256) {
        remaining.fetch_sub(local, std::memory_order_relaxed);
        local = 0;
      }
      continue;
    }
    if (local != 0) {
      remaining.fetch_sub(local, std::memory_order_relaxed);
      local = 0;
    }
    if (remaining.load(std::memory_order_relaxed) <= 0) return sum;
    b.wait();
  }
}

template <class Push>
void produce_loop(std::uint64_t count, Push push) {
  for (msg i = 1; i <= count; ++i) {
    if (push(i)) continue;
    backoff b;
    do b.wait();
    while (!push(i));
  }
}

constexpr std::size_t bulk = 16;

/// Bulk variant: push_some(first, n) takes up to n messages from first and
/// returns how many it took.
template <class PushSome>
void produce_bulk_loop(std::uint64_t count, PushSome push_some) {
  msg buf[bulk];
  for (msg i = 1; i <= count;) {
    std::size_t n = 0;
    for (; n < bulk && i + n <= count; ++n) buf[n] = i + n;
    i += n;
    std::size_t done = push_some(buf, n);
    if (done == n) continue;
    backoff b;
    do {
      b.wait();
      done += push_some(buf + done, n - done);
    } while (done != n);
  }
}

/// Bulk variant: pop_some(out, n) moves up to n messages into out.
template <class PopSome>
std::uint64_t consume_bulk_loop(std::atomic<std::int64_t>& remaining, PopSome pop_some) {
  std::uint64_t sum = 0;
  std::int64_t local = 0;
  backoff b;
  msg buf[bulk];
  for (;;) {
    if (const std::size_t n = pop_some(buf, bulk); n != 0) {
      b.reset();
      for (std::size_t i = 0; i < n; ++i) sum += buf[i];
      if ((local += static_cast<std::int64_t>(n)) >= 256) {
        remaining.fetch_sub(local, std::memory_order_relaxed);
        local = 0;
      }
      continue;
    }
    if (local != 0) {
      remaining.fetch_sub(local, std::memory_order_relaxed);
      local = 0;
    }
    if (remaining.load(std::memory_order_relaxed) <= 0) return sum;
    b.wait();
  }
}

/// Runs one timed round; returns ns per message.
double timed_round(const subject& s, shape sh, std::uint64_t per_producer,
                   const std::vector<int>& cpus) {
  s.setup();
  const std::uint64_t total = per_producer * static_cast<std::uint64_t>(sh.producers);
  std::atomic<bool> go{false};
  std::atomic<int> ready{0};
  std::atomic<std::int64_t> remaining{static_cast<std::int64_t>(total)};
  std::atomic<std::uint64_t> sum{0};
  std::vector<std::thread> threads;
  const int n = sh.producers + sh.consumers;
  for (int k = 0; k < n; ++k) {
    threads.emplace_back([&, k] {
      if (cpus.size() > 1) (void)core::pin_current_thread(cpu_for(sh, k, cpus));  // best effort
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) cpu_relax();
      if (k < sh.producers)
        s.produce(k, per_producer);
      else
        sum.fetch_add(s.consume(k - sh.producers, remaining));
    });
  }
  while (ready.load() != n) std::this_thread::yield();
  const auto t0 = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  const auto t1 = std::chrono::steady_clock::now();
  s.teardown();
  const std::uint64_t expect =
      static_cast<std::uint64_t>(sh.producers) * (per_producer * (per_producer + 1) / 2);
  if (sum.load() != expect) {
    std::fprintf(stderr, "queue bench: checksum mismatch (%llu != %llu)\n",
                 static_cast<unsigned long long>(sum.load()),
                 static_cast<unsigned long long>(expect));
    std::abort();
  }
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(total);
}

void compare(report& out, const std::string& name, const subject& mine,
             const std::string& base_name, const subject& base, shape sh, std::uint64_t messages,
             const std::vector<int>& cpus) {
  if (!selected(name)) return;
  const std::uint64_t per_producer = messages / static_cast<std::uint64_t>(sh.producers);
  row r = compare_alternating(
      name, [&] { return timed_round(mine, sh, per_producer, cpus); }, base_name,
      [&] { return timed_round(base, sh, per_producer, cpus); }, repetitions);
  r.extra["messages"] =
      static_cast<double>(per_producer * static_cast<std::uint64_t>(sh.producers));
  out.add(std::move(r));
}

// ---- subjects ---------------------------------------------------------------

subject spsc_ring_subject(std::shared_ptr<std::unique_ptr<core::spsc_ring<msg>>> h) {
  return {[h] { *h = std::make_unique<core::spsc_ring<msg>>(bounded_capacity); },
          [h] { h->reset(); },
          [h](int, std::uint64_t n) {
            auto& q = **h;
            produce_loop(n, [&](msg v) { return q.try_push(v); });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            return consume_loop(rem, [&](msg& v) { return q.try_pop(v); });
          }};
}

subject spsc_ring_bulk_subject(std::shared_ptr<std::unique_ptr<core::spsc_ring<msg>>> h) {
  return {[h] { *h = std::make_unique<core::spsc_ring<msg>>(bounded_capacity); },
          [h] { h->reset(); },
          [h](int, std::uint64_t n) {
            auto& q = **h;
            produce_bulk_loop(
                n, [&](msg* p, std::size_t k) { return q.push_batch(std::span<msg>(p, k)); });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            return consume_bulk_loop(
                rem, [&](msg* p, std::size_t k) { return q.drain(std::span<msg>(p, k)); });
          }};
}

subject rwq_subject(std::shared_ptr<std::unique_ptr<moodycamel::ReaderWriterQueue<msg>>> h,
                    bool bounded) {
  return {[h] { *h = std::make_unique<moodycamel::ReaderWriterQueue<msg>>(bounded_capacity); },
          [h] { h->reset(); },
          [h, bounded](int, std::uint64_t n) {
            auto& q = **h;
            if (bounded)
              produce_loop(n, [&](msg v) { return q.try_enqueue(v); });
            else
              produce_loop(n, [&](msg v) { return q.enqueue(v); });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            return consume_loop(rem, [&](msg& v) { return q.try_dequeue(v); });
          }};
}

subject unbounded_spsc_subject(
    std::shared_ptr<std::unique_ptr<core::unbounded_spsc_queue<msg>>> h) {
  return {[h] { *h = std::make_unique<core::unbounded_spsc_queue<msg>>(); }, [h] { h->reset(); },
          [h](int, std::uint64_t n) {
            auto& q = **h;
            produce_loop(n, [&](msg v) {
              q.push(v);
              return true;
            });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            return consume_loop(rem, [&](msg& v) { return q.try_pop(v); });
          }};
}

/// Any of mpsc_queue / mpmc_queue / unbounded_mpsc_queue.
template <class Q, bool Bounded>
subject core_multi_subject(std::shared_ptr<std::unique_ptr<Q>> h) {
  return {[h] {
            if constexpr (Bounded)
              *h = std::make_unique<Q>(bounded_capacity);
            else
              *h = std::make_unique<Q>();
          },
          [h] { h->reset(); },
          [h](int, std::uint64_t n) {
            auto& q = **h;
            if constexpr (Bounded) {
              produce_loop(n, [&](msg v) { return q.try_push(v); });
            } else {
              produce_loop(n, [&](msg v) {
                q.push(v);
                return true;
              });
            }
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            return consume_loop(rem, [&](msg& v) { return q.try_pop(v); });
          }};
}

/// try_enqueue only when there is a single producer: with two, the first one
/// takes every block of the preallocated pool and keeps them (explicit
/// producers never give blocks back), so the second one's try_enqueue fails
/// for ever and the run livelocks. Seen here with moodycamel 1.0.3 (Debian 12).
/// enqueue lets it grow instead, which favours the baseline: its producers
/// never wait for room.
subject cq_subject(std::shared_ptr<std::unique_ptr<moodycamel::ConcurrentQueue<msg>>> h,
                   bool bounded) {
  return {[h] { *h = std::make_unique<moodycamel::ConcurrentQueue<msg>>(bounded_capacity); },
          [h] { h->reset(); },
          [h, bounded](int, std::uint64_t n) {
            auto& q = **h;
            moodycamel::ProducerToken tok(q);
            if (bounded)
              produce_loop(n, [&](msg v) { return q.try_enqueue(tok, v); });
            else
              produce_loop(n, [&](msg v) { return q.enqueue(tok, v); });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            moodycamel::ConsumerToken tok(q);
            return consume_loop(rem, [&](msg& v) { return q.try_dequeue(tok, v); });
          }};
}

// g++ 12 reports a false -Wstringop-overflow inside moodycamel's
// enqueue_bulk once it is inlined here (an atomic load "writing 8 bytes into a
// region of size 0"); the code is fine, the warning is silenced for this
// function only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstringop-overflow"
subject cq_bulk_subject(std::shared_ptr<std::unique_ptr<moodycamel::ConcurrentQueue<msg>>> h) {
  return {[h] { *h = std::make_unique<moodycamel::ConcurrentQueue<msg>>(bounded_capacity); },
          [h] { h->reset(); },
          [h](int, std::uint64_t n) {
            auto& q = **h;
            moodycamel::ProducerToken tok(q);
            // All or nothing: try_enqueue_bulk takes the whole batch or none.
            produce_bulk_loop(n, [&](msg* p, std::size_t k) {
              return q.try_enqueue_bulk(tok, p, k) ? k : std::size_t{0};
            });
          },
          [h](int, std::atomic<std::int64_t>& rem) {
            auto& q = **h;
            moodycamel::ConsumerToken tok(q);
            return consume_bulk_loop(
                rem, [&](msg* p, std::size_t k) { return q.try_dequeue_bulk(tok, p, k); });
          }};
}

#pragma GCC diagnostic pop

template <class T>
std::shared_ptr<std::unique_ptr<T>> slot_for() {
  return std::make_shared<std::unique_ptr<T>>();
}

}  // namespace

void run_queue_benches(const options& opt, report& out) {
  const std::vector<int> cpus = core::allowed_cpus();
  const int ncpu = std::max<int>(1, static_cast<int>(cpus.size()));
  const std::uint64_t spsc_n = opt.messages ? opt.messages : (opt.quick ? 2'000'000 : 20'000'000);
  const std::uint64_t multi_n = opt.messages ? opt.messages : (opt.quick ? 1'000'000 : 10'000'000);

  const shape one_one{1, 1};
  compare(out, "spsc_ring 8B 1P1C", spsc_ring_subject(slot_for<core::spsc_ring<msg>>()),
          "moodycamel::ReaderWriterQueue 8B try_enqueue",
          rwq_subject(slot_for<moodycamel::ReaderWriterQueue<msg>>(), true), one_one, spsc_n, cpus);
  // Bulk on both sides: ReaderWriterQueue has no bulk API, so the baseline is
  // ConcurrentQueue's bulk calls with tokens, one producer, one consumer.
  compare(out, "spsc_ring 8B 1P1C bulk16 push_batch/drain",
          spsc_ring_bulk_subject(slot_for<core::spsc_ring<msg>>()),
          "moodycamel::ConcurrentQueue 8B 1P1C bulk16",
          cq_bulk_subject(slot_for<moodycamel::ConcurrentQueue<msg>>()), one_one, spsc_n, cpus);
  compare(out, "unbounded_spsc_queue 8B 1P1C",
          unbounded_spsc_subject(slot_for<core::unbounded_spsc_queue<msg>>()),
          "moodycamel::ReaderWriterQueue 8B enqueue",
          rwq_subject(slot_for<moodycamel::ReaderWriterQueue<msg>>(), false), one_one, spsc_n,
          cpus);

  const shape mpsc_shape{2, 1, std::getenv("KWQB_SHARE") != nullptr};
  const std::string mpsc_name = shape_name(mpsc_shape, ncpu);
  compare(out, "mpsc_queue 8B " + mpsc_name,
          core_multi_subject<core::mpsc_queue<msg>, true>(slot_for<core::mpsc_queue<msg>>()),
          "moodycamel::ConcurrentQueue 8B enqueue " + mpsc_name,
          cq_subject(slot_for<moodycamel::ConcurrentQueue<msg>>(), false), mpsc_shape, multi_n,
          cpus);
  compare(out, "unbounded_mpsc_queue 8B " + mpsc_name,
          core_multi_subject<core::unbounded_mpsc_queue<msg>, false>(
              slot_for<core::unbounded_mpsc_queue<msg>>()),
          "moodycamel::ConcurrentQueue 8B enqueue " + mpsc_name,
          cq_subject(slot_for<moodycamel::ConcurrentQueue<msg>>(), false), mpsc_shape, multi_n,
          cpus);

  // 2P2C needs 4 CPUs to mean anything; on fewer, 1P1C through the MPMC code.
  const shape mpmc_shape = ncpu >= 4 ? shape{2, 2} : shape{1, 1};
  const std::string mpmc_name = shape_name(mpmc_shape, ncpu);
  const bool mpmc_bounded_baseline = mpmc_shape.producers == 1;
  compare(out, "mpmc_queue 8B " + mpmc_name,
          core_multi_subject<core::mpmc_queue<msg>, true>(slot_for<core::mpmc_queue<msg>>()),
          std::string("moodycamel::ConcurrentQueue 8B ") +
              (mpmc_bounded_baseline ? "try_enqueue " : "enqueue ") + mpmc_name,
          cq_subject(slot_for<moodycamel::ConcurrentQueue<msg>>(), mpmc_bounded_baseline),
          mpmc_shape, multi_n, cpus);
}

}  // namespace keyway::bench
