// latency_histogram::bucket_of against the definition: the first upper bound
// >= ns, or +Inf past the last; the probe's verbs against its metric table,
// and the table against docs/metrics.md.
#include "daemon/probe.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tests/unit/test_seed.hpp"

using keyway::daemon::latency_histogram;

namespace {
std::size_t by_definition(std::uint64_t ns) {
  for (std::size_t i = 0; i < latency_histogram::buckets; ++i)
    if (static_cast<double>(ns) <= latency_histogram::bound_ns(i)) return i;
  return latency_histogram::buckets;
}
}  // namespace

TEST_CASE("latency_histogram::bucket_of finds the first bound at or above the value") {
  std::vector<std::uint64_t> values{0,    1,    999,  1000,
                                    1001, 1414, 1415, std::numeric_limits<std::uint64_t>::max()};
  for (std::size_t i = 0; i < latency_histogram::buckets; ++i) {
    const auto b = static_cast<std::uint64_t>(latency_histogram::bound_ns(i));
    values.insert(values.end(), {b - 1, b, b + 1});
  }
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t p = std::uint64_t{1} << k;
    values.insert(values.end(), {p - 1, p, p + 1});
  }
  const auto seed = keyway::test::seed();
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 100'000; ++i) values.push_back(rng() >> (rng() % 64));
  for (std::uint64_t v : values) {
    INFO("ns = ", v, ", seed ", seed);
    REQUIRE(latency_histogram::bucket_of(v) == by_definition(v));
  }
  CHECK(latency_histogram::bucket_of(0) == 0);
  CHECK(latency_histogram::bucket_of(std::numeric_limits<std::uint64_t>::max()) ==
        latency_histogram::buckets);
}

namespace {
using keyway::daemon::probe;
using keyway::daemon::probe_metric;

const probe_metric& metric(std::string_view name) {
  for (const probe_metric& m : probe::metrics())
    if (m.name == name) return m;
  FAIL("no probe metric " << name);
  throw std::logic_error("unreachable");
}
}  // namespace

TEST_CASE("probe: each verb counts into the metric the table names for it") {
  probe p;
  p.published(3);
  p.unmatched(2);
  p.routed();
  p.delivered(1500);
  p.delivered(2500);
  p.error_sent(keyway::proto::errc::invalid_subject);
  p.dropped(keyway::daemon::drop_reason::slow_consumer);
  p.connection_opened(true);
  p.connection_opened(false);
  p.connection_opened(false);
  p.connection_closed(false);
  p.subscriptions_added(5);
  p.subscriptions_removed(2);
  p.congestion_began();
  p.congestion_began();
  p.congestion_ended();
  p.read_paused();

  CHECK(metric("keyway_messages_received_total").read(p, 0) == 3);
  CHECK(metric("keyway_messages_unmatched_total").read(p, 0) == 2);
  CHECK(metric("keyway_messages_routed_total").read(p, 0) == 1);
  CHECK(metric("keyway_messages_delivered_total").read(p, 0) == 2);
  CHECK(p.latency().sum_ns() == 4000);
  CHECK(metric("keyway_subscriptions").read(p, 0) == 3);
  CHECK(p.live_subscriptions() == 3);
  CHECK(metric("keyway_congested_connections").read(p, 0) == 1);
  CHECK(metric("keyway_paused_reads_total").read(p, 0) == 1);
  CHECK(p.paused_reads() == 1);
  CHECK(p.open_connections() == 2);

  // Labelled families: the read index is the position in label_values.
  auto by_label = [&](std::string_view name, std::string_view value) {
    const probe_metric& m = metric(name);
    for (std::size_t k = 0; k < m.label_values.size(); ++k)
      if (m.label_values[k] == value) return m.read(p, k);
    FAIL("no label value " << value << " in " << name);
    return std::uint64_t{0};
  };
  CHECK(by_label("keyway_errors_total", "invalid_subject") == 1);
  CHECK(by_label("keyway_errors_total", "protocol") == 0);
  CHECK(by_label("keyway_dropped_messages_total", "slow_consumer") == 1);
  CHECK(by_label("keyway_dropped_messages_total", "encode_failed") == 0);
  CHECK(by_label("keyway_connections", "unix") == 1);
  CHECK(by_label("keyway_connections", "tcp") == 1);
  CHECK(by_label("keyway_connections_accepted_total", "tcp") == 2);
}

TEST_CASE("probe: the metric table has unique keyway_ names, every error code, and docs") {
  std::ifstream in(std::string(KEYWAY_SOURCE_DIR) + "/docs/metrics.md");
  REQUIRE(in.good());
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::set<std::string_view> seen;
  for (const probe_metric& m : probe::metrics()) {
    INFO(m.name);
    CHECK(m.name.starts_with("keyway_"));
    CHECK(seen.insert(m.name).second);
    CHECK(!m.help.empty());
    CHECK(m.label.empty() == m.label_values.empty());
    std::string quoted(1, '`');
    quoted.append(m.name).push_back('`');
    CHECK(doc.find(quoted) != std::string::npos);
  }
  // Every code but 0 (none), which is never sent.
  CHECK(metric("keyway_errors_total").label_values.size() ==
        static_cast<std::size_t>(keyway::proto::errc::count_) - 1);
}
