// subject_index: one worker's replica of every subscription in the daemon, as a
// trie over subject tokens with NATS wildcards (`*` = one token, a final `>` =
// one or more tokens). Queue-group members hang off the leaf of their pattern,
// grouped by name, each group with its own partitioner over member ids.
//
// Threads: owned by one worker; every method runs on that worker's thread.
// Cost: match() walks one trie path per wildcard branch and allocates nothing;
// add/remove are control-plane operations (allocate, may rebuild a group's
// partitioner table).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/partitioner.hpp"

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

  static constexpr std::size_t max_tokens = 128;

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

  static void collect(node& n, std::span<const std::byte> key, std::vector<sub_ref>& out);
  static void match_from(node& n, std::span<const std::string_view> tokens, std::size_t i,
                         std::span<const std::byte> key, std::vector<sub_ref>& out);
  static std::size_t split(std::string_view subject, std::span<std::string_view> out);
  /// Removes `uid` below n along tokens[i..]; returns true if n became empty.
  static bool erase(node& n, std::span<const std::string_view> tokens, std::size_t i,
                    std::string_view group, std::uint32_t uid);

  std::size_t group_slots_;
  node root_;
  std::unordered_map<std::uint32_t, location> by_uid_;
};

}  // namespace keyway::daemon
