#include "daemon/worker_services.hpp"

#include "daemon/subject_index.hpp"

namespace keyway::daemon {

worker_services::worker_services(core::worker& w, std::string_view server_id, std::uint32_t workers,
                                 const std::atomic<bool>& draining, core::block_pool& pool,
                                 probe& stats, const server_options& live,
                                 std::shared_ptr<const std::vector<std::string>> tokens,
                                 std::unique_ptr<core::partitioner> owners)
    : w_(w),
      server_id_(server_id),
      workers_(workers),
      draining_(draining),
      pool_(pool),
      probe_(stats),
      live_(live),
      tokens_(std::move(tokens)),
      encoder_(std::make_unique<proto::encoder>(live.limits)),
      owners_(std::move(owners)),
      connect_urls_(live.advertise) {}

worker_services::~worker_services() = default;

std::uint64_t worker_services::subscription_cost(std::string_view pattern,
                                                 std::string_view group) const {
  // Every worker holds a replica of the index entry.
  return subject_index::cost_bytes(pattern, group, group_slots) * workers_;
}

}  // namespace keyway::daemon
