// Key-affine queue groups through the real keywayd: every message reaches
// exactly one member, a key always reaches the same member, and when a member
// leaves only its keys move (DESIGN.md "Queue groups").
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"

namespace keyway::itest {
namespace {

constexpr int keys = 300;
constexpr int per_key = 2;

std::string key_name(int k) {
  return "key-" + std::to_string(k);
}

/// Publishes `per_key` messages for every key; payload "TAG:K:I".
void publish_round(raw_client& pub, const std::string& tag,
                   const std::string& subject = "qg.work") {
  for (int i = 0; i < per_key; ++i)
    for (int k = 0; k < keys; ++k) {
      const std::string key = key_name(k);
      const std::string payload = tag + ":" + std::to_string(k) + ":" + std::to_string(i);
      proto::publish_fields f;
      f.subject = subject;
      f.key = as_bytes(key);
      f.payload = as_bytes(payload);
      pub.queue_publish(f);
    }
  pub.flush();
}

/// What one round delivered, member by member.
struct round_result {
  std::map<std::string, std::set<int>> members_of_key;  // key -> member indexes
  std::map<std::string, int> count;                     // payload -> deliveries
  std::size_t order_breaks = 0;                         // per member per key, i must rise
  std::size_t deliveries = 0;
  std::vector<std::size_t> per_member;
};

/// Every member also holds a plain (not grouped) subscription to this
/// subject, so a sentinel published to it reaches each of them.
constexpr std::string_view fence_subject = "qgfence.x";

/// What every member got of `subject`, strays (duplicates) included: `pub`
/// publishes a sentinel to fence_subject on each of `fence_keys` (the keys it
/// used), which each member gets after any delivery of `pub`'s earlier
/// publishes on those keys; then each member is read up to its sentinels.
round_result collect_round(std::vector<raw_client*> members, raw_client& pub,
                           const std::vector<std::string>& fence_keys, const std::string& subject,
                           ms limit = 30s) {
  round_result r;
  r.per_member.resize(members.size());
  std::vector<std::map<std::string, int>> next_i(members.size());
  auto take = [&](std::size_t idx, const message_frame& m) {
    if (m.subject != subject) return;
    ++r.deliveries;
    ++r.per_member[idx];
    r.members_of_key[m.key].insert(static_cast<int>(idx));
    ++r.count[m.payload];
    const int i = std::stoi(m.payload.substr(m.payload.rfind(':') + 1));
    int& want = next_i[idx][m.key];
    if (i < want) ++r.order_breaks;
    want = i + 1;
  };
  sentinels fence;
  fence.publish(pub, fence_subject, fence_keys);
  for (std::size_t idx = 0; idx < members.size(); ++idx)
    for (const auto& m : fence.await(*members[idx], limit)) take(idx, m);
  return r;
}

std::vector<std::string> all_keys() {
  std::vector<std::string> v;
  for (int k = 0; k < keys; ++k) v.push_back(key_name(k));
  return v;
}

void check_exactly_once(const round_result& r, const std::string& tag) {
  CHECK(r.deliveries == std::size_t{keys} * per_key);
  std::size_t wrong = 0;
  for (int k = 0; k < keys; ++k)
    for (int i = 0; i < per_key; ++i) {
      auto it = r.count.find(tag + ":" + std::to_string(k) + ":" + std::to_string(i));
      wrong += it == r.count.end() || it->second != 1;
    }
  CHECK_MESSAGE(wrong == 0, "messages not delivered exactly once in round " << tag);
  std::size_t split_keys = 0;
  for (const auto& [key, members] : r.members_of_key) split_keys += members.size() != 1;
  CHECK_MESSAGE(split_keys == 0, "keys delivered to more than one member in round " << tag);
  CHECK(r.members_of_key.size() == std::size_t{keys});
  CHECK(r.order_breaks == 0);
}

/// Three members, one round; then member 2 leaves through `leave`; a second
/// round must keep members 0 and 1's keys where they were.
template <class Leave>
void run_departure(Leave&& leave) {
  keywayd_process d({"--workers", "2"});
  std::vector<raw_client> members;
  for (int m = 0; m < 3; ++m) {
    members.push_back(open_client(d.url(), "member-" + std::to_string(m)));
    members.back().subscribe(10 + static_cast<std::uint32_t>(m), "qg.>", "g");
    members.back().subscribe(20 + static_cast<std::uint32_t>(m), fence_subject);
  }
  raw_client pub = open_client(d.url(), "publisher");
  // Every publish to the group reaches exactly one member.
  CHECK(pub.publish_acked("qg.probe", "ack-key", "probe:0:0").delivered == 1);
  std::vector<raw_client*> all{&members[0], &members[1], &members[2]};
  (void)collect_round(all, pub, {"ack-key"}, "qg.probe");

  publish_round(pub, "r1");
  const round_result r1 = collect_round(all, pub, all_keys(), "qg.work");
  check_exactly_once(r1, "r1");
  for (std::size_t m = 0; m < 3; ++m)
    CHECK_MESSAGE(r1.per_member[m] > 0, "member " << m << " got no keys");
  MESSAGE("round 1 deliveries per member: " << r1.per_member[0] << " " << r1.per_member[1] << " "
                                            << r1.per_member[2]);

  std::set<std::string> departed_keys;
  for (const auto& [key, owners] : r1.members_of_key)
    if (owners.count(2)) departed_keys.insert(key);
  REQUIRE_FALSE(departed_keys.empty());

  leave(members[2], pub, departed_keys, std::vector<raw_client*>{&members[0], &members[1]});

  publish_round(pub, "r2");
  const round_result r2 = collect_round({&members[0], &members[1]}, pub, all_keys(), "qg.work");
  check_exactly_once(r2, "r2");
  std::size_t stayed = 0, moved_wrongly = 0, departed_moved = 0;
  std::set<int> departed_went_to;
  for (const auto& [key, before] : r1.members_of_key) {
    auto it = r2.members_of_key.find(key);
    if (it == r2.members_of_key.end() || it->second.size() != 1)
      continue;  // counted by check_exactly_once
    const int now = *it->second.begin();
    const int was = *before.begin();
    if (was == 2) {
      ++departed_moved;
      departed_went_to.insert(now);
    } else if (now == was) {
      ++stayed;
    } else {
      ++moved_wrongly;
    }
  }
  // Keys of the remaining members stay put; only the departed member's keys move.
  CHECK(moved_wrongly == 0);
  CHECK(stayed + departed_moved == std::size_t{keys});
  CHECK(departed_moved == departed_keys.size());
  // Consistent hashing spreads the departed member's keys over both others.
  CHECK(departed_went_to == std::set<int>{0, 1});
  MESSAGE("keys that stayed: " << stayed
                               << ", keys of the departed member that moved: " << departed_moved);
  // A member that unsubscribed (and is still connected) got nothing since:
  // nothing of the group's subject before sentinels on every key (it still
  // holds its plain fence subscription; sentinels of round 2 are ignored).
  if (members[2].is_open()) {
    sentinels fence;
    fence.publish(pub, fence_subject, all_keys());
    std::size_t strays = 0;
    for (const auto& m : fence.await(members[2])) strays += m.subject != fence_subject;
    CHECK(strays == 0);
  }
}

}  // namespace

TEST_CASE(
    "queue group: one member per message and key and only the keys of a member that unsubscribes "
    "move") {
  run_departure([](raw_client& leaver, raw_client&, const std::set<std::string>&,
                   const std::vector<raw_client*>&) {
    leaver.unsubscribe(12);  // acknowledged: every worker dropped it from the group
  });
}

TEST_CASE("queue group: only the keys of a member that disconnects move") {
  run_departure([](raw_client& leaver, raw_client& pub, const std::set<std::string>& departed,
                   const std::vector<raw_client*>& remaining) {
    leaver.close();
    // A disconnect has no ack. Probe the departed member's keys until one
    // whole probe round reaches the remaining members: then every owner core
    // of those keys has dropped the member.
    const auto deadline = steady::now() + 15s;
    bool settled = false;
    for (int attempt = 0; !settled && steady::now() < deadline; ++attempt) {
      const std::string subject = "qg.probe" + std::to_string(attempt);
      for (const auto& key : departed) pub.publish(subject, key, "probe:0:0");
      const round_result r = collect_round(
          remaining, pub, std::vector<std::string>(departed.begin(), departed.end()), subject);
      settled = r.deliveries == departed.size();
      if (!settled) std::this_thread::sleep_for(20ms);  // a poll's pace: the drop is asynchronous
    }
    REQUIRE_MESSAGE(settled, "the daemon never dropped the disconnected member from the group");
  });
}

}  // namespace keyway::itest
