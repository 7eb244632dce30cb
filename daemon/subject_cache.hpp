// subject_cache<V>: subject -> V, the memo in front of subject_index's trie.
// Open addressing with linear probing over an XXH3 hash of the subject; the
// subjects' bytes live in one arena string. clear() is O(1): it bumps a
// generation number, and a slot of an older generation counts as empty.
//
// Why not std::unordered_map<std::string, V>: a lookup there hashed with
// _Hash_bytes, divided by a prime and chased a node pointer; it was ~13 % of
// keywayd's samples on 1->1 (perf, bench/log/2026-12-02-e2e-allocator-and-reads.md),
// and it runs twice per publish (interest check at ingress, match at the owner).
//
// Threads: one owner (the subject_index's worker). Cost: find is one XXH3 of
// the subject, usually one slot and one memcmp; insert may copy the subject
// into the arena. Holds at most `capacity` subjects; an insert beyond that
// clears the cache first. The slot table is allocated on the first insert.
#pragma once

#include <xxhash.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

namespace keyway::daemon {

template <class V>
class subject_cache {
  static_assert(std::is_trivially_copyable_v<V>);

 public:
  explicit subject_cache(std::size_t capacity)
      : capacity_(capacity), mask_(std::bit_ceil(capacity * 2) - 1) {}

  /// The value cached for `subject`, or nullptr.
  const V* find(std::string_view subject) const noexcept {
    if (!slots_) return nullptr;
    const std::uint64_t h = hash(subject);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.generation != generation_) return nullptr;
      if (s.hash == h && s.length == subject.size() &&
          std::memcmp(arena_.data() + s.offset, subject.data(), subject.size()) == 0)
        return &s.value;
    }
  }

  /// Caches `value` for `subject`, which find() did not have.
  void insert(std::string_view subject, const V& value) {
    if (!slots_) slots_ = std::make_unique<slot[]>(mask_ + 1);
    if (size_ >= capacity_) clear();
    const std::uint64_t h = hash(subject);
    std::size_t i = h & mask_;
    while (slots_[i].generation == generation_) i = (i + 1) & mask_;
    slot& s = slots_[i];
    s.generation = generation_;
    s.hash = h;
    s.offset = static_cast<std::uint32_t>(arena_.size());
    s.length = static_cast<std::uint32_t>(subject.size());
    s.value = value;
    arena_.append(subject);
    ++size_;
  }

  void clear() noexcept {
    size_ = 0;
    arena_.clear();
    if (++generation_ != 0) return;
    // Wrapped after 2^32 clears: start again from a table of empty slots.
    generation_ = 1;
    if (slots_)
      for (std::size_t i = 0; i <= mask_; ++i) slots_[i].generation = 0;
  }

  std::size_t size() const noexcept { return size_; }

 private:
  struct slot {
    std::uint64_t hash = 0;
    std::uint32_t generation = 0;  // live only when equal to generation_
    std::uint32_t offset = 0;      // the subject: arena_[offset, offset + length)
    std::uint32_t length = 0;
    V value{};
  };

  static std::uint64_t hash(std::string_view s) noexcept { return XXH3_64bits(s.data(), s.size()); }

  const std::size_t capacity_;
  const std::size_t mask_;  // slots - 1; slots >= 2 * capacity keeps probes short
  std::unique_ptr<slot[]> slots_;
  std::string arena_;
  std::uint32_t generation_ = 1;  // slots start at 0: empty
  std::size_t size_ = 0;
};

}  // namespace keyway::daemon
