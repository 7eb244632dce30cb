// keyway_cluster: a Keyway cluster for a test — one real etcd
// (etcd_process) and N keywayd nodes, each a separate process started with
// its own config file (a [cluster] section) and `--workers 1`, every
// listener on 127.0.0.1 at a free port or on a Unix path in a temporary
// directory. The constructor returns once the cluster is ready: every node's
// /readyz answers 200 and every node's /status shows itself and every other
// running node "active". If it is not ready in time, or a node exits, it
// throws std::runtime_error naming what was missing, with each node's
// /readyz, /status and the end of its log.
//
// Nodes are numbered 0.. in start order with ids "n1", "n2", ... stop_node()
// sends one SIGTERM (it leaves etcd); start_node() adds a node later (for
// join tests); wait_ready() waits again for the running nodes to agree. The
// destructor stops every node (SIGTERM to all, then waits), then etcd.
//
// Ports are chosen by binding port 0 and closing (the nodes must advertise
// them, so they cannot bind port 0 themselves); a node whose port was taken
// in between ("address already in use" in its log) is started again on new
// ports, up to three times.
//
// Test-only; create and use it on the thread that runs the test (etcd and the
// daemons are killed when the thread that started them ends). Header only.
#pragma once

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/etcd_process.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/keywayd_process.hpp"
#include "tests/support/local_socket.hpp"
#include "tests/support/temp_dir.hpp"

namespace keyway::test {

/// One node's configuration, and the TOML keywayd reads.
struct cluster_node_config {
  std::string id;                  // cluster.node_id
  std::string cluster_name = "t";  // cluster.name
  std::uint16_t tcp_port = 0;      // listen.tcp = ["127.0.0.1:tcp_port"]; also advertise
  std::string unix_path;           // listen.unix = [unix_path]
  std::uint16_t admin_port = 0;    // admin.listen = "127.0.0.1:admin_port"
  std::uint16_t peer_port = 0;     // cluster.peer_listen = "tcp://127.0.0.1:peer_port"
  std::string peer_advertise;      // cluster.peer_advertise, if not empty
  std::vector<std::string> etcd_endpoints;
  std::string lease_ttl = "2s";

  std::string tcp_url() const { return "tcp://127.0.0.1:" + std::to_string(tcp_port); }
  std::string unix_url() const { return "unix://" + unix_path; }
  std::string peer_url() const { return "tcp://127.0.0.1:" + std::to_string(peer_port); }

