// Cache-line constants shared by the queues and statistics blocks. Header only.
#pragma once

#include <cstddef>

namespace keyway::core {

/// x86-64 line size. std::hardware_destructive_interference_size is not
/// stable across compilers (g++ warns on it), so the value is fixed here.
inline constexpr std::size_t cache_line = 64;

/// Starts moving the line that holds `p` to this CPU in a state it may write
/// (x86 PREFETCHW, which CPUs without it run as a NOP). For memory that
/// another CPU wrote last and this one is about to overwrite: a plain
/// prefetch (g++ turns __builtin_prefetch(p, 1) into PREFETCHT0 unless built
/// with -mprfchw) brings the line in shared, and the write then still waits
/// for the other CPU's copy to be invalidated.
inline void prefetch_for_write(const void* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetchw %0" ::"m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1);
#endif
}

}  // namespace keyway::core
