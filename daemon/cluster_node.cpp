#include "daemon/cluster_node.hpp"

#include <unistd.h>

#include <climits>

#include <spdlog/spdlog.h>
#include <asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace keyway::daemon {

namespace {

std::uint32_t tag_of(std::string_view id) {
  const std::uint32_t t = cluster::placement::member_of(id) & 0xFFFFFFu;
  return t == 0 ? 1 : t;
}

/// A peer URL (tcp://HOST:PORT, parse_listen_url's rules; HOST an address,
/// or a name resolved now), or nothing.
std::optional<asio::ip::tcp::endpoint> endpoint_of(std::string_view url) {
  listen_address a;
  try {
    a = parse_listen_url(url);
  } catch (const std::invalid_argument&) {
    return std::nullopt;
  }
  if (a.type != listen_address::kind::tcp) return std::nullopt;
  std::error_code ec;
  asio::io_context io;
  asio::ip::tcp::resolver resolver(io);
  const auto found = resolver.resolve(a.host, std::to_string(a.port), ec);
  if (ec || found.empty()) return std::nullopt;
  return found.begin()->endpoint();
}

std::string json_str(std::string_view s) {
  return nlohmann::json(std::string(s)).dump();
}

}  // namespace

cluster_node::cluster_node(cluster::membership_config cfg, std::uint32_t workers,
                           std::function<void()> changed)
    : cfg_(std::move(cfg)),
      workers_(workers),
      tag_(tag_of(cfg_.self.id)),
      changed_(std::move(changed)),
      links_up_(workers) {
  link_options_.heartbeat = std::max<std::chrono::milliseconds>(
      std::chrono::milliseconds(100),
      std::chrono::duration_cast<std::chrono::milliseconds>(cfg_.lease_ttl / 6));
  auto empty = std::make_shared<cluster_map>();
  empty->client_urls = cfg_.self.client_urls;
  map_ = std::move(empty);
  indexes_[cfg_.self.id] = 0;
}

cluster_node::~cluster_node() {
  stop_activator();
}

result<void, std::string> cluster_node::join() {
  auto self = cfg_;
  self.self.workers = workers_;
  membership_ = std::make_unique<cluster::membership>(
      self, [this](const cluster::cluster_view& v) { on_view(v); });
  if (auto joined = membership_->join(); !joined) return joined.error();
  // Ids whose tags collide would make two nodes' ownerCore values the same.
  const auto view = membership_->view();
  for (const auto& m : view->members)
    if (m.info.id != cfg_.self.id && tag_of(m.info.id) == tag_) {
      (void)membership_->leave();
      return "node ids \"" + cfg_.self.id + "\" and \"" + m.info.id +
             "\" hash to the same ownerCore tag " + std::to_string(tag_) +
             "; rename this node (cluster.node_id)";
    }
  spdlog::info("cluster \"{}\": node \"{}\" joined (lease {}, {} members, epoch {})", cfg_.cluster,
               cfg_.self.id, membership_->lease(), view->members.size(), view->epoch);
  activator_ = std::thread([this] { activate_when_ready(); });
  return {};
}

void cluster_node::stop_activator() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (activator_.joinable()) activator_.join();
}

void cluster_node::set_draining() {
  stop_activator();
  if (!membership_) return;
  if (auto st = membership_->set_state(cluster::node_state::draining); !st) {
    spdlog::warn("cluster: cannot mark this node draining in etcd: {}", st.error());
    return;
  }
  spdlog::info("cluster: node \"{}\" is draining: it left the ring", cfg_.self.id);
}

void cluster_node::leave() {
  stop_activator();
  std::unique_ptr<cluster::membership> m;
  {
    // ready() reads membership_ under the lock (the admin thread); destroy it
    // outside, as its control thread's observer takes the lock too.
    std::lock_guard lock(mutex_);
    m = std::move(membership_);
  }
  if (!m) return;
  if (auto st = m->leave(); !st)
    spdlog::warn("cluster: cannot leave cleanly (the lease expires within {} ms): {}",
                 cfg_.lease_ttl.count(), st.error());
  else
    spdlog::info("cluster: node \"{}\" left the cluster", cfg_.self.id);
}

std::int64_t cluster_node::lease() const {
  return membership_ ? membership_->lease() : 0;
}

std::shared_ptr<const cluster_map> cluster_node::map() const {
  std::lock_guard lock(mutex_);
  return map_;
}

