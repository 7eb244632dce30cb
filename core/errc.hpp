// Error codes of the runtime (core/), as a std::error_category so they fit
// std::error_code and asio::error_code. Any thread; no allocation.
#pragma once

#include <system_error>

namespace keyway::core {

enum class errc {
  ok = 0,
  full,              // a bounded queue or ring has no free slot
  empty,             // nothing to pop
  no_credit,         // the destination worker has no credit left; pause the source
  no_members,        // a partitioner was asked to pick from an empty member set
  duplicate_member,  // a member id was added twice
  unknown_member,    // remove() of a member that is not there
  invalid_weight,    // weight of zero or not finite
  not_supported,  // the strategy cannot do this (e.g. add() on a range partitioner without splits)
  invalid_argument,  // a configuration value is out of range
  affinity_failed,   // sched_setaffinity/pthread_setaffinity_np refused
  bad_cpu,           // a requested CPU is not in the process's affinity mask
};

const std::error_category& core_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), core_category()};
}

}  // namespace keyway::core

template <>
struct std::is_error_code_enum<keyway::core::errc> : std::true_type {};
