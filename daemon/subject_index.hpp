// subject_index: one worker's replica of every subscription in the daemon, as a
// trie over subject tokens with NATS wildcards (`*` = one token, a final `>` =
// one or more tokens). Queue-group members hang off the leaf of their pattern,
// grouped by name, each group with its own consistent partitioner over member
// ids. Limits (index_limits) bound what one replica may be made to hold and
// to do: can_add() refuses, with a status a client can read, a member beyond
// max_group_members and a pattern whose wildcard shape would be one more than
// max_pattern_shapes.
//
// Threads: owned by one worker; every method runs on that worker's thread
// (asserted: bound at construction, rebound by bind_owner() on the worker;
// cost_bytes() and limits_error() are pure: any thread).
//
// Cost of a publish: match() first looks the subject up in a cache of the trie
// nodes it matched last time (as nats-server's sublist does; subject_cache):
// one XXH3 of the subject instead of one hash per token. A miss walks the trie
// and caches the result (copying the subject into the cache's arena; the cache
// is emptied when it holds cache_capacity subjects, and on every add/remove,
// which may free nodes). The walk is bounded by the shape limit: a trie node
// at depth d that a subject reaches is fixed by the subject and by which of
// the first d tokens are `*` or `>`, so at most (shapes + 1) nodes per depth
// (+1: the all-literal path) and at most (max_pattern_shapes + 1) * n node
// visits for a subject of n tokens; at the default limits, 65 * n (2,080 for
// 32 tokens), each one hash lookup. Queue-group members are picked per message
// from the cached nodes (one XXH3 of the key per group), so the key decides.
//
// Cost of add/remove (control path, allocates): O(tokens) for the trie,
// O(group_slots) for a queue-group join or leave (the group's partitioner
// table; group_slots is a per-group constant), expected O(1) otherwise:
// nothing is linear in the number of members or subscriptions.
//
// Memory: see cost_bytes(), an upper bound per subscription (on glibc's
// malloc, 64-bit): a new literal token of up to 8 bytes costs about 115 bytes
// (node, edge entry, bucket share), a longer one its length more; a new queue
// group 2 * group_slots bytes plus about 700. Fixed per replica: the match
// cache, 512 KiB of slots from the first match on, plus the cached subjects'
// bytes and up to spill_capacity node pointers (128 KiB).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/assert.hpp"
#include "core/consistent_partitioner.hpp"
#include "daemon/subject_cache.hpp"
#include "proto/errc.hpp"

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

struct index_limits {
  /// Slot table size of each group's consistent partitioner: a power of two
  /// in [2, 2^24]. Costs 2 bytes per slot per group.
  std::size_t group_slots = 4096;
  /// Members of one queue group on one pattern (limits.max_queue_group_members),
  /// in [1, min(group_slots, consistent_partitioner::max_members)].
  std::size_t max_group_members = 1024;
  /// Distinct shapes of the patterns holding a wildcard
  /// (limits.max_pattern_shapes), at least 1.
  std::size_t max_pattern_shapes = 64;
};

class subject_index {
 public:
  /// Throws std::invalid_argument (with limits_error()'s message) if `lim` is invalid.
  explicit subject_index(index_limits lim = {});
  ~subject_index();
  subject_index(const subject_index&) = delete;
  subject_index& operator=(const subject_index&) = delete;

  /// An empty string if `lim` is valid, else a message naming the field, the
  /// value and the bound.
  static std::string limits_error(const index_limits& lim);
  /// Live reload: the new limits apply to later adds only. Members and shapes
  /// already present stay; an existing group keeps its slot table (new groups
  /// get lim.group_slots) and never takes more members than it has slots.
  /// Throws std::invalid_argument if `lim` is invalid (check limits_error() first).
  void set_limits(const index_limits& lim);
  const index_limits& limits() const noexcept { return limits_; }

  /// ok, or why `pattern`/`group` cannot be added now: errc::too_many_subscriptions
  /// with a message naming the value, the limit and the config key. Does not modify.
  /// pattern must already be valid (proto::validate_pattern). group may be empty.
  proto::status can_add(std::string_view pattern, std::string_view group) const;
  /// Adds unless can_add() refuses (or, errc::internal, ref.uid is already
  /// present); on refusal nothing at all is recorded and the status says why.
  proto::status add(std::string_view pattern, std::string_view group, const sub_ref& ref);
  /// Removes the subscription with this uid; returns false if absent.
  bool remove(std::uint32_t uid);

  /// Upper bound, in bytes, of what one replica spends on one subscription with
  /// this pattern and group: a trie node (and edge entry) per token, the
  /// location record, a shape entry if the pattern has a wildcard, and for a
  /// non-empty group the group's partitioner table and maps, charged in full to
  /// every member. Tokens and groups that already exist cost less. Modelled on
  /// glibc's malloc (16-byte granules, 8 bytes of header; from 128 KiB whole
  /// 4 KiB pages) and the standard containers' growth (at most twice the size).
  /// The shared hash tables' bucket arrays are charged as a share per element,
  /// so the bound holds for the sum over the subscriptions an index holds (what
  /// its heap grew by since construction), not for the one add that rehashes.
  static std::size_t cost_bytes(std::string_view pattern, std::string_view group,
                                std::size_t group_slots = index_limits{}.group_slots);

