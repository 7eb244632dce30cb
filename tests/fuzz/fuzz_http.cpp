// fuzz_http: the admin listener's request parser (daemon/http_request.hpp)
// on arbitrary bytes, and on prefixes of them, as a connection sees a
// request arrive piece by piece.
//
// Oracles besides the sanitizers:
//   - complete: the head ends with an empty line within max_request_bytes,
//     method and target are non-empty views into it, the method only token
//     characters, the target only visible ASCII;
//   - bad: 400 or 431 with a one-line body;
//   - the verdict never goes back: a prefix judged bad stays bad with more
//     bytes, a complete prefix stays complete with the same head, and every
//     proper prefix of a complete head is incomplete (a valid request is
//     never refused early).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "daemon/http_request.hpp"

namespace {

using keyway::daemon::http_request;
using keyway::daemon::max_request_bytes;
using keyway::daemon::parse_request;
using state = http_request::parse_state;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_http: %s\n", what);
  std::abort();
}

bool within(std::string_view part, std::string_view whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

void check_one(std::string_view bytes, const http_request& r) {
  switch (r.state) {
    case state::complete: {
      if (r.head_bytes < 4 || r.head_bytes > bytes.size() || r.head_bytes > max_request_bytes)
        fail("a complete head of an impossible size");
      const std::string_view head = bytes.substr(0, r.head_bytes);
      if (head.substr(head.size() - 4) != "\r\n\r\n")
        fail("a complete head without its empty line");
      if (r.method.empty() || r.target.empty() || !within(r.method, head) ||
          !within(r.target, head))
        fail("method or target empty or outside the head");
      for (const char c : r.method)
        if (!keyway::daemon::http_detail::is_tchar(c)) fail("a method with a non-token character");
      for (const char c : r.target)
        if (!keyway::daemon::http_detail::is_visible(c))
          fail("a target with an invisible character");
      if (r.status != 0 || !r.error.empty()) fail("a complete request with an error");
      break;
    }
    case state::bad:
      if (r.status != 400 && r.status != 431) fail("a refusal with a status other than 400 or 431");
      if (r.error.empty() || r.error.back() != '\n' || r.error.find('\n') != r.error.size() - 1)
        fail("a refusal without a one-line body");
      break;
    case state::incomplete:
      if (bytes.size() >= max_request_bytes) fail("incomplete at max_request_bytes");
      if (r.status != 0 || !r.error.empty() || !r.method.empty())
        fail("an incomplete request with results");
      break;
  }
}

void check_prefix(std::string_view bytes, const http_request& whole, std::size_t cut) {
  const std::string_view prefix = bytes.substr(0, cut);
  const http_request p = parse_request(prefix);
  check_one(prefix, p);
  if (p.state == state::bad && whole.state != state::bad) fail("a prefix refused, the whole not");
  if (p.state == state::complete &&
      (whole.state != state::complete || whole.head_bytes != p.head_bytes ||
       whole.method != p.method || whole.target != p.target))
    fail("a complete prefix, the whole read otherwise");
  if (whole.state == state::complete && cut < whole.head_bytes && p.state != state::incomplete)
    fail("a proper prefix of a complete head not incomplete");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const http_request whole = parse_request(bytes);
  check_one(bytes, whole);
  if (size <= 512) {
    for (std::size_t cut = 0; cut < size; ++cut) check_prefix(bytes, whole, cut);
  } else {
    for (const std::size_t cut : {std::size_t{0}, size / 3, size / 2, size - 1})
      check_prefix(bytes, whole, cut);
    if (whole.state == state::complete) check_prefix(bytes, whole, whole.head_bytes - 1);
  }
  return 0;
}
