// Hash functions shared by the partitioner strategies. Internal: include only from
// core/*_partitioner.cpp. XXH3 is compiled inline (XXH_INLINE_ALL, which also renames its
// symbols so this cannot clash with libxxhash), so pick() makes no call into the library.
// Pure functions: any thread, no allocation.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

namespace keyway::core::detail {

inline std::uint64_t key_hash(std::span<const std::byte> key, std::uint64_t seed) noexcept {
  return XXH3_64bits_withSeed(key.data(), key.size(), seed);
}

/// XXH3 of (a, b) written as 8 little-endian bytes, so that scores (slot/member, and
/// member/vnode on the ring) are the same on every host.
inline std::uint64_t pair_hash(std::uint32_t a, std::uint32_t b, std::uint64_t seed) noexcept {
  std::uint64_t v = (std::uint64_t{b} << 32) | a;  // bytes a0..a3 b0..b3 when little-endian
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  unsigned char buf[8];
  std::memcpy(buf, &v, sizeof buf);
  return XXH3_64bits_withSeed(buf, sizeof buf, seed);
}

}  // namespace keyway::core::detail