std::vector<std::shared_ptr<const cluster_map>> cluster_node::maps_since(
    std::uint64_t after) const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<const cluster_map>> out;
  for (const auto& m : history_)
    if (m->generation > after) out.push_back(m);
  if (out.empty()) out.push_back(map_);
  return out;
}

std::chrono::milliseconds cluster_node::handoff_timeout() const noexcept {
  return std::max<std::chrono::milliseconds>(std::chrono::milliseconds(5000), 2 * cfg_.lease_ttl);
}

void cluster_node::handoff_finished(std::int64_t epoch, std::chrono::nanoseconds took,
                                    bool timed_out) {
  {
    std::lock_guard lock(mutex_);
    handed_off_ = std::max(handed_off_, epoch);
    ++handoffs_;
    if (timed_out) ++handoff_timeouts_;
    last_handoff_seconds_ = std::chrono::duration<double>(took).count();
  }
  handed_off_cv_.notify_all();
}

bool cluster_node::wait_handed_off(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return handed_off_cv_.wait_for(lock, timeout, [&] {
    const bool in_ring = map_->placement &&
                         std::find(map_->placement->nodes().begin(), map_->placement->nodes().end(),
                                   cfg_.self.id) != map_->placement->nodes().end();
    return !in_ring && handed_off_ >= map_->epoch;
  });
}

std::uint32_t cluster_node::index_of(const std::string& id) {
  auto [it, added] = indexes_.try_emplace(id, static_cast<std::uint32_t>(indexes_.size()));
  return it->second;
}

void cluster_node::on_view(const cluster::cluster_view& v) {
  auto m = std::make_shared<cluster_map>();
  m->epoch = v.epoch;
  m->client_urls = cfg_.self.client_urls;
  std::vector<cluster_peer> peers;
  cluster::node_state self_state = cluster::node_state::joining;
  std::int64_t self_lease = 0;
  for (const auto& mem : v.members) {
    if (mem.info.id == cfg_.self.id) {
      self_state = mem.info.state;
      self_lease = mem.lease;
      continue;
    }
    cluster_peer p;
    p.id = mem.info.id;
    p.lease = mem.lease;
    p.peer_url = mem.info.peer_url;
    p.endpoint = endpoint_of(p.peer_url);
    if (!p.endpoint)
      spdlog::warn("cluster: node \"{}\" announces peer URL \"{}\", which is not tcp://HOST:PORT",
                   p.id, mem.info.peer_url);
    p.workers = mem.info.workers;
    p.state = mem.info.state;
    p.client_urls = mem.info.client_urls;
    for (const auto& u : p.client_urls) m->client_urls.push_back(u);
    peers.push_back(std::move(p));
  }
  if (!v.ring.empty()) {
    auto built = cluster::placement::build(v.ring, v.epoch);
    if (built)
      m->placement = std::move(*built);
    else
      spdlog::error("cluster: cannot place keys on ring of epoch {}: {}", v.epoch, built.error());
  }
  {
    std::lock_guard lock(mutex_);
    for (auto& p : peers) p.index = index_of(p.id);
    self_lease_in_view_ = self_lease;
    m->peers = std::move(peers);
    if (m->placement)
      for (const auto& id : m->placement->nodes()) m->ring_index.push_back(index_of(id));
    m->generation = generation_.load(std::memory_order_relaxed) + 1;
    map_ = m;
    history_.push_back(m);
    if (history_.size() > max_history) history_.erase(history_.begin());
    state_ = self_state;
    generation_.store(m->generation, std::memory_order_release);
  }
  wake_.notify_all();
  handed_off_cv_.notify_all();
  if (changed_) changed_();
}

void cluster_node::link_changed(std::uint32_t worker, std::uint32_t index, bool up) {
  {
    std::lock_guard lock(mutex_);
    if (worker >= links_up_.size()) return;
    if (up)
      links_up_[worker].insert(index);
    else
      links_up_[worker].erase(index);
  }
  wake_.notify_all();
}

void cluster_node::snapshot_received(std::uint32_t index, std::int64_t lease,
                                     std::uint32_t peer_worker) {
  {
    std::lock_guard lock(mutex_);
    auto& rec = snapshots_[index];
    if (rec.lease != lease) rec = {lease, {}};
    rec.workers.insert(peer_worker);
  }
  wake_.notify_all();
}

bool cluster_node::ready_locked() const {
  return state_ == cluster::node_state::active && peers_ready_locked() && may_order_locked();
}

