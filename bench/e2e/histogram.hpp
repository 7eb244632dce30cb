// e2e::histogram: a log-linear latency histogram in nanoseconds (the idea of
// HdrHistogram, in 60 lines). Values below 64 have a bucket each; above, every
// power of two is split into 32 linear buckets, so a reported percentile is
// within 1/32 (3.1 %) of the true value, from 1 ns to hours.
//
// Threading: one owner thread records; merge() the per-thread histograms
// after the threads are joined. Cost: record() is a clz, two shifts and an
// increment; 1,920 counters (15 KiB) per histogram, no allocation after
// construction.
#pragma once

#include <array>
#include <cstdint>

namespace keyway::bench::e2e {

class histogram {
 public:
  static constexpr int sub_bits = 6;  // 64 exact buckets, then 32 per octave
  static constexpr std::uint64_t half = 1u << (sub_bits - 1);
  static constexpr std::size_t bucket_count = 64 + (64 - sub_bits) * half;

  void record(std::uint64_t ns) noexcept {
    ++counts_[index_of(ns)];
    ++count_;
    sum_ += ns;
    if (ns > max_) max_ = ns;
    if (ns < min_) min_ = ns;
  }
  void merge(const histogram& o) noexcept;

  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t max() const noexcept { return count_ ? max_ : 0; }
  std::uint64_t min() const noexcept { return count_ ? min_ : 0; }
  double mean() const noexcept {
    return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0;
  }
  /// The value at percentile `p` (0..100]: the highest value of the bucket
  /// holding that rank, clamped to the observed maximum. 0 when empty.
  std::uint64_t percentile(double p) const noexcept;

  static std::size_t index_of(std::uint64_t v) noexcept {
    if (v < 64) return static_cast<std::size_t>(v);
    const int msb = 63 - __builtin_clzll(v);
    const int shift = msb - (sub_bits - 1);     // >= 1
    const std::uint64_t mantissa = v >> shift;  // [32, 63]
    return 64 + static_cast<std::size_t>(shift - 1) * half +
           static_cast<std::size_t>(mantissa - half);
  }
  /// The largest value that lands in bucket `i`.
  static std::uint64_t highest_in(std::size_t i) noexcept {
    if (i < 64) return i;
    const std::size_t k = i - 64;
    const int shift = static_cast<int>(k / half) + 1;
    const std::uint64_t mantissa = k % half + half;
    return ((mantissa + 1) << shift) - 1;
  }

 private:
  std::array<std::uint64_t, bucket_count> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
  std::uint64_t min_ = ~std::uint64_t{0};
};

}  // namespace keyway::bench::e2e
