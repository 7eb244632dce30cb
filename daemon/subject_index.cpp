#include "daemon/subject_index.hpp"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <new>
#include <stdexcept>

namespace keyway::daemon {

namespace {
// Differs from the worker partitioner's seed: a group's members are picked
// from keys that were already split across workers (see core/partitioner.hpp).
constexpr std::uint64_t group_seed = 0x6b657977'61792d67;  // "keyway-g"
constexpr std::size_t first_buckets = 16;
}  // namespace

struct subject_index::group {
  explicit group(std::size_t slots) : members(slots, group_seed) {}
  core::consistent_partitioner members;
  std::vector<sub_ref> refs;  // by member index (members.index_of)
};

/// What ends at a node. Only nodes where a subscription ends have one.
struct subject_index::leaf {
  std::vector<sub_ref> plain;
  std::unique_ptr<group_map> groups;  // only once a queue group ends here
  bool empty() const noexcept { return plain.empty() && !groups; }
};

/// A trie node, allocated with its token's bytes right after it. Literal
/// children are in edges_; `*` and `>` children hang off star and tail.
/// Every node but the root holds a leaf or a child (prune() keeps it so).
struct subject_index::node {
  node* parent = nullptr;      // nullptr for the root
  node* star = nullptr;        // `*` child (owned)
  node* tail = nullptr;        // `>` child (owned): its leaf matches one or more tokens
  std::unique_ptr<leaf> data;  // subscriptions ending here
  std::uint32_t literals = 0;  // literal children in edges_
  std::uint32_t token_size = 0;

  std::string_view token() const noexcept {
    return {reinterpret_cast<const char*>(this) + sizeof(node), token_size};
  }
  bool empty() const noexcept { return !data && !star && !tail && literals == 0; }
};

// ---- edges and nodes ------------------------------------------------------------------

std::size_t subject_index::edge_hash::operator()(const edge_key& k) const noexcept {
  return XXH3_64bits_withSeed(k.token.data(), k.token.size(),
                              reinterpret_cast<std::uintptr_t>(k.parent));
}
std::size_t subject_index::edge_hash::operator()(const node* n) const noexcept {
  return (*this)(edge_key{n->parent, n->token()});
}
bool subject_index::edge_eq::operator()(const node* a, const node* b) const noexcept {
  return a->parent == b->parent && a->token() == b->token();
}
bool subject_index::edge_eq::operator()(const edge_key& a, const node* b) const noexcept {
  return a.parent == b->parent && a.token == b->token();
}
bool subject_index::edge_eq::operator()(const node* a, const edge_key& b) const noexcept {
  return (*this)(b, a);
}

subject_index::node* subject_index::make_node(node* parent, std::string_view token) {
  void* mem = ::operator new(sizeof(node) + token.size());
  node* n = ::new (mem) node;
  n->parent = parent;
  n->token_size = static_cast<std::uint32_t>(token.size());
  if (!token.empty())
    std::memcpy(static_cast<char*>(mem) + sizeof(node), token.data(), token.size());
  return n;
}

void subject_index::free_node(node* n) noexcept {
  n->~node();
  ::operator delete(static_cast<void*>(n));
}

subject_index::node* subject_index::child(const node& n, std::string_view t) const {
  if (t == "*") return n.star;
  if (t == ">") return n.tail;
  if (n.literals == 0) return nullptr;
  const auto it = edges_.find(edge_key{&n, t});
  return it == edges_.end() ? nullptr : *it;
}

void subject_index::prune(node* n) {
  while (n != root_ && n->empty()) {
    node* p = n->parent;
    if (p->star == n) {
      p->star = nullptr;
    } else if (p->tail == n) {
      p->tail = nullptr;
    } else {
      edges_.erase(n);
      --p->literals;
    }
    free_node(n);
    n = p;
  }
}

// ---- limits and shapes -----------------------------------------------------------------

std::string subject_index::limits_error(const index_limits& lim) {
  if (lim.group_slots < 2 || lim.group_slots > (std::size_t{1} << 24) ||
      !std::has_single_bit(lim.group_slots))
    return "queue group slots is " + std::to_string(lim.group_slots) +
           "; it must be a power of two in [2, 16777216]";
  const std::size_t cap = std::min(lim.group_slots, core::consistent_partitioner::max_members);
  if (lim.max_group_members < 1 || lim.max_group_members > cap)
    return "limits.max_queue_group_members is " + std::to_string(lim.max_group_members) +
           "; it must be in [1, " + std::to_string(cap) + "] (at most the " +
           std::to_string(lim.group_slots) + " slots of a group's partitioner, and at most " +
           std::to_string(core::consistent_partitioner::max_members) + ")";
  if (lim.max_pattern_shapes < 1) return "limits.max_pattern_shapes is 0; it must be at least 1";
  return {};
}

subject_index::subject_index(index_limits lim) {
  owner_.bind_to_this_thread();
  set_limits(lim);
  // The hash tables' first bucket arrays, so that cost_bytes() need only
  // charge a share of their growth.
  edges_.reserve(first_buckets);
  by_uid_.reserve(first_buckets);
  shapes_.reserve(first_buckets);
  root_ = make_node(nullptr, {});
}

void subject_index::set_limits(const index_limits& lim) {
  KEYWAY_ASSERT_OWNER(*this);
  if (std::string why = limits_error(lim); !why.empty()) throw std::invalid_argument(why);
  limits_ = lim;
}

subject_index::~subject_index() {
  // Every node is the root, a literal child (in edges_) or the star/tail of one parent.
  std::vector<node*> all(edges_.begin(), edges_.end());
  all.push_back(root_);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i]->star) all.push_back(all[i]->star);
    if (all[i]->tail) all.push_back(all[i]->tail);
  }
  edges_.clear();
  for (node* n : all) free_node(n);
}