void cluster_node::refresh_order_deadline() {
  const auto now = std::chrono::steady_clock::now();
  // This thread not running for half a lease means the process was not (a
  // stop, a stalled VM): its view of the links is as old as that.
  if (last_look_ != std::chrono::steady_clock::time_point{} &&
      now - last_look_ > cfg_.lease_ttl / 2)
    woke_at_ = now;
  last_look_ = now;
  std::string why;
  const auto until = order_deadline_locked(now, &why);
  order_until_ns_.store(
      until ? static_cast<std::uint64_t>(
                  std::chrono::duration_cast<std::chrono::nanoseconds>(until->time_since_epoch())
                      .count())
            : 0,
      std::memory_order_relaxed);
  const bool order = until.has_value();
  if (order == ordering_) return;
  ordering_ = order;
  if (order)
    spdlog::warn("cluster: node \"{}\" orders publishes again", cfg_.self.id);
  else
    spdlog::error("cluster: node \"{}\" stops ordering publishes: {}", cfg_.self.id, why);
}

bool cluster_node::may_order_locked(std::string* why) const {
  return order_deadline_locked(std::chrono::steady_clock::now(), why).has_value();
}

std::optional<std::chrono::steady_clock::time_point> cluster_node::order_deadline_locked(
    std::chrono::steady_clock::time_point now, std::string* why) const {
  using std::chrono::milliseconds;
  if (!membership_ || !membership_->lease_held()) {
    if (why) *why = "the lease is gone: not registered in etcd";
    return std::nullopt;
  }
  if (self_lease_in_view_ != membership_->lease()) {
    // Registered again (a new incarnation) but the map is still the old
    // one's: routing by it could order keys this incarnation does not own.
    if (why) *why = "waiting for etcd's view to show this incarnation";
    return std::nullopt;
  }
  const auto renewed = membership_->last_renewed();
  auto until = renewed + cfg_.lease_ttl;
  std::string unlinked;
  for (const auto& p : map_->peers)
    if (p.state == cluster::node_state::active && links_up_to(p.index) < links_up_.size())
      unlinked += (unlinked.empty() ? "" : ", ") + p.id;
  const bool just_woke = now - woke_at_ < milliseconds(1000);
  // Every link up: the cluster is whole, so good until a little past the
  // activator's next look even if etcd says nothing (an etcd outage), with
  // no gap between looks. Not right after a stall: the links may be dead
  // and not noticed yet.
  if (unlinked.empty() && !just_woke) until = std::max(until, now + milliseconds(600));
  const auto unconfirmed = std::chrono::duration_cast<milliseconds>(now - renewed);
  if (why && unconfirmed >= cfg_.lease_ttl) {
    *why = "etcd unreachable for " + std::to_string(unconfirmed.count()) + " ms (lease_ttl " +
           std::to_string(cfg_.lease_ttl.count()) + " ms): ";
    if (!unlinked.empty())
      *why +=
          "no link to " + unlinked + ": not ordering (the others may have taken this node's keys)";
    else if (just_woke)
      *why +=
          "this process was not running for a while: not ordering until etcd or the links answer";
    else
      *why += "routing with the ring of epoch " + std::to_string(map_->epoch) +
              " while every link is up; joins and leaves wait for etcd";
  }
  if (until <= now) return std::nullopt;
  return until;
}

std::size_t cluster_node::links_up_to(std::uint32_t index) const {
  std::size_t up = 0;
  for (const auto& l : links_up_) up += l.count(index);
  return up;
}

std::size_t cluster_node::snapshots_from(const cluster_peer& p) const {
  const auto it = snapshots_.find(p.index);
  return it == snapshots_.end() || it->second.lease != p.lease ? 0 : it->second.workers.size();
}

bool cluster_node::peers_ready_locked() const {
  if (!membership_ || !membership_->lease_held()) return false;
  for (const auto& p : map_->peers)
    if (links_up_to(p.index) < links_up_.size() || snapshots_from(p) < p.workers) return false;
  return true;
}

bool cluster_node::ready() const {
  std::lock_guard lock(mutex_);
  return ready_locked();
}

