// Small helpers shared by the proto tests.
#pragma once

#include "proto/codec.hpp"

#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstring>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keyway::proto::test {

inline std::span<const std::byte> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

inline std::string to_string(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

/// Everything queued in `out`, flattened (external pieces included).
inline std::vector<std::byte> drain(out_buffer& out) {
  std::vector<std::byte> all;
  out.drain_to(all);
  return all;
}

/// A framed message built with plain capnp (reference framing).
template <class Build>
std::vector<std::byte> capnp_frame(Build&& build) {
  capnp::MallocMessageBuilder msg;
  build(msg.initRoot<wire::Frame>());
  auto flat = capnp::messageToFlatArray(msg);
  auto bytes = flat.asBytes();
  std::vector<std::byte> v(bytes.size());
  std::memcpy(v.data(), bytes.begin(), bytes.size());
  return v;
}

/// Raw little-endian words, for hand-made hostile frames.
inline std::vector<std::byte> raw_words(std::initializer_list<std::uint64_t> words) {
  std::vector<std::byte> v(words.size() * 8);
  std::size_t i = 0;
  for (auto w : words) std::memcpy(v.data() + 8 * i++, &w, 8);
  return v;
}

inline std::uint64_t seg_table(std::uint32_t count_minus_one, std::uint32_t first_size) {
  return std::uint64_t{count_minus_one} | (std::uint64_t{first_size} << 32);
}

}  // namespace keyway::proto::test
