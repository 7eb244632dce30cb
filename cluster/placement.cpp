#include "cluster/placement.hpp"

#include <algorithm>

#include <xxhash.h>

namespace keyway::cluster {

std::uint32_t placement::member_of(std::string_view node_id) noexcept {
  const std::uint64_t h = XXH3_64bits_withSeed(node_id.data(), node_id.size(), node_seed);
  return static_cast<std::uint32_t>(h ^ (h >> 32));
}

result<placement, std::string> placement::build(std::vector<std::string> ring, std::int64_t epoch) {
  if (ring.empty()) return std::string("the ring has no active node: no key has an owner");
  std::sort(ring.begin(), ring.end());
  if (std::adjacent_find(ring.begin(), ring.end()) != ring.end())
    return "the ring lists node \"" + *std::adjacent_find(ring.begin(), ring.end()) + "\" twice";
  core::partitioner_options opt;
  opt.seed = node_seed;
  auto made = core::make_partitioner(core::partition_strategy::consistent, opt);
  if (!made) return "cannot build the node partitioner: " + made.error().message();
  placement p;
  p.partitioner_ = std::move(*made);
  for (const auto& id : ring) {
    const std::uint32_t m = member_of(id);
    if (auto added = p.partitioner_->add(m); !added) {
      const auto other = std::find_if(ring.begin(), ring.end(), [&](const std::string& o) {
        return o != id && member_of(o) == m;
      });
      return "nodes \"" + id + "\" and \"" + (other != ring.end() ? *other : std::string("?")) +
             "\" hash to the same member id " + std::to_string(m) +
             "; rename one of them (cluster.node_id)";
    }
    p.members_.push_back(m);
  }
  p.nodes_ = std::move(ring);
  p.epoch_ = epoch;
  return p;
}

std::size_t placement::owner_position(std::string_view key) const noexcept {
  const std::uint32_t m = partitioner_->pick(key);
  // Few nodes: a linear scan of a small array beats a map.
  for (std::size_t i = 0; i < members_.size(); ++i)
    if (members_[i] == m) return i;
  return 0;  // unreachable: pick() returns a member that was added
}

}  // namespace keyway::cluster
