#include "core/spsc_ring.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

using keyway::core::spsc_ring;

TEST_CASE("spsc_ring rounds capacity up to a power of two") {
  CHECK(spsc_ring<int>(1).capacity() == 2);
  CHECK(spsc_ring<int>(5).capacity() == 8);
  CHECK(spsc_ring<int>(16).capacity() == 16);
}

TEST_CASE("spsc_ring full and empty edges") {
  spsc_ring<int> r(4);
  int v = -1;
  CHECK_FALSE(r.try_pop(v));
  for (int i = 0; i < 4; ++i) CHECK(r.try_push(i));
  CHECK_FALSE(r.try_push(99));
  CHECK(r.free_slots() == 0);
  for (int i = 0; i < 4; ++i) {
    REQUIRE(r.try_pop(v));
    CHECK(v == i);
  }
  CHECK_FALSE(r.try_pop(v));
  CHECK(r.free_slots() == 4);
}
