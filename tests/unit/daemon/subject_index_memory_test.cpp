// subject_index::cost_bytes() against the heap one replica really spends:
// mallinfo2() before and after adding subscriptions to a fresh index. Skipped
// under the sanitizers, whose allocator mallinfo2() does not see.
#include "daemon/subject_index.hpp"

#include <doctest/doctest.h>
#include <malloc.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using keyway::daemon::index_limits;
using keyway::daemon::sub_ref;
using keyway::daemon::subject_index;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KEYWAY_INDEX_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KEYWAY_INDEX_TEST_SANITIZED 1
#endif
#endif

#ifndef KEYWAY_INDEX_TEST_SANITIZED
namespace {

sub_ref ref(std::uint32_t uid) {
  return sub_ref{uid, 0, 1, uid};
}

/// "t12_3": a token no other subscription of the test has.
std::string fresh_token(char prefix, std::size_t a, std::size_t b) {
  std::string s(1, prefix);
  s += std::to_string(a);
  s += '_';
  s += std::to_string(b);
  return s;
}

/// Heap in use: malloc'd chunks (with their headers) and mmapped blocks.
std::size_t heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

/// Chunks that glibc's per-thread cache would hand out without mallinfo2()
/// seeing it (it counts cached chunks as in use): taken before measuring.
std::vector<void*> drain_thread_cache() {
  std::vector<void*> held;
  held.reserve(8 * 64);
  for (std::size_t size = 8; size <= 1024; size += 16)
    for (int i = 0; i < 8; ++i) held.push_back(std::malloc(size));
  return held;
}

/// Adds patterns[i] / groups[i] to a fresh index and checks that the heap grew
/// by no more than the sum of cost_bytes().
void check_cost(const std::string& what, const index_limits& lim,
                const std::vector<std::string>& patterns, const std::vector<std::string>& groups) {
  CAPTURE(what);
  std::size_t charged = 0;
  for (std::size_t i = 0; i < patterns.size(); ++i)
    charged += subject_index::cost_bytes(patterns[i], groups[i], lim.group_slots);
  auto idx = std::make_unique<subject_index>(lim);
  std::size_t added = 0;
  const std::vector<void*> held = drain_thread_cache();
  const std::size_t before = heap_in_use();
  for (std::size_t i = 0; i < patterns.size(); ++i)
    added += idx->add(patterns[i], groups[i], ref(static_cast<std::uint32_t>(i + 1))).ok();
  const std::size_t after = heap_in_use();
  for (void* p : held) std::free(p);
  REQUIRE(added == patterns.size());
  const std::size_t used = after - before;
  MESSAGE(what << ": " << used << " bytes measured (" << used / patterns.size()
               << " per subscription), " << charged << " charged (" << charged / patterns.size()
               << ")");
  CHECK(used <= charged);
}

}  // namespace
#endif

TEST_CASE("subject_index::cost_bytes is an upper bound of the heap one replica spends") {
#ifdef KEYWAY_INDEX_TEST_SANITIZED
  MESSAGE("skipped: the sanitizer's allocator does not show in mallinfo2()");
#else
  const index_limits lim{4096, 1024, 256};  // room for the 250 wildcard shapes below
  std::vector<std::string> pats, groups;
  auto reset = [&] {
    pats.clear();
    groups.clear();
  };
  for (std::size_t i = 0; i < 1000; ++i) {  // fresh literal tokens
    std::string p;
    for (std::size_t t = 0; t < 32; ++t) p.append(t ? "." : "").append(fresh_token('t', i, t));
    pats.push_back(p);
    groups.emplace_back();
  }
  check_cost("1000 patterns of 32 fresh tokens", lim, pats, groups);

  reset();
  for (int i = 0; i < 100; ++i) {
    std::string p;
    for (int t = 0; t < 8; ++t)
      p.append(t ? "." : "").append(std::string(40, 'a' + t)).append(std::to_string(i));
    pats.push_back(p);
    groups.emplace_back();
  }
  check_cost("100 patterns of 8 fresh 41-byte tokens", lim, pats, groups);

  reset();
  for (std::size_t len = 2; pats.size() < 250; ++len) {  // a new shape each
    for (std::size_t star = 0; star < len && pats.size() < 250; ++star) {
      std::string p;
      for (std::size_t t = 0; t < len; ++t) {
        const bool tail = pats.size() % 2 == 1 && t + 1 == len && star + 1 != len;
        p.append(t ? "." : "")
            .append(t == star ? "*"
                    : tail    ? ">"
                              : fresh_token('w', pats.size(), t));
      }
      pats.push_back(p);
      groups.emplace_back();
    }
  }
  check_cost("250 wildcard patterns of new shapes", lim, pats, groups);

  reset();
  for (int i = 0; i < 200; ++i) {
    pats.push_back("q" + std::to_string(i) + ".x");
    groups.push_back("grp" + std::to_string(i));
  }
  check_cost("200 queue groups of one member on their own patterns", lim, pats, groups);

  reset();
  for (int i = 0; i < 300; ++i) {
    pats.push_back("qo.x");
    groups.push_back("consumers-of-the-orders-" + std::to_string(i));
  }
  check_cost("300 queue groups with long names on one pattern", lim, pats, groups);

  reset();
  for (int i = 0; i < 1024; ++i) {
    pats.push_back("qo.x");
    groups.push_back("grp");
  }
  check_cost("one queue group of 1024 members", lim, pats, groups);

  reset();
  for (int i = 0; i < 20; ++i) {
    pats.push_back("big." + std::to_string(i));
    groups.push_back("g");
  }
  check_cost("20 queue groups of 65536 slots", index_limits{65536, 1024, 256}, pats, groups);

  // One subscription on an empty index, on 200 of them (glibc moves up to 7
  // chunks of a size into its thread cache at once, which mallinfo2() counts as
  // in use: measured once, that noise is larger than one subscription).
  for (const auto& [p, g] : std::vector<std::pair<std::string, std::string> >{
           {"a.b.c", ""}, {"a.*.>", ""}, {"x.y", "g"}, {"x.*", "a-group-name-longer-than-15"}}) {
    CAPTURE(p);
    CAPTURE(g);
    const std::size_t charged = subject_index::cost_bytes(p, g);
    std::vector<std::unique_ptr<subject_index> > indexes(200);
    for (auto& idx : indexes) idx = std::make_unique<subject_index>();
    std::size_t added = 0;
    const std::vector<void*> held = drain_thread_cache();
    const std::size_t before = heap_in_use();
    for (auto& idx : indexes) added += idx->add(p, g, ref(1)).ok();
    const std::size_t used = (heap_in_use() - before) / indexes.size();
    for (void* ptr : held) std::free(ptr);
    REQUIRE(added == indexes.size());
    MESSAGE("one subscription '" << p << "' '" << g << "' on an empty index: " << used
                                 << " bytes measured, " << charged << " charged");
    CHECK(used <= charged);
  }
#endif
}
