#include "cluster/membership.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "cluster/etcd.hpp"

namespace keyway::cluster {

using std::chrono::steady_clock;

std::string_view to_string(node_state s) noexcept {
  switch (s) {
    case node_state::joining:
      return "joining";
    case node_state::active:
      return "active";
    case node_state::draining:
      return "draining";
  }
  return "joining";
}

std::string encode(const node_info& n) {
  nlohmann::json j;
  j["id"] = n.id;
  j["client_urls"] = n.client_urls;
  j["peer_url"] = n.peer_url;
  j["workers"] = n.workers;
  j["state"] = std::string(to_string(n.state));
  return j.dump();
}

result<node_info, std::string> decode_node(std::string_view text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::string("the value is not a JSON object");
  auto field = [&](const char* name, auto check) -> const nlohmann::json* {
    const auto it = j.find(name);
    return it != j.end() && check(*it) ? &*it : nullptr;
  };
  node_info n;
  const auto* id = field("id", [](const auto& v) { return v.is_string(); });
  const auto* urls = field("client_urls", [](const auto& v) { return v.is_array(); });
  const auto* peer = field("peer_url", [](const auto& v) { return v.is_string(); });
  const auto* workers = field("workers", [](const auto& v) { return v.is_number_unsigned(); });
  const auto* state = field("state", [](const auto& v) { return v.is_string(); });
  if (!id || !urls || !peer || !workers || !state)
    return std::string(
        "the value lacks one of id, client_urls, peer_url, workers, state, or one has the wrong "
        "type");
  n.id = id->get<std::string>();
  for (const auto& u : *urls) {
    if (!u.is_string()) return std::string("client_urls holds a value that is not a string");
    n.client_urls.push_back(u.get<std::string>());
  }
  n.peer_url = peer->get<std::string>();
  n.workers = workers->get<std::uint32_t>();
  const auto s = state->get<std::string>();
  if (s == "joining")
    n.state = node_state::joining;
  else if (s == "active")
    n.state = node_state::active;
  else if (s == "draining")
    n.state = node_state::draining;
  else
    return "state \"" + s + "\" is not joining, active or draining";
  return n;
}

const member* cluster_view::find(std::string_view id) const noexcept {
  for (const auto& m : members)
    if (m.info.id == id) return &m;
  return nullptr;
}

namespace {

std::string prefix_of(const membership_config& cfg) {
  return "/keyway/" + cfg.cluster + "/nodes/";
}

/// Why a node cannot take its id: `holder` (the key's current value, if
/// read) has it.
std::string id_taken(const membership_config& cfg, const std::string& key, const kv* holder) {
  std::string who;
  if (holder != nullptr) {
    if (auto other = decode_node(holder->value)) {
      who = " (peer " + other->peer_url + ", state " + std::string(to_string(other->state));
      for (const auto& u : other->client_urls) who += ", client " + u;
      who += ")";
    }
  }
  return "node id \"" + cfg.self.id + "\" is already registered in cluster \"" + cfg.cluster +
         "\" by another node" + who + " (etcd key " + key +
         "); give this node another cluster.node_id, or, if that node is gone, wait for its "
         "lease to expire (at most its lease_ttl)";
}

std::vector<std::string> ring_of(const std::vector<member>& members) {
  std::vector<std::string> ring;
  for (const auto& m : members)
    if (m.info.state == node_state::active) ring.push_back(m.info.id);
  std::sort(ring.begin(), ring.end());
  return ring;
}

/// Inserts or replaces `m`, keeping members sorted by id.
void upsert(std::vector<member>& members, member m) {
  const auto it =
      std::lower_bound(members.begin(), members.end(), m.info.id,
                       [](const member& a, const std::string& id) { return a.info.id < id; });
  if (it != members.end() && it->info.id == m.info.id)
    *it = std::move(m);
  else
    members.insert(it, std::move(m));
}

}  // namespace

membership::membership(membership_config cfg, observer on_change)
    : cfg_(std::move(cfg)), on_change_(std::move(on_change)), self_(cfg_.self) {
  key_ = prefix() + cfg_.self.id;
  // spdlog builds its registry on first use, inside libspdlog; make that first
  // use happen here, before any control thread logs, and not in two control
  // threads at once.
  (void)spdlog::default_logger_raw();
}

membership::~membership() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
}

std::string membership::prefix() const {
  return prefix_of(cfg_);
}

result<void, std::string> check_join(const membership_config& cfg) {
  const std::string failed = "cannot join cluster \"" + cfg.cluster + "\": ";
  etcd_client etcd(cfg.etcd_endpoints, cfg.etcd_timeout);
  const std::string key = prefix_of(cfg) + cfg.self.id;
  auto range = etcd.range_prefix(key);
  if (!range) return failed + "cannot read the members from etcd: " + range.error();
  for (const kv& item : range->kvs)
    if (item.key == key) return failed + id_taken(cfg, key, &item);
  return {};
}

