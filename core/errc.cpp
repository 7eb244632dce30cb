#include "core/errc.hpp"

#include <string>

namespace keyway::core {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "keyway.core"; }
  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::ok:
        return "ok";
      case errc::full:
        return "queue is full";
      case errc::empty:
        return "queue is empty";
      case errc::no_credit:
        return "destination worker has no credit left";
      case errc::no_members:
        return "partitioner has no members";
      case errc::duplicate_member:
        return "member already present";
      case errc::unknown_member:
        return "no such member";
      case errc::invalid_weight:
        return "weight must be finite and greater than zero";
      case errc::not_supported:
        return "operation not supported by this strategy";
      case errc::invalid_argument:
        return "invalid argument";
      case errc::affinity_failed:
        return "could not pin thread to its CPU";
      case errc::bad_cpu:
        return "CPU is not in the process's affinity mask";
    }
    return "unknown keyway.core error " + std::to_string(code);
  }
};

}  // namespace

const std::error_category& core_category() noexcept {
  static const category instance;
  return instance;
}

}  // namespace keyway::core
