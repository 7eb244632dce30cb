#include "core/range_partitioner.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstring>
#include <utility>

namespace keyway::core {

int compare_key_bytes(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  const std::size_t common = std::min(a.size(), b.size());
  if (common > 0) {
    // memcmp compares as unsigned char, which is the order we want.
    if (const int c = std::memcmp(a.data(), b.data(), common); c != 0) return c;
  }
  return a.size() < b.size() ? -1 : (a.size() > b.size() ? 1 : 0);
}

namespace {

// The first 8 bytes as a big-endian integer, zero-padded: integer order of two prefixes
// is byte order of the strings, except that equal prefixes say nothing.
std::uint64_t prefix_of(std::span<const std::byte> s) noexcept {
  std::uint64_t v = 0;
  if (s.size() >= 8) {
    std::memcpy(&v, s.data(), 8);
    return std::endian::native == std::endian::little ? __builtin_bswap64(v) : v;
  }
  for (std::size_t i = 0; i < s.size(); ++i) {
    v |= std::uint64_t{std::to_integer<unsigned char>(s[i])} << (56 - 8 * i);
  }
  return v;
}

}  // namespace

range_partitioner::range_partitioner(std::vector<std::string> split_points)
    : splits_(std::move(split_points)) {
  for (std::size_t i = 1; i < splits_.size(); ++i) {
    assert(compare_key_bytes(std::as_bytes(std::span(splits_[i - 1])),
                             std::as_bytes(std::span(splits_[i]))) < 0);
  }
  prefixes_.reserve(splits_.size());
  for (const std::string& s : splits_) prefixes_.push_back(prefix_of(std::as_bytes(std::span(s))));
  owners_.resize(splits_.size() + 1);
}

std::size_t range_partitioner::range_of(std::span<const std::byte> key) const noexcept {
  // The answer is the number of split points <= key, so a key equal to s[i] lands in range
  // i + 1. First count the prefixes < the key's (branch-free, so the compiler can use
  // cmov), then walk the run of splits whose 8-byte prefix equals the key's, if any.
  const std::uint64_t kp = prefix_of(key);
  const std::uint64_t* base = prefixes_.data();
  std::size_t len = prefixes_.size();
  if (len == 0) return 0;
  while (len > 1) {
    const std::size_t half = len / 2;
    base += static_cast<std::size_t>(base[half - 1] < kp) * half;  // no branch to mispredict
    len -= half;
  }
  std::size_t i = static_cast<std::size_t>(base - prefixes_.data()) + (*base < kp ? 1 : 0);
  while (i < prefixes_.size() && prefixes_[i] == kp &&
         compare_key_bytes(std::as_bytes(std::span(splits_[i])), key) <= 0) {
    ++i;
  }
  return i;
}

result<void> range_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  if (std::find(members_.begin(), members_.end(), member) != members_.end()) {
    return unexpected(errc::duplicate_member);
  }
  if (members_.size() == ranges()) return unexpected(errc::not_supported);
  members_.push_back(member);
  rebuild();
  return {};
}

result<void> range_partitioner::remove(std::uint32_t member) {
  const auto it = std::find(members_.begin(), members_.end(), member);
  if (it == members_.end()) return unexpected(errc::unknown_member);
  members_.erase(it);
  rebuild();
  return {};
}

void range_partitioner::rebuild() {
  if (members_.empty()) return;
  for (std::size_t r = 0; r < owners_.size(); ++r) owners_[r] = members_[r % members_.size()];
}

}  // namespace keyway::core