std::size_t subject_index::shape_of(std::span<const std::string_view> tokens, std::span<char> out) {
  bool wild = false;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const bool star = tokens[i] == "*", tail = tokens[i] == ">";
    out[i] = star ? '*' : tail ? '>' : '_';
    wild = wild || star || tail;
  }
  return wild ? tokens.size() : 0;
}

std::size_t subject_index::shape_of(const node* leaf_node, std::span<char> out) {
  std::size_t depth = 0;
  for (const node* n = leaf_node; n->parent; n = n->parent) ++depth;
  bool wild = false;
  std::size_t i = depth;
  for (const node* n = leaf_node; n->parent; n = n->parent) {
    const bool star = n->parent->star == n, tail = n->parent->tail == n;
    out[--i] = star ? '*' : tail ? '>' : '_';
    wild = wild || star || tail;
  }
  return wild ? depth : 0;
}

void subject_index::release_shape(const node* leaf_node) {
  char shape[max_tokens];
  const std::size_t len = shape_of(leaf_node, shape);
  if (len == 0) return;
  const auto it = shapes_.find(std::string_view(shape, len));
  KEYWAY_ASSERT(it != shapes_.end());
  if (--it->second == 0) shapes_.erase(it);
}

// ---- add and remove --------------------------------------------------------------------