result<void, std::string> membership::register_self(etcd_client& etcd) {
  const auto ttl = std::chrono::ceil<std::chrono::seconds>(cfg_.lease_ttl);
  auto lease = etcd.lease_grant(ttl);
  etcd_reachable_.store(lease.has_value(), std::memory_order_release);
  if (!lease) return "no lease from etcd: " + lease.error();
  node_info joining = cfg_.self;
  joining.state = node_state::joining;
  auto created = etcd.create_if_absent(key_, encode(joining), *lease);
  if (!created || !created->created) {
    (void)etcd.lease_revoke(*lease);
    if (!created) return "registering " + key_ + " failed: " + created.error();
    if (created->existing && created->existing->lease != 0 &&
        created->existing->lease == this->lease())
      return "the previous incarnation's key " + key_ + " is still there (lease " +
             std::to_string(this->lease()) + " has not expired in etcd yet)";
    return id_taken(cfg_, key_, created->existing ? &*created->existing : nullptr);
  }
  {
    std::lock_guard lock(self_mutex_);
    lease_ = *lease;
    self_ = std::move(joining);
  }
  last_renewed_.store(steady_clock::now().time_since_epoch().count(), std::memory_order_release);
  incarnation_.fetch_add(1, std::memory_order_release);
  lease_held_.store(true, std::memory_order_release);
  etcd_reachable_.store(true, std::memory_order_release);
  return {};
}

result<void, std::string> membership::join() {
  calls_ = std::make_unique<etcd_client>(cfg_.etcd_endpoints, cfg_.etcd_timeout);
  keepalive_ = std::make_unique<etcd_client>(cfg_.etcd_endpoints, cfg_.etcd_timeout);
  const std::string failed = "cannot join cluster \"" + cfg_.cluster + "\": ";
  if (auto st = register_self(*calls_); !st) return failed + st.error();
  if (auto st = resync(); !st) {
    (void)calls_->lease_revoke(lease_);
    lease_held_.store(false, std::memory_order_release);
    return failed + st.error();
  }
  publish();
  thread_ = std::thread([this] { run(); });
  return {};
}

result<void, std::string> membership::set_state(node_state s) {
  // Held across the call: the control thread may register a new incarnation.
  std::lock_guard lock(self_mutex_);
  node_info next = self_;
  next.state = s;
  auto put = calls_->put(key_, encode(next), lease_);
  if (!put)
    return "cannot set node \"" + self_.id + "\" " + std::string(to_string(s)) + ": " + put.error();
  self_ = std::move(next);
  return {};
}

std::int64_t membership::lease() const {
  std::lock_guard lock(self_mutex_);
  return lease_;
}

result<void, std::string> membership::leave() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
  lease_held_.store(false, std::memory_order_release);
  if (!calls_) return {};
  auto r = calls_->lease_revoke(lease());
  if (!r) return "cannot leave cluster \"" + cfg_.cluster + "\": " + r.error();
  return {};
}

std::shared_ptr<const cluster_view> membership::view() const {
  std::lock_guard lock(view_mutex_);
  return view_;
}

result<void, std::string> membership::resync() {
  auto range = keepalive_->range_prefix(prefix());
  etcd_reachable_.store(range.has_value(), std::memory_order_release);
  if (!range) return "cannot read the members: " + range.error();
  cluster_view v;
  v.revision = range->revision;
  for (const kv& item : range->kvs) {
    const std::string id = item.key.substr(prefix().size());
    auto info = decode_node(item.value);
    if (!info) {
      spdlog::warn("cluster: ignoring {}: {}", item.key, info.error());
      continue;
    }
    info->id = id;  // the key names the node, whatever the value says
    if (info->state == node_state::active) v.epoch = std::max(v.epoch, item.mod_revision);
    upsert(v.members, member{std::move(*info), item.lease, item.mod_revision});
  }
  v.ring = ring_of(v.members);
  // The epoch only moves when the ring does: a resync that finds the same ring
  // keeps the epoch this node already had.
  if (working_.revision != 0 && v.ring == working_.ring) v.epoch = working_.epoch;
  working_ = std::move(v);
  watch_ = std::make_unique<etcd_watch>(cfg_.etcd_endpoints, prefix(), working_.revision + 1,
                                        cfg_.etcd_timeout);
  return {};
}

