// cluster_node: what keywayd's [cluster] section (server_options::cluster)
// means for cluster membership (cluster/membership.hpp): this node's id
// (cluster.node_id, or the host name), the client URLs others announce for
// it, its peer URL, its workers and the etcd settings.
//
// Threads: pure functions of their arguments; any thread.
#pragma once

#include <string>

#include <keyway/result.hpp>

#include "cluster/membership.hpp"
#include "config/options.hpp"

namespace keyway::daemon {

/// The membership settings of a node with options `o` (o.cluster set). Fails
/// when cluster.node_id is empty and the host name is not a valid node id, or
/// when the client URL to advertise cannot be derived.
result<cluster::membership_config, std::string> membership_config_of(const server_options& o);

}  // namespace keyway::daemon
