#include "core/round_robin_partitioner.hpp"

#include <algorithm>

namespace keyway::core {

result<void> round_robin_partitioner::add(std::uint32_t member, double weight) {
  if (!valid_weight(weight)) return unexpected(errc::invalid_weight);
  if (std::find(members_.begin(), members_.end(), member) != members_.end()) {
    return unexpected(errc::duplicate_member);
  }
  members_.push_back(member);
  return {};
}

result<void> round_robin_partitioner::remove(std::uint32_t member) {
  const auto it = std::find(members_.begin(), members_.end(), member);
  if (it == members_.end()) return unexpected(errc::unknown_member);
  const auto at = static_cast<std::size_t>(it - members_.begin());
  members_.erase(it);
  if (at < next_) --next_;  // the member that was next stays next
  if (next_ >= members_.size()) next_ = 0;
  return {};
}

}  // namespace keyway::core