  std::string toml() const {
    std::ostringstream t;
    t << "[listen]\n"
      << "tcp = [\"127.0.0.1:" << tcp_port << "\"]\n"
      << "unix = [\"" << unix_path << "\"]\n"
      << "[admin]\n"
      << "listen = \"127.0.0.1:" << admin_port << "\"\n"
      << "[cluster]\n"
      << "name = \"" << cluster_name << "\"\n"
      << "node_id = \"" << id << "\"\n"
      << "peer_listen = \"" << peer_url() << "\"\n"
      << (peer_advertise.empty() ? "" : "peer_advertise = \"" + peer_advertise + "\"\n")
      << "advertise = \"" << tcp_url() << "\"\n"
      << "etcd_endpoints = [";
    for (std::size_t i = 0; i < etcd_endpoints.size(); ++i)
      t << (i ? ", " : "") << '"' << etcd_endpoints[i] << '"';
    t << "]\n"
      << "lease_ttl = \"" << lease_ttl << "\"\n";
    return t.str();
  }
  /// Writes toml() to `path`.
  void write(const std::string& path) const {
    std::ofstream out(path);
    out << toml();
    if (!out) throw std::runtime_error("cannot write " + path);
  }
};

struct cluster_options {
  std::size_t nodes = 3;
  std::uint32_t workers = 1;  // --workers of every node
  std::string name = "t";
  std::string lease_ttl = "2s";
  /// Empty: the cluster's own etcd. Otherwise every node is given these
  /// endpoints instead (e.g. one nobody listens on); etcd is still started.
  std::vector<std::string> etcd_endpoints;
  /// If set, node i's endpoints are etcd_for(i, the cluster etcd's endpoint)
  /// (e.g. one node through a proxy the test can cut); overrides the above.
  std::function<std::vector<std::string>(std::size_t, const std::string&)> etcd_for;
  /// If set, node i advertises peer_advertise_for(i, its peer port) as the
  /// URL the others dial ("": its peer_listen), e.g. a relay the test can
  /// cut; called again if the node is started on new ports.
  std::function<std::string(std::size_t, std::uint16_t)> peer_advertise_for;
  /// For each keywayd to log that it started (or to exit).
  std::chrono::milliseconds node_startup{20'000};
  /// For the whole cluster to be ready after the last node started.
  std::chrono::milliseconds ready_timeout{20'000};
};

class keyway_cluster {
 public:
  struct node {
    cluster_node_config config;
    std::string config_path;
    std::unique_ptr<keywayd_process> process;
    bool stopped = false;  // stop_node() was called

    const std::string& id() const { return config.id; }
    std::string tcp_url() const { return config.tcp_url(); }
    std::string unix_url() const { return config.unix_url(); }
    std::uint16_t admin_port() const { return config.admin_port; }
  };

  explicit keyway_cluster(cluster_options options = {}) : options_(std::move(options)) {
    try {
      for (std::size_t i = 0; i < options_.nodes; ++i) launch_node();
      wait_ready();
    } catch (...) {
      shut_down();  // the destructor does not run: stop the nodes together
      throw;
    }
  }

  keyway_cluster(const keyway_cluster&) = delete;
  keyway_cluster& operator=(const keyway_cluster&) = delete;

  ~keyway_cluster() { shut_down(); }

  std::size_t size() const { return nodes_.size(); }
  const node& at(std::size_t i) const { return nodes_.at(i); }
  std::string tcp_url(std::size_t i) const { return at(i).tcp_url(); }
  std::string unix_url(std::size_t i) const { return at(i).unix_url(); }
  std::uint16_t admin_port(std::size_t i) const { return at(i).admin_port(); }
  const std::string& id(std::size_t i) const { return at(i).id(); }
  keywayd_process& process(std::size_t i) { return *nodes_.at(i).process; }
  const etcd_process& etcd() const { return etcd_; }
  /// The cluster's etcd, to kill and restart (chaos tests).
  etcd_process& etcd() { return etcd_; }
  const std::string& name() const { return options_.name; }
  std::string log(std::size_t i) const { return at(i).process->log(); }

  /// True while node i's keywayd runs (not stopped, not exited).
  bool running(std::size_t i) {
    node& n = nodes_.at(i);
    return n.process && !n.stopped && !exit_code_now(n).has_value();
  }

  /// GET /status of node i, parsed. Throws if it does not answer JSON.
  nlohmann::json status(std::size_t i) const {
    const http_response r = http_get(admin_port(i), "/status", std::chrono::seconds(2));
    return nlohmann::json::parse(r.body);
  }

  /// SIGTERM to node i; waits (up to `limit`) for it to exit and returns its
  /// exit code, or nullopt if it did not exit in time.
  std::optional<int> stop_node(std::size_t i,
                               std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    node& n = nodes_.at(i);
    n.stopped = true;
    return n.process->stop(SIGTERM, limit);
  }

  /// SIGKILL to node i, as a crash would; reaps it. The others see it leave
  /// when its lease expires.
  void kill_node(std::size_t i) {
    node& n = nodes_.at(i);
    n.stopped = true;
    n.process->stop(SIGKILL, std::chrono::seconds(5));
  }

  /// Starts one more node expecting it to fail (e.g. etcd is away): returns
  /// why it did (its exit status and log), or "" if it still runs after
  /// `limit` (it then stays, as start_node(false) would leave it).
  std::string try_start_node(std::chrono::milliseconds limit = std::chrono::seconds(15)) {
    std::size_t i = 0;
    try {
      i = launch_node();
    } catch (const std::exception& e) {
      return e.what();
    }
    node& n = nodes_.at(i);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (const auto code = exit_code_now(n)) {
        n.stopped = true;
        return "node " + n.id() + " exited with status " + std::to_string(*code) + "; its log:\n" +
               n.process->log();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return "";
  }

  /// Starts one more node (the next id) and, with `wait`, waits until every
  /// running node is ready and sees it active. Returns its index.
  std::size_t start_node(bool wait = true) {
    const std::size_t i = launch_node();
    if (wait) wait_ready();
    return i;
  }

  /// Waits (up to `timeout`, default options.ready_timeout) until every
  /// running node answers /readyz with 200 and its /status shows
  /// cluster.state "active", its own node_id, and exactly the running nodes,
  /// each "active". Throws std::runtime_error with a diagnosis otherwise, or
  /// at once if a node that should run has exited.
  void wait_ready(std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    const auto limit = timeout.value_or(options_.ready_timeout);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::string missing;
    for (;;) {
      missing.clear();
      std::set<std::string> expected;
      for (std::size_t i = 0; i < nodes_.size(); ++i)
        if (!nodes_[i].stopped) expected.insert(nodes_[i].id());
      for (std::size_t i = 0; i < nodes_.size(); ++i) {
        node& n = nodes_[i];
        if (n.stopped) continue;
        if (const auto code = exit_code_now(n))
          throw std::runtime_error("keyway_cluster: node " + n.id() + " exited with status " +
                                   std::to_string(*code) +
                                   " while waiting for the cluster to be ready\n" + diagnosis());
        missing += readiness_problem(n, expected);
      }
      if (missing.empty()) return;
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw std::runtime_error("keyway_cluster: the cluster of " + std::to_string(running_count()) +
                             " nodes was not ready within " + std::to_string(limit.count()) +
                             " ms; still missing:\n" + missing + diagnosis());
  }

  /// Every running node's /readyz?verbose, /status and the end of its log.
  std::string diagnosis(std::size_t log_lines = 40) {
    std::string out;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      node& n = nodes_[i];
      out += "--- node " + n.id() + " (" + n.tcp_url() + ", " + n.unix_url() +
             ", admin 127.0.0.1:" + std::to_string(n.admin_port()) + ", peer " +
             n.config.peer_url() + ", config " + n.config_path + "): ";
      if (!n.process) {
        out += "not started\n";
        continue;
      }
      if (const auto code = exit_code_now(n)) {
        out += "exited with status " + std::to_string(*code) + "\n";
      } else {
        out += std::string(n.stopped ? "stopping" : "running") + ", pid " +
               std::to_string(n.process->pid()) + "\n";
        out += "GET /readyz?verbose: " + fetch(n, "/readyz?verbose") + "\n";
        out += "GET /status: " + fetch(n, "/status") + "\n";
      }
      out += "last " + std::to_string(log_lines) + " log lines:\n" +
             last_lines(n.process->log(), log_lines) + "\n";
    }
    return out;
  }

 private:
  /// Chooses ports, writes node i's config and starts keywayd (retrying on
  /// a port clash). Returns its index.
  std::size_t launch_node() {
    const std::size_t index = nodes_.size();
    node n;
    n.config.id = "n" + std::to_string(index + 1);
    n.config.cluster_name = options_.name;
    n.config.unix_path = (dir_.path() / ("kw-" + n.config.id + ".sock")).string();
    n.config.etcd_endpoints = options_.etcd_for ? options_.etcd_for(index, etcd_.endpoint())
                              : options_.etcd_endpoints.empty()
                                  ? std::vector<std::string>{etcd_.endpoint()}
                                  : options_.etcd_endpoints;
    n.config.lease_ttl = options_.lease_ttl;
    n.config_path = (dir_.path() / ("node-" + n.config.id + ".toml")).string();
    for (int attempt = 1;; ++attempt) {
      n.config.tcp_port = fresh_port();
      n.config.admin_port = fresh_port();
      n.config.peer_port = fresh_port();
      if (options_.peer_advertise_for)
        n.config.peer_advertise = options_.peer_advertise_for(index, n.config.peer_port);
      n.config.write(n.config_path);
      try {
        n.process = std::make_unique<keywayd_process>(
            std::vector<std::string>{"--config", n.config_path, "--workers",
                                     std::to_string(options_.workers)},
            options_.node_startup);
        break;
      } catch (const std::exception& e) {
        const std::string why = e.what();
        if (why.find("ddress already in use") != std::string::npos && attempt < 3) continue;
        const std::string others = diagnosis();
        throw std::runtime_error(
            "keyway_cluster: node " + n.config.id + " (config " + n.config_path +
            ") did not start\nits config:\n" + n.config.toml() + why +
            (others.empty() ? "" : "\nthe nodes started before it:\n" + others));
      }
    }
    nodes_.push_back(std::move(n));
    return index;
  }

  /// A loopback port no other node of this cluster uses.
  std::uint16_t fresh_port() {
    for (int i = 0; i < 100; ++i) {
      const std::uint16_t p = closed_loopback_port();
      if (p != etcd_.port() && used_ports_.insert(p).second) return p;
    }
    throw std::runtime_error("keyway_cluster: no fresh loopback port in 100 tries");
  }

  /// What node n lacks to be ready (empty if nothing), one line.
  std::string readiness_problem(node& n, const std::set<std::string>& expected) {
    const std::string who = "node " + n.id() + ": ";
    try {
      const http_response ready = http_get(n.admin_port(), "/readyz", std::chrono::seconds(1));
      if (ready.status != 200)
        return who + "/readyz answers " + std::to_string(ready.status) + "\n";
      const http_response st = http_get(n.admin_port(), "/status", std::chrono::seconds(1));
      const nlohmann::json j = nlohmann::json::parse(st.body, nullptr, false);
      if (j.is_discarded() || !j.is_object()) return who + "/status is not a JSON object\n";
      if (!j.contains("cluster") || !j["cluster"].is_object())
        return who + "/status has no \"cluster\" object\n";
      const nlohmann::json& c = j["cluster"];
      if (c.value("node_id", std::string()) != n.id())
        return who + "/status cluster.node_id is not \"" + n.id() + "\"\n";
      if (c.value("state", std::string()) != "active")
        return who + "/status cluster.state is " + c.value("state", std::string("(none)")) +
               ", not active\n";
      if (!c.contains("nodes") || !c["nodes"].is_array())
        return who + "/status cluster.nodes is not an array\n";
      std::set<std::string> active, listed;
      for (const auto& m : c["nodes"]) {
        if (!m.is_object()) continue;
        const std::string id = m.value("id", std::string());
        listed.insert(id);
        if (m.value("state", std::string()) == "active") active.insert(id);
      }
      if (active != expected || listed != expected)
        return who + "/status cluster.nodes lists [" + join(listed) + "] with [" + join(active) +
               "] active; expected [" + join(expected) + "] all active\n";
      return {};
    } catch (const std::exception& e) {
      return who + "admin 127.0.0.1:" + std::to_string(n.admin_port()) +
             " does not answer: " + e.what() + "\n";
    }
  }

  static std::string fetch(const node& n, const std::string& target) {
    try {
      const http_response r = http_get(n.admin_port(), target, std::chrono::seconds(1));
      std::string body = r.body;
      if (body.size() > 4000) body = body.substr(0, 4000) + "...";
      return std::to_string(r.status) + " " + body;
    } catch (const std::exception& e) {
      return std::string("no answer: ") + e.what();
    }
  }

  static std::string last_lines(const std::string& text, std::size_t count) {
    std::size_t pos = text.size();
    if (pos > 0 && text[pos - 1] == '\n') --pos;
    for (std::size_t seen = 0; pos > 0; --pos)
      if (text[pos - 1] == '\n' && ++seen == count) break;
    return text.substr(pos);
  }

  static std::string join(const std::set<std::string>& s) {
    std::string out;
    for (const auto& x : s) out += (out.empty() ? "" : ",") + x;
    return out;
  }

  /// Node n's exit code if it has exited (reaped now if need be), else
  /// nullopt. Signal 0 sends nothing: keywayd_process::stop only reaps.
  static std::optional<int> exit_code_now(node& n) {
    if (!n.process) return std::nullopt;
    if (const auto code = n.process->exit_code()) return code;
    return n.process->stop(0, std::chrono::milliseconds(0));
  }

  std::size_t running_count() const {
    return static_cast<std::size_t>(
        std::count_if(nodes_.begin(), nodes_.end(), [](const node& n) { return !n.stopped; }));
  }

  /// SIGTERM to every node still running (they stop in parallel), then
  /// waits for each (keywayd_process's destructor escalates to SIGKILL).
  void shut_down() {
    for (auto& n : nodes_)
      if (n.process && !exit_code_now(n).has_value()) ::kill(n.process->pid(), SIGTERM);
    for (auto& n : nodes_) n.process.reset();
    nodes_.clear();
    etcd_.stop();
  }

  cluster_options options_;
  temp_dir dir_;       // configs and Unix sockets
  etcd_process etcd_;  // outlives the nodes (destroyed after nodes_)
  std::set<std::uint16_t> used_ports_;
  std::vector<node> nodes_;
};

}  // namespace keyway::test
