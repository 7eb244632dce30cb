// subject_index: one worker's replica of every subscription in the daemon, as a
// trie over subject tokens with NATS wildcards (`*` = one token, a final `>` =
// one or more tokens). Queue-group members hang off the leaf of their pattern,
// grouped by name, each group with its own partitioner over member ids.
//
// Threads: owned by one worker; every method runs on that worker's thread.
// Cost: match() first looks the subject up in a cache of the trie nodes it
// matched last time (as nats-server's sublist does; subject_cache): one XXH3
// of the subject instead of one hash per token and a map lookup per level.
// A miss walks one trie path per wildcard branch and caches the result
// (copying the subject into the cache's arena; the cache is emptied when it
// holds cache_capacity subjects, and on every add/remove, which may free
// nodes). Queue-group members are picked per message from the cached nodes, so
// the key still decides.
// add/remove are control-plane operations (allocate, may rebuild a group's
// partitioner table).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/partitioner.hpp"
#include "daemon/subject_cache.hpp"

namespace keyway::daemon {

/// Where a subscription lives: the worker and connection that own it, and the
/// client's id for it. `uid` is unique daemon-wide while the subscription lives
/// (worker id in the top 8 bits), and is the member id inside queue groups.
struct sub_ref {
  std::uint32_t uid = 0;
  std::uint32_t worker = 0;
  std::uint64_t conn = 0;
  std::uint32_t sid = 0;
};

class subject_index {
 public:
  /// groups_slots: table size of each queue group's consistent partitioner.
  explicit subject_index(std::size_t group_slots = 4096);
  ~subject_index();
  subject_index(const subject_index&) = delete;
  subject_index& operator=(const subject_index&) = delete;

  /// pattern must already be valid (proto::validate_pattern). group may be empty.
  void add(std::string_view pattern, std::string_view group, const sub_ref& ref);
  /// Removes the subscription with this uid; returns false if absent.
  bool remove(std::uint32_t uid);

  /// Appends to `out` every plain subscription matching `subject`, and per
  /// matching queue group the one member that `key` maps to. subject must be a
  /// valid literal subject. Returns the number appended. Allocation-free once
  /// `out` has grown to its working size.
  std::size_t match(std::string_view subject, std::span<const std::byte> key, std::vector<sub_ref>& out);
  /// Whether any subscription matches `subject` (what match() would append
  /// something for, whatever the key). Uses and fills the same cache.
  bool any_match(std::string_view subject);

  static constexpr std::size_t max_tokens = 128;
  /// Subjects whose matching nodes are cached.
  static constexpr std::size_t cache_capacity = 4096;
  /// Matching nodes one cache entry holds; a subject matching more is not cached.
  static constexpr std::size_t cached_nodes = 4;

  std::size_t size() const noexcept { return by_uid_.size(); }

 private:
  struct group;
  struct node;
  struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using children = std::unordered_map<std::string, std::unique_ptr<node>, string_hash, std::equal_to<>>;

  struct group {
    std::unique_ptr<core::partitioner> members;
    std::unordered_map<std::uint32_t, sub_ref> by_uid;
  };
  struct node {
    children next;                  // literal tokens
    std::unique_ptr<node> star;     // `*`
    std::unique_ptr<node> tail;     // `>`: its leaf data matches one or more tokens
    std::vector<sub_ref> plain;     // subscriptions ending here
    std::unordered_map<std::string, group, string_hash, std::equal_to<>> groups;
    bool empty() const { return next.empty() && !star && !tail && plain.empty() && groups.empty(); }
  };
  struct location {
    std::string pattern;
    std::string group;
  };

  /// A cache entry: the nodes with subscriptions a subject matches, in match order.
  struct matched_nodes {
    std::array<node*, cached_nodes> nodes{};
    std::size_t count = 0;
  };

  /// The nodes with subscriptions that `subject` matches: a cache entry, or
  /// found_ (valid until the next lookup).
  std::span<node* const> lookup(std::string_view subject);
  static void collect(node& n, std::span<const std::byte> key, std::vector<sub_ref>& out);
  static void match_from(node& n, std::span<const std::string_view> tokens, std::size_t i,
                         std::vector<node*>& found);
  static std::size_t split(std::string_view subject, std::span<std::string_view> out);
  /// Removes `uid` below n along tokens[i..]; returns true if n became empty.
  static bool erase(node& n, std::span<const std::string_view> tokens, std::size_t i,
                    std::string_view group, std::uint32_t uid);

  std::size_t group_slots_;
  node root_;
  std::unordered_map<std::uint32_t, location> by_uid_;
  subject_cache<matched_nodes> cache_{cache_capacity};
  std::vector<node*> found_;  // the last cache miss's matching nodes (reused)
};

}  // namespace keyway::daemon
