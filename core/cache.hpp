// Cache-line constants shared by the queues and statistics blocks. Header only.
#pragma once

#include <cstddef>

namespace keyway::core {

/// x86-64 line size. std::hardware_destructive_interference_size is not
/// stable across compilers (g++ warns on it), so the value is fixed here.
inline constexpr std::size_t cache_line = 64;

}  // namespace keyway::core
