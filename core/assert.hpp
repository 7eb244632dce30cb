// KEYWAY_ASSERT: invariant checks, compiled in for Debug builds and for the
// sanitizer presets (KEYWAY_ENABLE_ASSERTS), compiled out of Release.
// owner_check: records the thread that owns a piece of state and asserts that
// every entry point runs on it (Envoy's isThreadSafe()). Header only.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#if !defined(NDEBUG) || defined(KEYWAY_ENABLE_ASSERTS)
#define KEYWAY_ASSERTS_ON 1
#define KEYWAY_ASSERT(cond)                                                \
  do {                                                                     \
    if (!(cond)) ::keyway::core::assert_failed(#cond, __FILE__, __LINE__); \
  } while (0)
#else
#define KEYWAY_ASSERTS_ON 0
#define KEYWAY_ASSERT(cond) \
  do {                      \
  } while (0)
#endif

/// The one owner-thread check: `x` is anything with is_owner() (an
/// owner_check, a core::worker, a subject_index).
#define KEYWAY_ASSERT_OWNER(x) KEYWAY_ASSERT((x).is_owner())

namespace keyway::core {

[[noreturn]] inline void assert_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "keyway: assertion failed: %s (%s:%d)\n", what, file, line);
  std::abort();
}

class owner_check {
 public:
  /// Binds to the calling thread. Call once, on the owner thread.
  void bind_to_this_thread() noexcept {
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  bool is_owner() const noexcept {
    return owner_.load(std::memory_order_relaxed) == std::this_thread::get_id();
  }
  void assert_owner() const noexcept { KEYWAY_ASSERT_OWNER(*this); }

 private:
  std::atomic<std::thread::id> owner_{};
};

}  // namespace keyway::core
