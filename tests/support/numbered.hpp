// numbered("k", 17) == "k17": test keys and subjects. Appends, because
// "k" + std::to_string(n) draws a -Wrestrict false positive from g++ 12 at -O3.
// Any thread; header only.
#pragma once

#include <string>
#include <string_view>

namespace keyway::test {

inline std::string numbered(std::string_view prefix, long long n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

}  // namespace keyway::test