std::string cluster_node::readiness_report() const {
  std::lock_guard lock(mutex_);
  std::string out;
  const bool active = state_ == cluster::node_state::active;
  out += std::string(active ? "[+]" : "[-]") + "cluster state " +
         std::string(cluster::to_string(state_)) + "\n";
  std::string why;
  const bool order = may_order_locked(&why);
  out += std::string(order ? "[+]" : "[-]") + "cluster lease " +
         (why.empty() ? "held, confirmed by etcd within lease_ttl" : why) + "\n";
  for (const auto& p : map_->peers) {
    const std::size_t up = links_up_to(p.index);
    out += std::string(up == links_up_.size() ? "[+]" : "[-]") + "cluster links to " + p.id + ": " +
           std::to_string(up) + " of " + std::to_string(links_up_.size()) + " up\n";
    const std::size_t got = snapshots_from(p);
    out += std::string(got >= p.workers ? "[+]" : "[-]") + "cluster interest snapshots from " +
           p.id + ": " + std::to_string(got) + " of " + std::to_string(p.workers) + "\n";
  }
  return out;
}

std::string cluster_node::status_json() const {
  std::lock_guard lock(mutex_);
  std::string nodes = "{\"id\":" + json_str(cfg_.self.id) +
                      ",\"self\":true,\"owner_core_tag\":" + std::to_string(tag_) +
                      ",\"state\":" + json_str(cluster::to_string(state_)) +
                      ",\"peer_url\":" + json_str(cfg_.self.peer_url) +
                      ",\"client_urls\":" + nlohmann::json(cfg_.self.client_urls).dump() + "}";
  for (const auto& p : map_->peers) {
    const std::size_t up = links_up_to(p.index);
    nodes += ",{\"id\":" + json_str(p.id) +
             ",\"self\":false,\"owner_core_tag\":" + std::to_string(tag_of(p.id)) +
             ",\"state\":" + json_str(cluster::to_string(p.state)) +
             ",\"peer_url\":" + json_str(p.peer_url) +
             ",\"client_urls\":" + nlohmann::json(p.client_urls).dump() +
             ",\"links_up\":" + std::to_string(up) + "}";
  }
  std::string ring = "[";
  if (map_->placement)
    for (std::size_t i = 0; i < map_->placement->nodes().size(); ++i)
      ring += (i ? "," : "") + json_str(map_->placement->nodes()[i]);
  ring += "]";
  return "{\"name\":" + json_str(cfg_.cluster) + ",\"node_id\":" + json_str(cfg_.self.id) +
         ",\"state\":" + json_str(cluster::to_string(state_)) +
         ",\"epoch\":" + std::to_string(map_->epoch) + ",\"ring\":" + ring +
         ",\"ready\":" + (ready_locked() ? "true" : "false") + ",\"nodes\":[" + nodes + "]}";
}

cluster_node::stats cluster_node::read_stats() const {
  std::lock_guard lock(mutex_);
  stats st;
  st.epoch = map_->epoch;
  st.handoffs = handoffs_;
  st.handoff_timeouts = handoff_timeouts_;
  st.last_handoff_seconds = last_handoff_seconds_;
  ++st.members[static_cast<std::size_t>(state_)];
  for (const auto& p : map_->peers) {
    ++st.members[static_cast<std::size_t>(p.state)];
    const std::size_t up = links_up_to(p.index);
    st.peers.push_back({p.id, p.index, up});
  }
  return st;
}

void cluster_node::activate_when_ready() {
  std::uint64_t activated = 0;  // the incarnation made active
  std::unique_lock lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, std::chrono::milliseconds(200));
    if (stop_) return;
    refresh_order_deadline();
    const std::uint64_t inc = membership_->incarnation();
    if (inc == activated || !peers_ready_locked()) continue;
    lock.unlock();
    auto st = membership_->set_state(cluster::node_state::active);
    lock.lock();
    if (!st) {
      spdlog::warn("cluster: cannot mark this node active in etcd (retrying): {}", st.error());
      continue;
    }
    activated = inc;
    spdlog::info("cluster \"{}\": node \"{}\" is active (every peer's interest received)",
                 cfg_.cluster, cfg_.self.id);
  }
}

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
  if (!c.peer_advertise.empty()) {
    m.self.peer_url = c.peer_advertise;
  } else if (c.peer_listen.host == "0.0.0.0" || c.peer_listen.host == "::") {
    return "cluster.peer_advertise is empty and cluster.peer_listen, " + c.peer_listen.to_string() +
           ", is not an address other nodes can dial; set cluster.peer_advertise";
  } else {
    m.self.peer_url = c.peer_listen.to_string();
  }
  m.self.workers = o.workers;  // 0 (one per CPU) until the server has resolved it
  m.etcd_endpoints = c.etcd_endpoints;
  m.lease_ttl = c.lease_ttl;
  return m;
}

}  // namespace keyway::daemon
