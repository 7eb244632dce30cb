#include "daemon/probe.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace keyway::daemon {
namespace {

struct bounds_table {
  std::array<std::uint64_t, latency_histogram::buckets> ns{};
  bounds_table() {
    for (std::size_t i = 0; i < ns.size(); ++i)
      ns[i] = static_cast<std::uint64_t>(
          std::llround(1000.0 * std::exp2(static_cast<double>(i) / 2.0)));
  }
};
const bounds_table table;

}  // namespace

double latency_histogram::bound_ns(std::size_t i) noexcept {
  return static_cast<double>(table.ns[i]);
}

std::size_t latency_histogram::bucket_of(std::uint64_t ns) noexcept {
  // The first bound >= ns (buckets are "le"); past the last: +Inf. For ns in
  // [2^k, 2^(k+1)) that bucket is at least 2k - 19 (bound i is 1000 · 2^(i/2)
  // and 1000 > 2^9.96), so start at 2k - 20 and step: at most three compares,
  // where a binary search over 49 bounds mispredicted its way to ~60 instructions.
  const int k = std::bit_width(ns) - 1;
  std::size_t i = k > 10 ? std::min<std::size_t>(2 * k - 20, buckets) : 0;
  while (i < buckets && table.ns[i] < ns) ++i;
  return i;
}

}  // namespace keyway::daemon
