// random_ids: distinct, not dense member ids (like subscription ids) for the
// partitioner tests. Test-only, header only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <unordered_set>
#include <vector>

namespace keyway::test {

inline std::vector<std::uint32_t> random_ids(std::size_t count, std::mt19937_64& rng) {
  std::unordered_set<std::uint32_t> seen;
  std::vector<std::uint32_t> ids;
  while (ids.size() < count) {
    const auto id = static_cast<std::uint32_t>(rng());
    if (seen.insert(id).second) ids.push_back(id);
  }
  return ids;
}

}  // namespace keyway::test
