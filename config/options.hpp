// server_options: everything keywayd needs to run, with safe defaults, so the
// daemon runs with no config file at all. Filled from the config file
// (config/config.cpp) and then the command line (daemon/main.cpp). Plain value
// type; read-only once the server starts.
//
// The model belongs to config/ (target keyway_options: pure data, no asio,
// prometheus or systemd) so that the config reader does not depend on the
// daemon; the daemon uses it from here. The namespace stays keyway::daemon:
// these are the daemon's options. config/keys.hpp lists every config key.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/partitioner.hpp"
#include "proto/limits.hpp"

namespace keyway::daemon {

/// tcp://HOST:PORT (HOST may be [v6]) or unix:///absolute/path.
struct listen_address {
  enum class kind { tcp, unix_path };
  kind type = kind::tcp;
  std::string host = "127.0.0.1";
  std::uint16_t port = 7400;
  std::string path;
  std::string to_string() const;
};

/// Throws std::invalid_argument with a message naming the URL and the rule.
listen_address parse_listen_url(std::string_view url);

/// Why `name` is not a valid cluster name or node id (1..64 bytes of letters,
/// digits, '.', '_' and '-': it is part of etcd keys and metric labels), or ""
/// if it is. The reason reads after the value: "has 0 bytes; allowed 1..64".
std::string cluster_name_problem(std::string_view name);

enum class slow_consumer_policy { disconnect, drop };

enum class log_format { text, json };

/// [cluster]: this node's membership of a cluster (docs/cluster.md). The
/// section present makes keywayd a cluster node; absent, it is the single
/// node it always was.
struct cluster_options {
  /// The cluster's name: its nodes share the etcd prefix /keyway/<name>/.
  std::string name = "keyway";
  /// This node's id, unique in the cluster. Empty: the host name, at start.
  std::string node_id;
  /// Where the other nodes connect to this one (tcp://HOST:PORT).
  listen_address peer_listen{listen_address::kind::tcp, "127.0.0.1", 7402, {}};
  /// The client URL other nodes announce for this one. Empty: the first
  /// listen.tcp address.
  std::string advertise;
  /// The peer URL other nodes dial for this one (tcp://IP:PORT), when it is
  /// not peer_listen: behind NAT or a port forward, or with peer_listen on
  /// 0.0.0.0 or ::. Empty: peer_listen.
  std::string peer_advertise;
  /// etcd's client URLs (http://HOST:PORT), tried in turn.
  std::vector<std::string> etcd_endpoints{"http://127.0.0.1:2379"};
  /// This node's etcd lease: it leaves the ring this long after it stops
  /// renewing it (keepalive every third of it).
  std::chrono::milliseconds lease_ttl{3000};
};

struct server_options {
  std::vector<listen_address> listen{listen_address{}};
  /// The admin HTTP listener (/metrics, /livez, /readyz, /healthz, /status);
  /// tcp only. Unset: no admin listener.
  std::optional<listen_address> admin{
      listen_address{listen_address::kind::tcp, "127.0.0.1", 7401, {}}};
  /// 0: one worker per CPU of the affinity mask.
  unsigned workers = 0;
  /// CPUs to pin workers to, in order; empty: the affinity mask.
  std::vector<int> cpus;
  core::partition_strategy partitioner = core::partition_strategy::consistent;
  /// Layout knobs of the worker partitioner (slots, vnodes, range split points).
  core::partitioner_options partition;
  proto::limits limits;
  /// Client connections in all. 0: derived at start from the file-descriptor
  /// limit (see resolve_fd_limits()).
  std::size_t max_connections = 0;
  std::uint32_t max_subscriptions = 65536;  // per connection
  /// Tokens in one subscription pattern.
  std::uint32_t max_pattern_tokens = 32;
  /// Members of one queue group (on one pattern), daemon-wide.
  std::uint32_t max_queue_group_members = 1024;
  /// Distinct shapes (length, `*` positions, final `>`) of the patterns with a
  /// wildcard, daemon-wide: bounds what one publish costs to match.
  std::uint32_t max_pattern_shapes = 64;
  /// Index memory the subscriptions of one connection may cost, on all
  /// workers' replicas together (subject_index::cost_bytes per replica).
  std::uint64_t max_subscription_bytes = 64ull << 20;
  /// The same for every connection together; each worker's connections may
  /// use this divided by the number of workers.
  std::uint64_t max_total_subscription_bytes = 1ull << 30;
  std::uint64_t max_pending_bytes = 64ull << 20;
  slow_consumer_policy slow_consumer = slow_consumer_policy::disconnect;
  /// How long a connection may stay over max_pending_bytes (publishers
  /// feeding it paused meanwhile) before the slow_consumer policy applies.
  std::chrono::milliseconds slow_consumer_grace{5000};
  /// Concurrent connections to the admin HTTP listener.
  std::size_t admin_max_connections = 64;
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds drain_timeout{10000};
  /// On SIGTERM/SIGINT, after every client was sent a `draining` frame: how
  /// long to keep serving (reading, routing, delivering) so clients can move
  /// to another server before reading stops; over sooner once no client is
  /// connected. Then the drain (drain_timeout).
  std::chrono::milliseconds lame_duck_grace{500};
  /// Other client URLs of this deployment (tcp://HOST:PORT, unix:///path),
  /// announced in welcome.connectUrls. Empty: none.
  std::vector<std::string> advertise;
  /// Slots per mesh ring (per ordered pair of workers): the credit window.
  std::size_t ring_capacity = 4096;
  /// A connection that sends nothing (not even a ping) for this long is closed
  /// with an error frame of code `timeout`. 0: never.
  std::chrono::milliseconds idle_timeout{0};
  std::uint32_t unix_socket_mode = 0660;
  std::string log_level = "info";
  log_format log_fmt = log_format::text;
  /// [auth] tokens_file: one token per line; empty: no authentication.
  std::string tokens_file;
  /// [cluster]; unset: a single node.
  std::optional<cluster_options> cluster;
};

}  // namespace keyway::daemon