void membership::apply(const watch_event& e) {
  const std::string& key = e.item.key;
  if (!key.starts_with(prefix())) return;
  const std::string id = key.substr(prefix().size());
  if (e.type == watch_event::kind::del) {
    std::erase_if(working_.members, [&](const member& m) { return m.info.id == id; });
  } else if (auto info = decode_node(e.item.value)) {
    info->id = id;
    upsert(working_.members, member{std::move(*info), e.item.lease, e.item.mod_revision});
  } else {
    spdlog::warn("cluster: ignoring {} at revision {}: {}", key, e.item.mod_revision, info.error());
    std::erase_if(working_.members, [&](const member& m) { return m.info.id == id; });
  }
  working_.revision = std::max(working_.revision, e.item.mod_revision);
  auto ring = ring_of(working_.members);
  if (ring != working_.ring) {
    working_.ring = std::move(ring);
    working_.epoch = e.item.mod_revision;
  }
}

void membership::publish() {
  auto v = std::make_shared<const cluster_view>(working_);
  {
    std::lock_guard lock(view_mutex_);
    view_ = v;
  }
  if (on_change_) on_change_(*v);
}

void membership::keepalive() {
  if (!lease_held()) return;
  const auto now = steady_clock::now();
  const std::int64_t lease_id = lease();
  auto ttl = keepalive_->lease_keepalive(lease_id);
  etcd_reachable_.store(ttl.has_value(), std::memory_order_release);
  if (ttl && *ttl > 0) {
    last_renewed_.store(now.time_since_epoch().count(), std::memory_order_release);
    if (outage_logged_) {
      spdlog::warn("cluster: etcd answers again; node \"{}\" kept its lease {:x}", cfg_.self.id,
                   lease_id);
      outage_logged_ = false;
    }
    return;
  }
  if (ttl) {
    spdlog::error(
        "cluster: etcd says this node's lease {:x} is gone; node \"{}\" is out of the "
        "ring",
        lease_id, cfg_.self.id);
    lease_held_.store(false, std::memory_order_release);
    return;
  }
  const auto since = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_renewed());
  if (since >= cfg_.lease_ttl) {
    // etcd is unreachable (from here): the lease is not known to be gone.
    // The node routes with the last ring while its links say the cluster is
    // whole (cluster_node::may_order); etcd says "gone" when it is back, if so.
    if (!outage_logged_)
      spdlog::error(
          "cluster: no keepalive succeeded for {} ms (cluster.lease_ttl {} ms): etcd is "
          "unreachable; node \"{}\" keeps the ring etcd last gave it; last error: {}",
          since.count(), cfg_.lease_ttl.count(), cfg_.self.id, ttl.error());
    outage_logged_ = true;
    return;
  }
  spdlog::warn(
      "cluster: lease keepalive failed ({} ms since the last renewal, lease_ttl {} ms): {}",
      since.count(), cfg_.lease_ttl.count(), ttl.error());
}

void membership::run() {
  using namespace std::chrono_literals;
  const auto period = cfg_.lease_ttl / 3;
  auto next_keepalive = steady_clock::now() + period;
  auto next_resync = steady_clock::now();
  auto next_rejoin = steady_clock::now();
  while (!stop_.load(std::memory_order_acquire)) {
    auto now = steady_clock::now();
    if (now >= next_keepalive) {
      keepalive();
      now = steady_clock::now();
      next_keepalive = now + period;
    }
    if (!lease_held() && now >= next_rejoin) {
      // Out of the ring (the lease expired or was revoked): come back as a new
      // incarnation, joining; the server decides when it is active again.
      if (auto st = register_self(*keepalive_); st) {
        spdlog::warn("cluster: node \"{}\" rejoined as a new incarnation (lease {:x}), joining",
                     cfg_.self.id, lease());
        next_keepalive = steady_clock::now() + period;
      } else {
        spdlog::warn("cluster: node \"{}\" cannot rejoin yet: {}; retrying in 1 s", cfg_.self.id,
                     st.error());
        next_rejoin = now + 1s;
      }
      continue;
    }
    // Wake at least every 100 ms to notice stop_.
    const auto wait = std::clamp(
        std::chrono::duration_cast<std::chrono::milliseconds>(next_keepalive - now), 0ms, 100ms);
    if (!watch_) {
      if (now < next_resync) {
        std::this_thread::sleep_for(wait);
        continue;
      }
      const auto before = working_.ring;
      const auto epoch = working_.epoch;
      if (auto st = resync(); !st) {
        spdlog::warn("cluster: {}; retrying in 500 ms", st.error());
        next_resync = now + 500ms;
        continue;
      }
      if (working_.ring != before || working_.epoch != epoch) publish();
      continue;
    }
    auto events = watch_->next(wait);
    if (!events) {
      spdlog::warn("cluster: the watch on {} broke: {}; reading the members again", prefix(),
                   events.error());
      watch_.reset();
      continue;
    }
    if (events->empty()) continue;
    for (const auto& e : *events) apply(e);
    publish();
  }
}

}  // namespace keyway::cluster
