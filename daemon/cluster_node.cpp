#include "daemon/cluster_node.hpp"

#include <unistd.h>

#include <climits>

namespace keyway::daemon {

result<cluster::membership_config, std::string> membership_config_of(const server_options& o) {
  const cluster_options& c = *o.cluster;
  cluster::membership_config m;
  m.cluster = c.name;
  m.self.id = c.node_id;
  if (m.self.id.empty()) {
    char host[HOST_NAME_MAX + 1] = {};
    if (::gethostname(host, sizeof host - 1) != 0)
      return std::string("cluster.node_id is empty and the host name cannot be read; set it");
    m.self.id = host;
    if (const std::string why = cluster_name_problem(m.self.id); !why.empty())
      return "cluster.node_id is empty, and the host name \"" + m.self.id +
             "\" is not a valid node id: it " + why + "; set cluster.node_id";
  }
  if (!c.advertise.empty()) {
    m.self.client_urls.push_back(c.advertise);
  } else if (!o.listen.empty()) {
    const listen_address& first = o.listen.front();
    if (first.type == listen_address::kind::tcp &&
        (first.port == 0 || first.host == "0.0.0.0" || first.host == "::"))
      return "cluster.advertise is empty and the first listener, " + first.to_string() +
             ", is not an address other nodes can give their clients; set cluster.advertise";
    m.self.client_urls.push_back(first.to_string());
  }
  m.self.peer_url = c.peer_listen.to_string();
  m.self.workers = o.workers;  // 0 (one per CPU) until the server has resolved it
  m.etcd_endpoints = c.etcd_endpoints;
  m.lease_ttl = c.lease_ttl;
  return m;
}

}  // namespace keyway::daemon
