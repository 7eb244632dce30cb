#include "daemon/probe.hpp"

#include <algorithm>
#include <cmath>

namespace keyway::daemon {
namespace {

struct bounds_table {
  std::array<std::uint64_t, latency_histogram::buckets> ns{};
  bounds_table() {
    for (std::size_t i = 0; i < ns.size(); ++i)
      ns[i] = static_cast<std::uint64_t>(std::llround(1000.0 * std::exp2(static_cast<double>(i) / 2.0)));
  }
};
const bounds_table table;

}  // namespace

double latency_histogram::bound_ns(std::size_t i) noexcept { return static_cast<double>(table.ns[i]); }

std::size_t latency_histogram::bucket_of(std::uint64_t ns) noexcept {
  // The first bound >= ns (buckets are "le"); past the last: +Inf.
  return static_cast<std::size_t>(std::lower_bound(table.ns.begin(), table.ns.end(), ns) - table.ns.begin());
}

}  // namespace keyway::daemon