std::size_t subject_index::split(std::string_view subject, std::span<std::string_view> out) {
  std::size_t n = 0;
  std::size_t start = 0;
  while (n < out.size()) {
    const std::size_t dot = subject.find('.', start);
    out[n++] =
        subject.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return n;
}

proto::status subject_index::can_add(std::string_view pattern, std::string_view group_name) const {
  KEYWAY_ASSERT_OWNER(*this);
  std::string_view tokens[max_tokens];
  const std::span<const std::string_view> toks(tokens, split(pattern, tokens));
  char shape[max_tokens];
  if (const std::size_t len = shape_of(toks, shape); len != 0) {
    const std::string_view s(shape, len);
    if (shapes_.size() >= limits_.max_pattern_shapes && shapes_.find(s) == shapes_.end()) {
      std::string dotted;  // "_.*.>"
      for (const char c : s) dotted.append(dotted.empty() ? "" : ".").push_back(c);
      return {proto::errc::too_many_subscriptions,
              "pattern " + proto::quote(pattern) +
                  " has a wildcard shape no subscription has yet (" + dotted +
                  ", _ for a literal token) and " + std::to_string(shapes_.size()) +
                  " shapes are in use, limits.max_pattern_shapes is " +
                  std::to_string(limits_.max_pattern_shapes) +
                  "; use the shape of an existing subscription (same length, wildcards in the same "
                  "places) "
                  "or raise limits.max_pattern_shapes in keyway.toml"};
    }
  }
  if (group_name.empty()) return {};
  const node* n = root_;
  for (const std::string_view t : toks) {
    n = child(*n, t);
    if (!n) return {};  // a new pattern: a new group
  }
  if (!n->data || !n->data->groups) return {};
  const auto it = n->data->groups->find(group_name);
  if (it == n->data->groups->end()) return {};
  const core::consistent_partitioner& members = it->second.members;
  const bool at_limit = members.size() >= limits_.max_group_members;
  // A group created before a reload that raised group_slots keeps its table.
  const bool at_slots =
      members.size() >= std::min(members.slots(), core::consistent_partitioner::max_members);
  if (!at_limit && !at_slots) return {};
  std::string why = "queue group " + proto::quote(group_name) + " on " + proto::quote(pattern) +
                    " has " + std::to_string(members.size()) + " members";
  if (at_limit)
    why += ", limits.max_queue_group_members is " + std::to_string(limits_.max_group_members) +
           "; spread the consumers over more queue groups or raise limits.max_queue_group_members "
           "in keyway.toml";
  else
    why += ", as many as its partitioner has slots (" + std::to_string(members.slots()) +
           "); spread the consumers over more queue groups";
  return {proto::errc::too_many_subscriptions, std::move(why)};
}

proto::status subject_index::add(std::string_view pattern, std::string_view group_name,
                                 const sub_ref& ref) {
  KEYWAY_ASSERT_OWNER(*this);
  if (by_uid_.contains(ref.uid))
    return {proto::errc::internal,
            "subscription id " + std::to_string(ref.uid) + " is already in the index"};
  if (proto::status why = can_add(pattern, group_name); !why.ok()) return why;

  std::string_view tokens[max_tokens];
  const std::span<const std::string_view> toks(tokens, split(pattern, tokens));
  node* n = root_;
  for (const std::string_view t : toks) {
    node** slot = t == "*" ? &n->star : t == ">" ? &n->tail : nullptr;
    if (slot) {
      if (!*slot) *slot = make_node(n, t);
      n = *slot;
    } else if (auto it = edges_.find(edge_key{n, t}); it != edges_.end()) {
      n = *it;
    } else {
      node* c = make_node(n, t);
      edges_.insert(c);
      ++n->literals;
      n = c;
    }
  }
  if (!n->data) n->data = std::make_unique<leaf>();
  leaf& l = *n->data;

  location loc{n, nullptr, 0};
  if (group_name.empty()) {
    loc.pos = static_cast<std::uint32_t>(l.plain.size());
    l.plain.push_back(ref);
  } else {
    if (!l.groups) l.groups = std::make_unique<group_map>();
    auto it = l.groups->find(group_name);
    if (it == l.groups->end())
      it = l.groups->try_emplace(std::string(group_name), limits_.group_slots).first;
    group& g = it->second;
    if (const auto added = g.members.add(ref.uid); !added) {
      // can_add() checked the limits and by_uid_ the id, so this is not
      // expected; still, never record a member the partitioner refused.
      if (g.members.size() == 0) l.groups->erase(it);
      if (l.groups->empty()) l.groups.reset();
      if (l.empty()) n->data.reset();
      prune(n);
      return {proto::errc::internal, "queue group " + proto::quote(group_name) + " on " +
                                         proto::quote(pattern) + " refused member " +
                                         std::to_string(ref.uid) + ": " + added.error().message()};
    }
    g.refs.resize(g.members.index_bound());
    g.refs[g.members.index_of(ref.uid)] = ref;
    loc.in_group = &*it;
  }
  by_uid_.emplace(ref.uid, loc);

  char shape[max_tokens];
  if (const std::size_t len = shape_of(toks, shape); len != 0) {
    const std::string_view s(shape, len);
    if (auto it = shapes_.find(s); it != shapes_.end())
      ++it->second;
    else
      shapes_.emplace(std::string(s), 1);
  }
  clear_cache();
  return {};
}

bool subject_index::remove(std::uint32_t uid) {
  KEYWAY_ASSERT_OWNER(*this);
  const auto it = by_uid_.find(uid);
  if (it == by_uid_.end()) return false;
  const location loc = it->second;
  node* n = loc.leaf_node;
  leaf& l = *n->data;
  if (!loc.in_group) {
    KEYWAY_ASSERT(l.plain[loc.pos].uid == uid);
    if (loc.pos + 1 != l.plain.size()) {  // the last one takes its place
      l.plain[loc.pos] = l.plain.back();
      by_uid_.find(l.plain[loc.pos].uid)->second.pos = loc.pos;
    }
    l.plain.pop_back();
  } else {
    group& g = loc.in_group->second;
    [[maybe_unused]] const auto removed = g.members.remove(uid);
    KEYWAY_ASSERT(removed);  // add() recorded only members the partitioner took
    if (g.members.size() == 0) {
      l.groups->erase(l.groups->find(std::string_view(loc.in_group->first)));
      if (l.groups->empty()) l.groups.reset();
    }
  }
  by_uid_.erase(it);
  release_shape(n);
  if (l.empty()) n->data.reset();
  prune(n);
  clear_cache();  // prune() may have freed cached nodes
  return true;
}

// ---- cost ------------------------------------------------------------------------------

std::size_t subject_index::cost_bytes(std::string_view pattern, std::string_view group_name,
                                      std::size_t group_slots) {
  // glibc's chunk for a request of n bytes: 8 bytes of header, 16-byte granules,
  // 32 at least; from 128 KiB (the default mmap threshold) it may be mmapped
  // instead: 16 bytes of header, whole 4 KiB pages.
  constexpr auto chunk = [](std::size_t n) {
    if (n + 16 >= (std::size_t{128} << 10)) return (n + 16 + 4095) & ~std::size_t{4095};
    return std::max<std::size_t>(32, (n + 8 + 15) & ~std::size_t{15});
  };
  constexpr std::size_t ptr = sizeof(void*);
  // A hash container's element: a node of next pointer, value and maybe the
  // cached hash; its share of the bucket array, which has at most about twice
  // as many buckets as elements (max_load_factor 1, growth by 2, prime sizes).
  constexpr auto element = [chunk](std::size_t value) {
    return chunk(ptr + value + sizeof(std::size_t)) + 3 * ptr;
  };
  // A std::string's heap buffer, past the 15 bytes kept in place.
  constexpr auto string_heap = [chunk](std::size_t len) { return len > 15 ? chunk(len + 1) : 0; };

  std::string_view tokens[max_tokens];
  const std::size_t count = split(pattern, tokens);
  std::size_t bytes = 0;
  bool wild = false;
  for (std::size_t i = 0; i < count; ++i) {
    bytes += chunk(sizeof(node) + tokens[i].size());
    if (tokens[i] == "*" || tokens[i] == ">")
      wild = true;
    else
      bytes += element(sizeof(node*));  // its entry in edges_
  }
  bytes += chunk(sizeof(leaf));
  bytes += element(sizeof(std::pair<const std::uint32_t, location>));  // by_uid_
  if (wild)
    bytes +=
        element(sizeof(std::pair<const std::string, std::size_t>)) + string_heap(count);  // shapes_
  if (group_name.empty())
    return bytes + 2 * sizeof(sub_ref) + 24;  // the plain list grows by doubling

  // The group, in full: its map (and that map's first bucket array), its entry
  // and name, its slot table and weight count, then the member arrays (ids,
  // weights, free and live indexes, refs: up to twice the members, and a
  // chunk each) and the id table (up to 4 entries of 4 bytes per member, 8 at least).
  bytes += chunk(sizeof(group_map)) + chunk(16 * ptr);
  bytes += element(sizeof(group_entry)) + string_heap(group_name.size());
  bytes += chunk(2 * group_slots) + chunk(4 * ptr + 16);
  bytes +=
      2 * (sizeof(std::uint32_t) + sizeof(double) + 2 * sizeof(std::uint16_t) + sizeof(sub_ref)) +
      5 * 24;
  bytes += 4 * sizeof(std::uint32_t) + chunk(8 * sizeof(std::uint32_t));
  return bytes;
}

// ---- match -----------------------------------------------------------------------------

void subject_index::collect(node& n, std::span<const std::byte> key, std::vector<sub_ref>& out) {
  const leaf& l = *n.data;
  out.insert(out.end(), l.plain.begin(), l.plain.end());
  if (!l.groups) return;
  for (const auto& [name, g] : *l.groups) out.push_back(g.refs[g.members.pick_index(key)]);
}

void subject_index::match_from(node& n, std::span<const std::string_view> tokens, std::size_t i) {
  auto hit = [&](node& leaf_node) {
    if (leaf_node.data) found_.push_back(&leaf_node);  // else a path to longer patterns only
  };
  if (n.tail) {  // `>` matches tokens[i..], which is non-empty here
    ++visits_;
    hit(*n.tail);
  }
  const bool last = i + 1 == tokens.size();
  if (n.literals != 0) {
    if (const auto it = edges_.find(edge_key{&n, tokens[i]}); it != edges_.end()) {
      ++visits_;
      if (last)
        hit(**it);
      else
        match_from(**it, tokens, i + 1);
    }
  }
  if (n.star) {
    ++visits_;
    if (last)
      hit(*n.star);
    else
      match_from(*n.star, tokens, i + 1);
  }
}

void subject_index::clear_cache() noexcept {
  cache_.clear();
  spilled_.clear();
}

std::span<subject_index::node* const> subject_index::lookup(std::string_view subject) {
  if (const matched_nodes* hit = cache_.find(subject)) {
    if (hit->count <= cached_nodes) return {hit->nodes.data(), hit->count};
    return {spilled_.data() + hit->offset, hit->count};
  }
  std::string_view tokens[max_tokens];
  const std::size_t count = split(subject, tokens);
  found_.clear();
  visits_ = 0;
  if (count != 0) match_from(*root_, std::span<const std::string_view>(tokens, count), 0);
  if (found_.size() > spill_capacity) return found_;  // too long to cache
  // Make room first, so that cache_ never clears itself behind spilled_'s back.
  if (cache_.size() >= cache_capacity) clear_cache();
  if (found_.size() > cached_nodes && spilled_.size() + found_.size() > spill_capacity)
    clear_cache();
  matched_nodes entry;
  entry.count = static_cast<std::uint32_t>(found_.size());
  if (found_.size() <= cached_nodes) {
    std::copy(found_.begin(), found_.end(), entry.nodes.begin());
  } else {
    entry.offset = static_cast<std::uint32_t>(spilled_.size());
    spilled_.insert(spilled_.end(), found_.begin(), found_.end());
  }
  cache_.insert(subject, entry);
  return found_;
}

std::size_t subject_index::match(std::string_view subject, std::span<const std::byte> key,
                                 std::vector<sub_ref>& out) {
  KEYWAY_ASSERT_OWNER(*this);
  const std::size_t before = out.size();
  for (node* n : lookup(subject)) collect(*n, key, out);
  return out.size() - before;
}

bool subject_index::any_match(std::string_view subject) {
  KEYWAY_ASSERT_OWNER(*this);
  return !lookup(subject).empty();
}

}  // namespace keyway::daemon
