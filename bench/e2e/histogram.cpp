#include "bench/e2e/histogram.hpp"

#include <algorithm>
#include <cmath>

namespace keyway::bench::e2e {

void histogram::merge(const histogram& o) noexcept {
  for (std::size_t i = 0; i < bucket_count; ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  max_ = std::max(max_, o.max_);
  min_ = std::min(min_, o.min_);
}

std::uint64_t histogram::percentile(double p) const noexcept {
  if (count_ == 0) return 0;
  // The rank of the sample at p, 1-based: p99 of 1000 samples is the 990th.
  auto rank = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < bucket_count; ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::min(highest_in(i), max_);
  }
  return max_;
}

}  // namespace keyway::bench::e2e
