// latency_histogram::bucket_of against the definition: the first upper bound
// >= ns, or +Inf past the last.
#include "daemon/probe.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "tests/unit/test_seed.hpp"

using keyway::daemon::latency_histogram;

namespace {
std::size_t by_definition(std::uint64_t ns) {
  for (std::size_t i = 0; i < latency_histogram::buckets; ++i)
    if (static_cast<double>(ns) <= latency_histogram::bound_ns(i)) return i;
  return latency_histogram::buckets;
}
}  // namespace

TEST_CASE("latency_histogram::bucket_of finds the first bound at or above the value") {
  std::vector<std::uint64_t> values{0,    1,    999,  1000,
                                    1001, 1414, 1415, std::numeric_limits<std::uint64_t>::max()};
  for (std::size_t i = 0; i < latency_histogram::buckets; ++i) {
    const auto b = static_cast<std::uint64_t>(latency_histogram::bound_ns(i));
    values.insert(values.end(), {b - 1, b, b + 1});
  }
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t p = std::uint64_t{1} << k;
    values.insert(values.end(), {p - 1, p, p + 1});
  }
  const auto seed = keyway::test::seed();
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 100'000; ++i) values.push_back(rng() >> (rng() % 64));
  for (std::uint64_t v : values) {
    INFO("ns = ", v, ", seed ", seed);
    REQUIRE(latency_histogram::bucket_of(v) == by_definition(v));
  }
  CHECK(latency_histogram::bucket_of(0) == 0);
  CHECK(latency_histogram::bucket_of(std::numeric_limits<std::uint64_t>::max()) ==
        latency_histogram::buckets);
}
