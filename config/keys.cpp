#include "config/keys.hpp"

#include <algorithm>

namespace keyway::config {
namespace {

using daemon::listen_address;
using daemon::server_options;
using R = reload_rule;

// The listeners of one kind, as URLs, in order.
std::vector<std::string> listeners(const server_options& o, listen_address::kind kind) {
  std::vector<std::string> out;
  for (const auto& l : o.listen)
    if (l.type == kind) out.push_back(l.to_string());
  return out;
}

std::string admin_url(const server_options& o) {
  return o.admin ? o.admin->to_string() : "off";
}

const daemon::cluster_options& cluster_of(const server_options& o) {
  static const daemon::cluster_options defaults;
  return o.cluster ? *o.cluster : defaults;
}

// Same(field): a comparison of one member.
#define KEYWAY_SAME(expr) \
  +[](const server_options& a, const server_options& b) { return a.expr == b.expr; }

constexpr key_info table[] = {
    {"server.workers", "integer", "0", "", "0..1024", R::restart, "--workers",
     "worker threads, each pinned to one CPU; 0: one per CPU (or per entry of cpus)",
     KEYWAY_SAME(workers)},
    {"server.cpus", "array of integers", "[]", "",
     "CPU numbers ≥ 0, no repeats, all in the affinity mask", R::restart, "",
     "CPUs to pin the workers to, in order; []: the affinity mask", KEYWAY_SAME(cpus)},
    {"server.drain_timeout", "duration", "\"10s\"", "", "0..1h", R::restart, "--drain-timeout",
     "on stop, after the grace: how long to flush queued messages", KEYWAY_SAME(drain_timeout)},
    {"server.lame_duck_grace", "duration", "\"500ms\"", "", "0..1h", R::restart,
     "--lame-duck-grace", "on stop: how long clients told to move are served on",
     KEYWAY_SAME(lame_duck_grace)},
    {"server.advertise", "array of URLs", "[]", "",
     "`tcp://HOST:PORT` or `unix:///absolute/path`, no repeats, at most 256", R::live,
     "--advertise", "other client URLs of this deployment, sent in every welcome (connectUrls)",
     KEYWAY_SAME(advertise)},

    {"listen.tcp", "array of `\"HOST:PORT\"`", "[\"127.0.0.1:7400\"]", "",
     "IP addresses, ports 0..65535, no repeats", R::restart, "--listen", "TCP client listeners",
     +[](const server_options& a, const server_options& b) {
       return listeners(a, listen_address::kind::tcp) == listeners(b, listen_address::kind::tcp);
     },
     "listen"},
    {"listen.unix", "array of paths", "[]", "",
     "absolute, at most 107 bytes, directory must exist, no repeats", R::restart, "--listen",
     "Unix stream socket listeners",
     +[](const server_options& a, const server_options& b) {
       return listeners(a, listen_address::kind::unix_path) ==
              listeners(b, listen_address::kind::unix_path);
     },
     "listen"},
    {"listen.unix_socket_mode", "octal string or integer", "\"0660\"", "", "0..0777", R::restart,
     "", "permission bits of the Unix sockets", KEYWAY_SAME(unix_socket_mode)},

    {"admin.listen", "`\"HOST:PORT\"`, `\"off\"` or `\"\"`", "\"127.0.0.1:7401\"", "",
     "an IP address and port, not one of `listen.tcp`", R::restart, "--admin",
     "the admin HTTP listener (/metrics, /livez, /readyz, /healthz, /status); \"off\" or \"\": "
     "none",
     +[](const server_options& a, const server_options& b) {
       return admin_url(a) == admin_url(b);
     }},
    {"admin.max_connections", "integer", "64", "", "1..10000", R::restart, "",
     "concurrent admin HTTP connections", KEYWAY_SAME(admin_max_connections)},

    {"routing.partitioner", "choice", "\"consistent\"", "",
     "`consistent`, `hash`, `round_robin`, `range`", R::restart, "--partitioner",
     "how message keys are spread over the workers", KEYWAY_SAME(partitioner), "routing"},
    {"routing.slots", "integer", "65536", "", "a power of two, 2..16777216", R::restart, "",
     "slots of the consistent partitioner's table", KEYWAY_SAME(partition.slots), "routing"},
    {"routing.vnodes", "integer", "160", "", "1..65536", R::restart, "",
     "virtual nodes per worker of the consistent vnode ring", KEYWAY_SAME(partition.vnodes),
     "routing"},
    {"routing.split_points", "array of strings", "[]", "",
     "strictly increasing byte order; only with `range`", R::restart, "",
     "split points of the range partitioner", KEYWAY_SAME(partition.split_points), "routing"},

    {"limits.max_payload", "integer (bytes)", "1048576", "(1 MiB)", "1..67108864 (64 MiB)", R::live,
     "--max-payload", "largest payload of one message", KEYWAY_SAME(limits)},
    {"limits.max_connections", "integer", "0", "(from the fd limit)", "0..1000000", R::live,
     "--max-connections", "client connections in all; 0: from the file-descriptor limit",
     KEYWAY_SAME(max_connections)},
    {"limits.max_subscriptions", "integer", "65536", "", "1..1000000", R::live,
     "--max-subscriptions", "subscriptions per connection", KEYWAY_SAME(max_subscriptions)},
    {"limits.max_pattern_tokens", "integer", "32", "", "1..128", R::live, "",
     "tokens in one subscription pattern", KEYWAY_SAME(max_pattern_tokens)},
    {"limits.max_queue_group_members", "integer", "1024", "", "1..4096", R::live, "",
     "members of one queue group, daemon-wide", KEYWAY_SAME(max_queue_group_members)},
    {"limits.max_pattern_shapes", "integer", "64", "", "1..65536", R::live, "",
     "distinct shapes of wildcard patterns, daemon-wide", KEYWAY_SAME(max_pattern_shapes)},
    {"limits.max_subscription_bytes", "integer (bytes)", "67108864", "(64 MiB)",
     "65536..1099511627776", R::live, "", "index memory of one connection's subscriptions",
     KEYWAY_SAME(max_subscription_bytes)},
    {"limits.max_total_subscription_bytes", "integer (bytes)", "1073741824", "(1 GiB)",
     "65536..1099511627776", R::live, "", "index memory of all subscriptions",
     KEYWAY_SAME(max_total_subscription_bytes)},
    {"limits.max_pending_bytes", "integer (bytes)", "67108864", "(64 MiB)",
     "65536..17179869184 (64 KiB..16 GiB)", R::live, "--max-pending-bytes",
     "outbound bytes queued for one connection", KEYWAY_SAME(max_pending_bytes)},
    {"limits.slow_consumer", "choice", "\"disconnect\"", "", "`disconnect`, `drop`", R::live,
     "--slow-consumer", "what to do with a slow consumer", KEYWAY_SAME(slow_consumer)},
    {"limits.slow_consumer_grace", "duration", "\"5s\"", "", "0..1h", R::live,
     "--slow-consumer-grace",
     "how long a connection may stay congested before slow_consumer applies",
     KEYWAY_SAME(slow_consumer_grace)},
    {"limits.handshake_timeout", "duration", "\"5s\"", "", "1ms..1h", R::live,
     "--handshake-timeout", "time a new connection has to send its hello",
     KEYWAY_SAME(handshake_timeout)},
    {"limits.idle_timeout", "duration", "\"0s\"", "(never)", "0..24h", R::live, "--idle-timeout",
     "close a connection silent this long; 0: never", KEYWAY_SAME(idle_timeout)},

    {"log.level", "choice", "\"info\"", "",
     "`trace`, `debug`, `info`, `warn`, `error`, `critical`, `off`", R::live, "--log-level",
     "log level", KEYWAY_SAME(log_level)},
    {"log.format", "choice", "\"text\"", "", "`text`, `json`", R::restart, "--log-format",
     "log line format on stderr", KEYWAY_SAME(log_fmt)},

    {"auth.tokens_file", "path", "\"\"", "(no authentication)", "a readable regular file", R::live,
     "--tokens-file", "file of accepted client tokens, one per line; \"\": no authentication",
     KEYWAY_SAME(tokens_file)},

// [cluster] is off unless present; its keys compare as their defaults when absent
// (whether the section is present at all is its own restart rule, "cluster").
#define KEYWAY_SAME_CLUSTER(expr)                         \
  +[](const server_options& a, const server_options& b) { \
    return cluster_of(a).expr == cluster_of(b).expr;      \
  }
    {"cluster.name", "string", "\"keyway\"", "", "1..64 of `a-z A-Z 0-9 . _ -`", R::restart, "",
     "the cluster's name: its nodes share the etcd prefix /keyway/<name>/",
     KEYWAY_SAME_CLUSTER(name)},
    {"cluster.node_id", "string", "\"\"", "(the host name)",
     "`\"\"` or 1..64 of `a-z A-Z 0-9 . _ -`", R::restart, "",
     "this node's id, unique in the cluster", KEYWAY_SAME_CLUSTER(node_id)},
    {"cluster.peer_listen", "URL", "\"tcp://127.0.0.1:7402\"", "",
     "`tcp://IP:PORT`, not a client or admin address", R::restart, "",
     "where the other nodes connect to this one",
     +[](const server_options& a, const server_options& b) {
       return cluster_of(a).peer_listen.to_string() == cluster_of(b).peer_listen.to_string();
     }},
    {"cluster.peer_advertise", "URL", "\"\"", "(peer_listen)", "`tcp://IP:PORT`, not port 0",
     R::restart, "", "the peer URL the other nodes dial for this one",
     KEYWAY_SAME_CLUSTER(peer_advertise)},
    {"cluster.advertise", "URL", "\"\"", "(the first listener)",
     "`tcp://HOST:PORT` or `unix:///absolute/path`", R::restart, "",
     "the client URL the other nodes announce for this one", KEYWAY_SAME_CLUSTER(advertise)},
    {"cluster.etcd_endpoints", "array of URLs", "[\"http://127.0.0.1:2379\"]", "",
     "1..16 `http://HOST:PORT`, no repeats", R::restart, "", "etcd's client URLs, tried in turn",
     KEYWAY_SAME_CLUSTER(etcd_endpoints)},
    {"cluster.lease_ttl", "duration", "\"3s\"", "", "2s..10m", R::restart, "",
     "this node leaves the ring this long after it stops renewing its etcd lease",
     KEYWAY_SAME_CLUSTER(lease_ttl)},
#undef KEYWAY_SAME_CLUSTER
};

#undef KEYWAY_SAME

}  // namespace

std::span<const key_info> keys() {
  return table;
}

const key_info* find_key(std::string_view name) {
  for (const auto& k : table)
    if (k.name == name) return &k;
  return nullptr;
}

std::vector<std::string_view> sections() {
  std::vector<std::string_view> out;
  for (const auto& k : table)
    if (std::find(out.begin(), out.end(), k.section()) == out.end()) out.push_back(k.section());
  return out;
}

std::vector<std::string_view> section_keys(std::string_view section) {
  std::vector<std::string_view> out;
  for (const auto& k : table)
    if (k.section() == section) out.push_back(k.key());
  return out;
}

bool optional_section(std::string_view section) {
  return section == "cluster";
}

std::vector<std::string> restart_keys_changed(const server_options& current,
                                              const server_options& next) {
  std::vector<std::string> out;
  // Joining or leaving a cluster (adding or removing [cluster]) takes a restart.
  if (current.cluster.has_value() != next.cluster.has_value()) out.emplace_back("cluster");
  for (const auto& k : table) {
    if (k.reload != reload_rule::restart || k.same(current, next)) continue;
    if (std::find(out.begin(), out.end(), k.reload_name()) == out.end())
      out.emplace_back(k.reload_name());
  }
  return out;
}

std::string docs_row(const key_info& k) {
  std::string out = "| `";  // appended, not operator+: no -Wrestrict false positive (GCC 12)
  out.append(k.key())
      .append("` | ")
      .append(k.type)
      .append(" | `")
      .append(k.default_toml)
      .append("`");
  if (!k.default_note.empty()) out.append(" ").append(k.default_note);
  out.append(" | ")
      .append(k.valid)
      .append(" | ")
      .append(k.reload == reload_rule::live ? "live" : "restart")
      .append(" |");
  return out;
}

}  // namespace keyway::config
