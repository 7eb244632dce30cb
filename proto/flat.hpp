// flat: Cap'n Proto pointers in a single segment, read and written by hand for
// the two frames on the hot path (a publish coming in, a delivery going out).
// See https://capnproto.org/encoding.html: a struct pointer is
//   [B: 30-bit signed word offset][A = 0] [data words: 16] [pointers: 16]
// and a list pointer
//   [B: 30-bit signed word offset][A = 1] [element size: 3] [count: 29],
// each offset counted from the word after the pointer.
//
// The reader is conservative: it accepts only what it fully checks (in-bounds
// struct and byte-list pointers, NUL-terminated text) and reports anything else
// (far pointers, other list kinds, a Text without its NUL) as "not flat", so
// the caller falls back to capnp's own reader, which either reads it the same
// way or names the problem. tests/unit/proto/flat_test.cpp compares the two.
//
// Threads: pure functions. Cost: a few loads and compares per field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace keyway::proto::flat {

constexpr std::size_t words_for(std::size_t bytes) noexcept {
  return (bytes + 7) / 8;
}

inline std::uint64_t struct_pointer(std::size_t from_word, std::size_t to_word,
                                    std::uint16_t data_words, std::uint16_t pointers) noexcept {
  const auto offset = static_cast<std::uint32_t>(to_word - from_word - 1);
  return (std::uint64_t{offset} << 2) | (std::uint64_t{data_words} << 32) |
         (std::uint64_t{pointers} << 48);
}

/// A byte list (Text with its NUL, or Data); null when empty.
inline std::uint64_t byte_list_pointer(std::size_t from_word, std::size_t to_word,
                                       std::size_t elements) noexcept {
  if (elements == 0) return 0;
  const auto offset = static_cast<std::uint32_t>(to_word - from_word - 1);
  return 1u | (std::uint64_t{offset} << 2) | (std::uint64_t{2} << 32) |
         (std::uint64_t{elements} << 35);
}

/// One segment of a message, word-aligned.
class segment {
 public:
  segment(const std::byte* words, std::size_t count) noexcept : p_(words), n_(count) {}

  std::size_t size() const noexcept { return n_; }
  std::uint64_t word(std::size_t i) const noexcept {
    std::uint64_t v;
    std::memcpy(&v, p_ + 8 * i, 8);
    return v;
  }

  /// A struct: where its data and pointer sections start, and their sizes.
  /// The empty struct (a null pointer) has no data and no pointers.
  struct structure {
    std::size_t data = 0;  // word index; data words, then pointer words
    std::uint16_t data_words = 0;
    std::uint16_t pointers = 0;
  };

  /// The struct the pointer at word `at` (< size()) points to, into `out`;
  /// the empty struct for a null pointer. False when it is not an in-bounds
  /// struct pointer.
  bool read_struct(std::size_t at, structure& out) const noexcept {
    const std::uint64_t w = word(at);
    if (w == 0) {
      out = {};
      return true;
    }
    if ((w & 3) != 0) return false;
    const auto target = static_cast<std::int64_t>(at) + 1 + offset_of(w);
    const auto data_words = static_cast<std::uint16_t>(w >> 32);
    const auto pointers = static_cast<std::uint16_t>(w >> 48);
    if (target < 0 || static_cast<std::uint64_t>(target) + data_words + pointers > n_) return false;
    out = {static_cast<std::size_t>(target), data_words, pointers};
    return true;
  }

  /// Pointer `i` of struct `s`, as a word; 0 (null) past its pointer section
  /// (a field the sender's schema did not have).
  std::uint64_t pointer_word(const structure& s, std::size_t i) const noexcept {
    return i < s.pointers ? word(s.data + s.data_words + i) : 0;
  }
  /// Data word `i` of struct `s`; 0 past its data section.
  std::uint64_t data_word(const structure& s, std::size_t i) const noexcept {
    return i < s.data_words ? word(s.data + i) : 0;
  }

  /// Pointer `i` of struct `s` as a byte list (Data) into `out`, empty when
  /// null; false when it is anything but an in-bounds list of bytes.
  bool read_data(const structure& s, std::size_t i,
                 std::span<const std::byte>& out) const noexcept {
    const std::uint64_t w = pointer_word(s, i);
    if (w == 0) {
      out = {};
      return true;
    }
    // A list pointer (A = 1) of one-byte elements (element size 2).
    if ((w & 0x700000003) != 0x200000001) return false;
    const auto target = static_cast<std::int64_t>(s.data + s.data_words + i) + 1 + offset_of(w);
    const std::uint64_t count = w >> 35;
    if (target < 0 || static_cast<std::uint64_t>(target) + words_for(count) > n_) return false;
    out = std::span<const std::byte>(p_ + 8 * static_cast<std::size_t>(target), count);
    return true;
  }
  /// Pointer `i` as Text: a byte list whose last byte is a NUL, without it;
  /// empty when null. A non-null Text of no bytes lacks its NUL too.
  bool read_text(const structure& s, std::size_t i, std::string_view& out) const noexcept {
    std::span<const std::byte> bytes;
    if (!read_data(s, i, bytes)) return false;
    if (bytes.empty()) {
      if (pointer_word(s, i) != 0) return false;
      out = {};
      return true;
    }
    if (bytes.back() != std::byte{0}) return false;
    out = std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size() - 1);
    return true;
  }

 private:
  static std::int64_t offset_of(std::uint64_t w) noexcept {
    return static_cast<std::int32_t>(static_cast<std::uint32_t>(w)) >>
           2;  // arithmetic shift keeps the sign
  }

  const std::byte* p_;
  std::size_t n_;
};

}  // namespace keyway::proto::flat
