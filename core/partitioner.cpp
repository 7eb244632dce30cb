#include "core/partitioner.hpp"

#include <bit>
#include <cmath>
#include <cstdio>

#include "core/consistent_partitioner.hpp"
#include "core/hash_partitioner.hpp"
#include "core/range_partitioner.hpp"
#include "core/ring_partitioner.hpp"
#include "core/round_robin_partitioner.hpp"

namespace keyway::core {
namespace {

constexpr std::size_t max_slots = std::size_t{1} << 24;
constexpr std::size_t max_vnodes = 65536;

// Split points are bytes; show them printable, with \xNN for the rest.
std::string quoted(const std::string& bytes) {
  std::string out = "\"";
  for (const char c : bytes) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '"' && c != '\\') {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    }
  }
  return out + "\"";
}

}  // namespace

partitioner::~partitioner() = default;

result<partition_strategy> parse_partition_strategy(std::string_view name) {
  if (name == "consistent") return partition_strategy::consistent;
  if (name == "hash") return partition_strategy::hash;
  if (name == "range") return partition_strategy::range;
  if (name == "round_robin") return partition_strategy::round_robin;
  return unexpected(errc::invalid_argument);
}

std::string_view to_string(partition_strategy s) noexcept {
  switch (s) {
    case partition_strategy::consistent:
      return "consistent";
    case partition_strategy::hash:
      return "hash";
    case partition_strategy::range:
      return "range";
    case partition_strategy::round_robin:
      return "round_robin";
  }
  return "unknown";
}

bool valid_weight(double weight) noexcept {
  return std::isfinite(weight) && weight > 0;
}

std::string partitioner_options_error(partition_strategy s, const partitioner_options& opt) {
  switch (s) {
    case partition_strategy::consistent:
      if (opt.layout == consistent_layout::slot_table &&
          (opt.slots < 2 || opt.slots > max_slots || !std::has_single_bit(opt.slots))) {
        return "partitioner slots = " + std::to_string(opt.slots) +
               " is not a power of two in [2, " + std::to_string(max_slots) +
               "]; use one such as 65536, larger for more members (peak-to-mean is about "
               "1 + sqrt(2 ln(members) * members / slots))";
      }
      if (opt.layout == consistent_layout::vnode_ring &&
          (opt.vnodes < 1 || opt.vnodes > max_vnodes)) {
        return "partitioner vnodes = " + std::to_string(opt.vnodes) + " is outside [1, " +
               std::to_string(max_vnodes) + "]; use e.g. 160";
      }
      return {};
    case partition_strategy::range:
      for (std::size_t i = 1; i < opt.split_points.size(); ++i) {
        const auto& a = opt.split_points[i - 1];
        const auto& b = opt.split_points[i];
        if (compare_key_bytes(std::as_bytes(std::span(a)), std::as_bytes(std::span(b))) >= 0) {
          return "range split point " + std::to_string(i) + " (" + quoted(b) +
                 ") is not greater than split point " + std::to_string(i - 1) + " (" + quoted(a) +
                 "); list split points in strictly increasing byte order";
        }
      }
      return {};
    case partition_strategy::hash:
    case partition_strategy::round_robin:
      return {};
  }
  return "unknown partition strategy";
}

result<std::unique_ptr<partitioner>> make_partitioner(partition_strategy s,
                                                      const partitioner_options& opt) {
  if (!partitioner_options_error(s, opt).empty()) return unexpected(errc::invalid_argument);
  std::unique_ptr<partitioner> p;
  switch (s) {
    case partition_strategy::consistent:
      if (opt.layout == consistent_layout::vnode_ring) {
        p = std::make_unique<ring_partitioner>(opt.vnodes, opt.seed);
      } else {
        p = std::make_unique<consistent_partitioner>(opt.slots, opt.seed);
      }
      break;
    case partition_strategy::hash:
      p = std::make_unique<hash_partitioner>(opt.seed);
      break;
    case partition_strategy::range:
      p = std::make_unique<range_partitioner>(opt.split_points);
      break;
    case partition_strategy::round_robin:
      p = std::make_unique<round_robin_partitioner>();
      break;
  }
  return p;
}

}  // namespace keyway::core
