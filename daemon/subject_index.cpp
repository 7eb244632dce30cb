#include "daemon/subject_index.hpp"

#include <algorithm>
#include <cassert>

namespace keyway::daemon {

namespace {
// Differs from the worker partitioner's seed: a group's members are picked
// from keys that were already split across workers (see core/partitioner.hpp).
constexpr std::uint64_t group_seed = 0x6b657977'61792d67;  // "keyway-g"
}  // namespace

subject_index::subject_index(std::size_t group_slots) : group_slots_(group_slots) {}
subject_index::~subject_index() = default;

std::size_t subject_index::split(std::string_view subject, std::span<std::string_view> out) {
  std::size_t n = 0;
  std::size_t start = 0;
  while (n < out.size()) {
    const std::size_t dot = subject.find('.', start);
    out[n++] = subject.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return n;
}

void subject_index::add(std::string_view pattern, std::string_view group_name, const sub_ref& ref) {
  std::string_view tokens[max_tokens];
  const std::size_t count = split(pattern, tokens);
  node* n = &root_;
  for (std::size_t i = 0; i < count; ++i) {
    const std::string_view t = tokens[i];
    std::unique_ptr<node>* slot;
    if (t == "*") {
      slot = &n->star;
    } else if (t == ">") {
      slot = &n->tail;
    } else {
      auto it = n->next.find(t);
      if (it == n->next.end()) it = n->next.emplace(std::string(t), nullptr).first;
      slot = &it->second;
    }
    if (!*slot) *slot = std::make_unique<node>();
    n = slot->get();
  }
  if (group_name.empty()) {
    n->plain.push_back(ref);
  } else {
    auto it = n->groups.find(group_name);
    if (it == n->groups.end()) {
      core::partitioner_options opt;
      opt.seed = group_seed;
      opt.slots = group_slots_;
      auto p = core::make_partitioner(core::partition_strategy::consistent, opt);
      assert(p);
      it = n->groups.emplace(std::string(group_name), group{std::move(*p), {}}).first;
    }
    // uids are unique daemon-wide, so add() cannot see a duplicate.
    auto added = it->second.members->add(ref.uid);
    assert(added);
    (void)added;
    it->second.by_uid.emplace(ref.uid, ref);
  }
  by_uid_.emplace(ref.uid, location{std::string(pattern), std::string(group_name)});
  cache_.clear();
}

bool subject_index::remove(std::uint32_t uid) {
  auto it = by_uid_.find(uid);
  if (it == by_uid_.end()) return false;
  std::string_view tokens[max_tokens];
  const std::size_t count = split(it->second.pattern, tokens);
  erase(root_, std::span<const std::string_view>(tokens, count), 0, it->second.group, uid);
  by_uid_.erase(it);
  cache_.clear();  // erase() may have freed cached nodes
  return true;
}

bool subject_index::erase(node& n, std::span<const std::string_view> tokens, std::size_t i,
                          std::string_view group_name, std::uint32_t uid) {
  if (i == tokens.size()) {
    if (group_name.empty()) {
      std::erase_if(n.plain, [&](const sub_ref& r) { return r.uid == uid; });
    } else if (auto g = n.groups.find(group_name); g != n.groups.end()) {
      (void)g->second.members->remove(uid);
      g->second.by_uid.erase(uid);
      if (g->second.by_uid.empty()) n.groups.erase(g);
    }
    return n.empty();
  }
  const std::string_view t = tokens[i];
  std::unique_ptr<node>* child = nullptr;
  children::iterator lit;
  if (t == "*") {
    child = &n.star;
  } else if (t == ">") {
    child = &n.tail;
  } else {
    lit = n.next.find(t);
    if (lit != n.next.end()) child = &lit->second;
  }
  if (child && *child && erase(**child, tokens, i + 1, group_name, uid)) {
    if (t == "*" || t == ">")
      child->reset();
    else
      n.next.erase(lit);
  }
  return n.empty();
}

void subject_index::collect(node& n, std::span<const std::byte> key, std::vector<sub_ref>& out) {
  out.insert(out.end(), n.plain.begin(), n.plain.end());
  for (auto& [name, g] : n.groups) {
    const std::uint32_t member = g.members->pick(key);
    out.push_back(g.by_uid.find(member)->second);
  }
}

void subject_index::match_from(node& n, std::span<const std::string_view> tokens, std::size_t i,
                               std::vector<node*>& found) {
  auto hit = [&](node& leaf) {
    if (leaf.plain.empty() && leaf.groups.empty()) return;  // a path to longer patterns only
    found.push_back(&leaf);
  };
  if (n.tail) hit(*n.tail);  // `>` matches tokens[i..], which is non-empty here
  const std::string_view t = tokens[i];
  const bool last = i + 1 == tokens.size();
  if (auto it = n.next.find(t); it != n.next.end()) {
    if (last)
      hit(*it->second);
    else
      match_from(*it->second, tokens, i + 1, found);
  }
  if (n.star) {
    if (last)
      hit(*n.star);
    else
      match_from(*n.star, tokens, i + 1, found);
  }
}

std::span<subject_index::node* const> subject_index::lookup(std::string_view subject) {
  if (const matched_nodes* hit = cache_.find(subject)) return {hit->nodes.data(), hit->count};
  std::string_view tokens[max_tokens];
  const std::size_t count = split(subject, tokens);
  found_.clear();
  if (count != 0) match_from(root_, std::span<const std::string_view>(tokens, count), 0, found_);
  if (found_.size() <= cached_nodes) {
    matched_nodes entry;
    std::copy(found_.begin(), found_.end(), entry.nodes.begin());
    entry.count = found_.size();
    cache_.insert(subject, entry);
  }
  return found_;
}

std::size_t subject_index::match(std::string_view subject, std::span<const std::byte> key,
                                 std::vector<sub_ref>& out) {
  const std::size_t before = out.size();
  for (node* n : lookup(subject)) collect(*n, key, out);
  return out.size() - before;
}

bool subject_index::any_match(std::string_view subject) { return !lookup(subject).empty(); }

}  // namespace keyway::daemon