  /// Appends to `out` every plain subscription matching `subject`, and per
  /// matching queue group the one member that `key` maps to. subject must be a
  /// valid literal subject. Returns the number appended. Allocation-free once
  /// `out` and the cache's arena and side array have grown to their working size.
  std::size_t match(std::string_view subject, std::span<const std::byte> key,
                    std::vector<sub_ref>& out);
  /// Whether any subscription matches `subject` (what match() would append
  /// something for, whatever the key). Uses and fills the same cache.
  bool any_match(std::string_view subject);

  static constexpr std::size_t max_tokens = 128;
  /// Subjects whose matching nodes are cached.
  static constexpr std::size_t cache_capacity = 4096;
  /// Matching nodes a cache entry holds in place; longer lists go to a side
  /// array of spill_capacity nodes (emptied with the cache).
  static constexpr std::size_t cached_nodes = 4;
  static constexpr std::size_t spill_capacity = 16384;

  std::size_t size() const noexcept { return by_uid_.size(); }
  /// Trie nodes visited by the last match()/any_match() that missed the cache.
  std::size_t last_match_visits() const noexcept { return visits_; }
  /// Distinct shapes of the patterns with a wildcard present.
  std::size_t pattern_shapes() const noexcept { return shapes_.size(); }

  /// The thread that owns this index from now on: the calling one.
  void bind_owner() noexcept { owner_.bind_to_this_thread(); }
  bool is_owner() const noexcept { return owner_.is_owner(); }

 private:
  struct node;
  struct leaf;
  struct group;
  struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  using group_map = std::unordered_map<std::string, group, string_hash, std::equal_to<>>;
  using group_entry = std::pair<const std::string, group>;  // group_map's value_type

  /// Literal edges of the whole trie in one set: a child is found by (parent,
  /// token), so a node carries no map of its own.
  struct edge_key {
    const node* parent;
    std::string_view token;
  };
  struct edge_hash {
    using is_transparent = void;
    std::size_t operator()(const node* n) const noexcept;
    std::size_t operator()(const edge_key& k) const noexcept;
  };
  struct edge_eq {
    using is_transparent = void;
    bool operator()(const node* a, const node* b) const noexcept;
    bool operator()(const edge_key& a, const node* b) const noexcept;
    bool operator()(const node* a, const edge_key& b) const noexcept;
  };
  using edge_set = std::unordered_set<node*, edge_hash, edge_eq>;

  struct location {
    node* leaf_node = nullptr;
    group_entry* in_group = nullptr;  // nullptr: a plain subscription
    std::uint32_t pos = 0;            // plain: its index in the leaf's plain list
  };

  /// A cache entry: the nodes with subscriptions a subject matches, in match
  /// order: in place if count <= cached_nodes, else spilled_[offset, offset + count).
  struct matched_nodes {
    std::array<node*, cached_nodes> nodes{};
    std::uint32_t count = 0;
    std::uint32_t offset = 0;
  };

  static node* make_node(node* parent, std::string_view token);
  static void free_node(node* n) noexcept;
  /// The child of n for token t, or nullptr.
  node* child(const node& n, std::string_view t) const;
  /// Frees n and its ancestors while they hold nothing.
  void prune(node* n);
  /// Shape of a pattern: one char per token, `*`, `>` or `_` (literal); the
  /// length, or 0 if the pattern has no wildcard.
  static std::size_t shape_of(std::span<const std::string_view> tokens, std::span<char> out);
  static std::size_t shape_of(const node* leaf_node, std::span<char> out);
  void release_shape(const node* leaf_node);

  /// The nodes with subscriptions that `subject` matches: a cache entry, or
  /// found_ (valid until the next lookup).
  std::span<node* const> lookup(std::string_view subject);
  static void collect(node& n, std::span<const std::byte> key, std::vector<sub_ref>& out);
  void match_from(node& n, std::span<const std::string_view> tokens, std::size_t i);
  static std::size_t split(std::string_view subject, std::span<std::string_view> out);
  void clear_cache() noexcept;

  index_limits limits_;
  node* root_ = nullptr;
  edge_set edges_;
  std::unordered_map<std::uint32_t, location> by_uid_;
  std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>>
      shapes_;  // shape -> subscriptions
  subject_cache<matched_nodes> cache_{cache_capacity};
  std::vector<node*> spilled_;  // node lists of cache entries longer than cached_nodes
  core::owner_check owner_;
  std::vector<node*> found_;  // the last cache miss's matching nodes (reused)
  std::size_t visits_ = 0;
};

}  // namespace keyway::daemon
