// Views of Cap'n Proto blobs as standard types, without a copy: for readers
// of any schema (the client protocol's decoder, the peer links' codec).
#pragma once

#include <capnp/blob.h>

#include <cstddef>
#include <span>
#include <string_view>

namespace keyway::proto {

inline std::string_view as_string_view(capnp::Text::Reader t) noexcept {
  return {t.begin(), t.size()};
}
inline std::span<const std::byte> as_bytes(capnp::Data::Reader d) noexcept {
  return {reinterpret_cast<const std::byte*>(d.begin()), d.size()};
}

}  // namespace keyway::proto
