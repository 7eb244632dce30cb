// fuzz_config: keyway.toml text into config::parse (config/config.hpp), as
// keywayd reads its file; and the same text into parse_duration, the
// parser of every duration value and flag.
//
// Oracles besides the sanitizers (the contract in config/config.hpp):
//   - parse returns options or problems, never both, never neither, and
//     throws nothing (toml++'s parse errors become problems);
//   - every problem is one line that starts with the file name;
//   - options it accepts hold proto limits that validate_limits accepts;
//   - a duration parse_duration reads is read back the same from
//     format_duration's text.
// toml++ is Debian's shared library, not instrumented: coverage guides the
// fuzzer through config.cpp's checks, the toml parser is exercised blind.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "proto/limits.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz_config: %s%s%.*s\n", what, detail.empty() ? "" : ": ",
               static_cast<int>(detail.size()), detail.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyway;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const config::load_result r = config::parse(text, "keyway.toml");
  if (r.ok() == !r.problems.empty()) fail("options and problems both, or neither");
  for (const std::string& p : r.problems) {
    if (p.rfind("keyway.toml", 0) != 0) fail("a problem that does not start with the file name", p);
    if (p.find('\n') != std::string::npos) fail("a problem of more than one line", p);
  }
  if (r.ok()) {
    if (const proto::status st = proto::validate_limits(r.options->limits); !st.ok())
      fail("accepted limits that validate_limits refuses", st.message());
  }

  if (size <= 64) {
    const config::duration_result d = config::parse_duration(text);
    if (d.value.has_value() == !d.error.empty()) fail("a duration and an error both, or neither");
    if (d.value) {
      const std::string shown = config::format_duration(*d.value);
      const config::duration_result again = config::parse_duration(shown);
      if (!again.value || *again.value != *d.value)
        fail("format_duration's text does not read back", shown);
    }
    (void)config::toml_string(text);
  }
  return 0;
}
