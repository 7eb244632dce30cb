// http_request: the admin listener's HTTP/1.1 request-head parser, a pure
// function of the bytes received so far, so that it can be fuzzed
// (tests/fuzz/fuzz_http.cpp) and tested without a socket.
//
//   parse_request("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
//     -> complete, method "GET", target "/readyz", head_bytes 35
//   parse_request("GET /readyz HT")          -> incomplete (wait for more)
//   parse_request("GET /readyz\r\n")         -> bad, status 400
//   parse_request(16 KiB without a blank line) -> bad, status 431
//
// What it accepts: a request line `METHOD SP TARGET SP HTTP/D.D CRLF`
// (method: 1 to 32 token characters; target: 1 or more visible ASCII
// characters), header lines `NAME: VALUE CRLF` (name: token characters;
// value: no CR, LF or NUL), then an empty line; everything through that
// empty line within max_request_bytes. A request line is judged as soon as
// the bytes of it that arrived are wrong, so garbage is refused without
// waiting for a line end. A body, and anything after the head, is ignored:
// the admin endpoints take none and every answer closes the connection.
//
// Threads: pure functions, any thread. Cost: one pass over `bytes`, no
// allocation; the views returned point into `bytes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace keyway::daemon {

struct http_request {
  enum class parse_state : std::uint8_t { incomplete, complete, bad };

  parse_state state = parse_state::incomplete;
  /// Set when complete: views into the bytes parsed.
  std::string_view method{};
  std::string_view target{};
  /// Bytes of the request head, blank line included, when complete.
  std::size_t head_bytes = 0;
  /// When bad: the status to answer (400, 431) and the body (one line, "\n" ended).
  int status = 0;
  std::string_view error{};
};

/// The largest request head accepted; a head not over by then gets 431.
inline constexpr std::size_t max_request_bytes = 16 * 1024;

namespace http_detail {

/// RFC 9110 tchar: the characters of a method or a header name.
constexpr bool is_tchar(char c) noexcept {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}
constexpr bool is_visible(char c) noexcept {
  return c > 0x20 && c < 0x7f;
}
constexpr bool is_digit(char c) noexcept {
  return c >= '0' && c <= '9';
}

inline constexpr std::size_t max_method = 32;
inline constexpr std::string_view bad_line = "malformed request line\n";
inline constexpr std::string_view bad_header = "malformed header line\n";
inline constexpr std::string_view too_large = "request headers over 16 KiB\n";

/// Whether `line` (a request line without its CRLF, or the part of one that
/// arrived when `whole` is false) is or can still become valid; fills
/// method and target when `whole`.
constexpr bool check_request_line(std::string_view line, bool whole, http_request& r) noexcept {
  std::size_t i = 0;
  while (i < line.size() && is_tchar(line[i])) ++i;
  if (i > max_method) return false;
  if (i == line.size()) return !whole;
  if (line[i] != ' ' || i == 0) return false;
  const std::size_t t = ++i;
  while (i < line.size() && is_visible(line[i])) ++i;
  if (i == line.size()) return !whole;
  if (line[i] != ' ' || i == t) return false;
  const std::string_view target = line.substr(t, i - t);
  const std::string_view version = line.substr(i + 1);
  constexpr std::string_view shape = "HTTP/0.0";  // 0: any digit
  if (version.size() > shape.size()) return false;
  for (std::size_t k = 0; k < version.size(); ++k)
    if (shape[k] == '0' ? !is_digit(version[k]) : version[k] != shape[k]) return false;
  if (!whole) return true;
  if (version.size() != shape.size()) return false;
  r.method = line.substr(0, t - 1);
  r.target = target;
  return true;
}

/// A header line without its CRLF: NAME ":" VALUE.
constexpr bool check_header_line(std::string_view line) noexcept {
  std::size_t i = 0;
  while (i < line.size() && is_tchar(line[i])) ++i;
  if (i == 0 || i == line.size() || line[i] != ':') return false;
  for (++i; i < line.size(); ++i)
    if (line[i] == '\r' || line[i] == '\n' || line[i] == '\0') return false;
  return true;
}

constexpr http_request bad(int status, std::string_view error) noexcept {
  http_request r;
  r.state = http_request::parse_state::bad;
  r.status = status;
  r.error = error;
  return r;
}

}  // namespace http_detail

/// Parses the head of one request from everything received so far (`bytes`
/// may hold more after the head; it is not looked at).
constexpr http_request parse_request(std::string_view bytes) noexcept {
  using namespace http_detail;
  http_request r;
  const std::size_t line_end = bytes.find("\r\n");
  const bool whole = line_end != std::string_view::npos;
  std::string_view line = bytes.substr(0, line_end);  // all of it while the line is partial
  if (!whole && !line.empty() && line.back() == '\r') line.remove_suffix(1);  // half a CRLF
  if (!check_request_line(line, whole, r)) return bad(400, bad_line);
  if (!whole) {
    if (bytes.size() >= max_request_bytes) return bad(431, too_large);
    return r;
  }
  // Header lines, each judged once whole; the head ends at an empty line.
  std::size_t at = line_end + 2;
  for (;;) {
    if (at + 2 > max_request_bytes) return bad(431, too_large);
    const std::size_t end = bytes.find("\r\n", at);
    if (end == std::string_view::npos) {
      if (bytes.size() >= max_request_bytes) return bad(431, too_large);
      // A bare LF or NUL in a header line that has not ended yet is wrong already.
      if (bytes.find_first_of(std::string_view("\n\0", 2), at) != std::string_view::npos)
        return bad(400, bad_header);
      r.method = r.target = {};
      return r;
    }
    if (end == at) {
      r.state = http_request::parse_state::complete;
      r.head_bytes = end + 2;
      return r;
    }
    if (!check_header_line(bytes.substr(at, end - at))) return bad(400, bad_header);
    at = end + 2;
  }
}

}  // namespace keyway::daemon
