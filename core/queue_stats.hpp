// queue_stats: the sent/received snapshot every queue of core/ reports.
//
// No queue keeps a separate statistics counter. Each one already has, on a
// cache line of its own, a free-running index that only grows and that
// counts exactly the items that went in (the producer-side index) or came out
// (the consumer-side index). The snapshot reads those two indices, so the hot
// path pays nothing for statistics: no extra store, and in particular no
// shared fetch_add between the producers of an MPSC/MPMC queue beyond the
// claim on the tail they must make anyway.
//
// Threads: any thread may take a snapshot at any time. A reader from a third
// thread (a metrics scrape) pulls the two index lines into its cache; at scrape
// rates that costs the queue's owners nothing measurable.
// Consistency: received is loaded (acquire) before sent, so a snapshot never
// shows received > sent; the two values are not from one instant.
#pragma once

#include <atomic>
#include <cstdint>

namespace keyway::core {

struct queue_stats {
  std::uint64_t sent = 0;      // items that entered the queue
  std::uint64_t received = 0;  // items taken out of it

  /// Items inside the queue at about the time of the snapshot.
  std::uint64_t depth() const noexcept { return sent - received; }
};

/// Snapshot from a producer index and a consumer index that count items one
/// for one. Any thread.
inline queue_stats load_queue_stats(const std::atomic<std::uint64_t>& sent,
                                    const std::atomic<std::uint64_t>& received) noexcept {
  queue_stats s;
  s.received = received.load(std::memory_order_acquire);
  s.sent = sent.load(std::memory_order_acquire);
  return s;
}

}  // namespace keyway::core
