// Seed for property tests: KEYWAY_TEST_SEED if set, else random. Every test
// that uses it prints it, so a failure can be replayed with the same seed.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace keyway::test {

inline std::uint64_t seed() {
  std::uint64_t s;
  if (const char* env = std::getenv("KEYWAY_TEST_SEED")) {
    s = std::strtoull(env, nullptr, 10);
  } else {
    s = (std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  }
  MESSAGE("seed = " << s << " (replay with KEYWAY_TEST_SEED=" << s << ")");
  return s;
}

}  // namespace keyway::test
