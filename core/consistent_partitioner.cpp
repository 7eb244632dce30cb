#include "core/consistent_partitioner.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>

#include "core/partition_hash.hpp"

namespace keyway::core {

consistent_partitioner::consistent_partitioner(std::size_t slots, std::uint64_t seed)
    : seed_(seed), shift_(64 - static_cast<unsigned>(std::countr_zero(slots))), table_(slots, 0) {
  assert(slots >= 2 && std::has_single_bit(slots));
}

std::uint32_t consistent_partitioner::do_pick(std::span<const std::byte> key) noexcept {
  return ids_[table_[detail::key_hash(key, seed_) >> shift_]];
}

std::size_t consistent_partitioner::pick_index(std::span<const std::byte> key) const noexcept {
  assert(live_ > 0);
  return table_[detail::key_hash(key, seed_) >> shift_];
}

double consistent_partitioner::score(std::size_t m, std::uint32_t slot) const noexcept {
  // 52 bits, so that h + 0.5 is exact and u below stays strictly inside (0, 1).
  const std::uint64_t h = detail::pair_hash(slot, ids_[m], seed_) >> 12;
  if (uniform_) return static_cast<double>(h);  // -w / ln(u) is increasing in h for fixed w
  const double u = (static_cast<double>(h) + 0.5) * 0x1p-52;
  return -weights_[m] / std::log(u);
}

// ---- the id table -------------------------------------------------------------------------

std::size_t consistent_partitioner::home(std::uint32_t member) const noexcept {
  // Fibonacci hashing: the top bits of the product spread consecutive ids.
  const unsigned bits = static_cast<unsigned>(std::countr_zero(id_slots_.size()));
  return static_cast<std::size_t>((member * 0x9e3779b97f4a7c15ull) >> (64 - bits));
}

std::size_t consistent_partitioner::index_of(std::uint32_t member) const noexcept {
  if (id_slots_.empty()) return no_index;
  const std::size_t mask = id_slots_.size() - 1;
  // The table is at most half full, so the probe ends at an empty entry.
  for (std::size_t i = home(member);; i = (i + 1) & mask) {
    const std::uint32_t e = id_slots_[i];
    if (e == 0) return no_index;
    if (ids_[e - 1] == member) return e - 1;
  }
}

void consistent_partitioner::index_insert(std::size_t m) {
  const std::size_t mask = id_slots_.size() - 1;
  std::size_t i = home(ids_[m]);
  while (id_slots_[i] != 0) i = (i + 1) & mask;
  id_slots_[i] = static_cast<std::uint32_t>(m + 1);
}

void consistent_partitioner::index_grow() {
  id_slots_.assign(std::max<std::size_t>(8, id_slots_.size() * 2), 0);
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (weights_[i] > 0) index_insert(i);
  }
}

void consistent_partitioner::index_erase(std::size_t pos) {
  const std::size_t mask = id_slots_.size() - 1;
  std::size_t hole = pos;
  // Pull back every later entry of the run whose home is not after the hole, so that no
  // probe meets an empty entry before its member.
  for (std::size_t j = (pos + 1) & mask; id_slots_[j] != 0; j = (j + 1) & mask) {
    const std::size_t h = home(ids_[id_slots_[j] - 1]);
    if (((j - h) & mask) >= ((j - hole) & mask)) {
      id_slots_[hole] = id_slots_[j];
      hole = j;
    }
  }
  id_slots_[hole] = 0;
}

// ---- membership -----------------------------------------------------------------------------

result<void> consistent_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  if (index_of(member) != no_index) return unexpected(errc::duplicate_member);
  if (live_ == max_members) return unexpected(errc::invalid_argument);

  std::size_t m;
  if (!free_.empty()) {
    m = free_.back();
    free_.pop_back();
    ids_[m] = member;
    weights_[m] = weight;
  } else {
    m = ids_.size();
    free_.reserve(m + 1);  // so that remove() never allocates
    live_scratch_.reserve(m + 1);
    ids_.push_back(member);
    weights_.push_back(weight);
  }
  ++live_;
  ++weight_counts_[weight];
  uniform_ = weight_counts_.size() == 1;
  if (live_ * 2 > id_slots_.size())
    index_grow();  // inserts m with the others
  else
    index_insert(m);

  if (live_ == 1) {
    std::fill(table_.begin(), table_.end(), static_cast<std::uint16_t>(m));
    return {};
  }
  // The newcomer takes exactly the slots where it outscores the current owner.
  for (std::uint32_t s = 0; s < table_.size(); ++s) {
    const std::size_t owner = table_[s];
    if (beats(m, score(m, s), owner, score(owner, s))) table_[s] = static_cast<std::uint16_t>(m);
  }
  return {};
}

result<void> consistent_partitioner::remove(std::uint32_t member) {
  if (id_slots_.empty()) return unexpected(errc::unknown_member);
  const std::size_t mask = id_slots_.size() - 1;
  std::size_t pos = home(member);
  while (id_slots_[pos] != 0 && ids_[id_slots_[pos] - 1] != member) pos = (pos + 1) & mask;
  if (id_slots_[pos] == 0) return unexpected(errc::unknown_member);
  const std::size_t m = id_slots_[pos] - 1;
  index_erase(pos);

  const auto counted = weight_counts_.find(weights_[m]);
  if (--counted->second == 0) weight_counts_.erase(counted);
  uniform_ = weight_counts_.size() <= 1;
  weights_[m] = 0;
  --live_;
  free_.push_back(static_cast<std::uint16_t>(m));
  if (live_ == 0) return {};

  // Only the leaver's slots are re-elected; every other slot keeps its owner, which
  // still outscores everyone left.
  live_scratch_.clear();
  for (std::size_t i = 0; i < ids_.size(); ++i) {
    if (weights_[i] > 0) live_scratch_.push_back(static_cast<std::uint16_t>(i));
  }
  for (std::uint32_t s = 0; s < table_.size(); ++s) {
    if (table_[s] != m) continue;
    std::size_t best = live_scratch_[0];
    double best_score = score(best, s);
    for (std::size_t k = 1; k < live_scratch_.size(); ++k) {
      const std::size_t i = live_scratch_[k];
      const double sc = score(i, s);
      if (beats(i, sc, best, best_score)) {
        best = i;
        best_score = sc;
      }
    }
    table_[s] = static_cast<std::uint16_t>(best);
  }
  return {};
}

std::size_t consistent_partitioner::slots_owned(std::uint32_t member) const noexcept {
  const std::size_t m = index_of(member);
  if (m == no_index) return 0;
  return static_cast<std::size_t>(std::count(table_.begin(), table_.end(), m));
}

}  // namespace keyway::core
