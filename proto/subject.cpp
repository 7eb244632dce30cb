#include "proto/subject.hpp"

#include <array>
#include <string>

namespace keyway::proto {
namespace {

constexpr bool forbidden_byte(unsigned char c) noexcept {
  return c <= 0x20 || c == 0x7f;
}

// Byte classes for the subject scan: most bytes are plain and cost one load.
enum byte_class : unsigned char { plain, forbidden, dot, wild };
constexpr auto byte_classes = [] {
  std::array<unsigned char, 256> t{};
  for (unsigned c = 0; c < 256; ++c)
    t[c] = forbidden_byte(static_cast<unsigned char>(c)) ? forbidden : plain;
  t['.'] = dot;
  t['*'] = wild;
  t['>'] = wild;
  return t;
}();

std::string at_byte(std::size_t i) {
  return "at byte " + std::to_string(i);
}

std::string hex_byte(unsigned char c) {
  static constexpr char digits[] = "0123456789abcdef";
  return {'(', '0', 'x', digits[c >> 4], digits[c & 0xf], ')'};
}

// Checks shared by subjects and patterns: emptiness, length, bad bytes, empty
// tokens. Returns ok when the remaining (wildcard) rules should run.
// One pass over the bytes; `wildcard` gets the position of the first '*' or
// '>' (npos if none) for the caller's own rules.
status check_common(std::string_view s, const limits& lim, std::string_view field,
                    std::size_t& wildcard) {
  auto f = [field] { return std::string(field); };  // built only for an error
  wildcard = std::string_view::npos;
  if (s.empty()) {
    return {errc::invalid_subject,
            f() + " is empty; a subject is one or more dot-separated tokens, like 'orders.eu'"};
  }
  if (s.size() > lim.max_subject) {
    return {errc::invalid_subject, f() + " of " + format_size(s.size()) +
                                       " exceeds limits.max_subject (" +
                                       format_size(lim.max_subject) + "); use a shorter subject"};
  }
  std::size_t token_start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    switch (byte_classes[c]) {
      case plain:
        continue;
      case forbidden:
        return {errc::invalid_subject,
                f() + " " + quote(s) + " has a space or control character " + hex_byte(c) + " " +
                    at_byte(i) + "; subjects may not contain whitespace or control characters"};
      case dot:
        if (i == token_start) {
          return {errc::invalid_subject, f() + " " + quote(s) + " has an empty token " +
                                             at_byte(i) +
                                             "; tokens between dots must be non-empty"};
        }
        token_start = i + 1;
        continue;
      case wild:
        if (wildcard == std::string_view::npos) wildcard = i;
        continue;
    }
  }
  if (token_start == s.size()) {
    return {errc::invalid_subject,
            f() + " " + quote(s) + " ends with '.'; tokens between dots must be non-empty"};
  }
  return {};
}

}  // namespace

bool is_valid_publish_subject(std::string_view s, const limits& lim) noexcept {
  if (s.empty() || s.size() > lim.max_subject) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  // Token by token: a run of plain bytes, then a dot or the end.
  for (;;) {
    const auto* const token = p;
    while (p != end && byte_classes[*p] == plain) ++p;
    if (p == token) return false;  // empty token (also: a leading, doubled or final dot)
    if (p == end) return true;
    if (byte_classes[*p] != dot) return false;  // forbidden byte or wildcard
    ++p;
  }
}

status validate_publish_subject(std::string_view subject, const limits& lim,
                                std::string_view field) {
  if (is_valid_publish_subject(subject, lim)) return {};
  std::size_t pos;
  if (auto st = check_common(subject, lim, field, pos); !st.ok()) return st;
  if (pos != std::string_view::npos) {
    return {errc::invalid_subject,
            std::string(field) + " " + quote(subject) + " contains the wildcard '" + subject[pos] +
                "' " + at_byte(pos) +
                "; publish subjects must be literal (wildcards are for subscriptions)"};
  }
  return {};
}

bool is_literal_subject(std::string_view subject) noexcept {
  return subject.find_first_of("*>") == std::string_view::npos;
}

status validate_pattern(std::string_view pattern, const limits& lim, std::string_view field) {
  std::size_t wildcard;  // the token rules below place wildcards
  if (auto st = check_common(pattern, lim, field, wildcard); !st.ok()) return st;
  std::size_t token = 0;
  std::size_t start = 0;
  while (start <= pattern.size()) {
    std::size_t end = pattern.find('.', start);
    if (end == std::string_view::npos) end = pattern.size();
    const std::string_view tok = pattern.substr(start, end - start);
    ++token;
    const bool last = end == pattern.size();
    if (tok.size() > 1 && tok.find_first_of("*>") != std::string_view::npos) {
      return {errc::invalid_subject,
              std::string(field) + " " + quote(pattern) + " has a wildcard inside token " +
                  std::to_string(token) + " (" + quote(tok) +
                  "); '*' and '>' must be whole tokens, like 'a.*.c' or 'a.>'"};
    }
    if (tok == ">" && !last) {
      return {errc::invalid_subject, std::string(field) + " " + quote(pattern) +
                                         " has '>' in token " + std::to_string(token) +
                                         " but more tokens follow; '>' must be the last token"};
    }
    start = end + 1;
  }
  return {};
}

status validate_queue_group(std::string_view group, const limits& lim, std::string_view field) {
  if (group.empty()) return {};
  auto f = [field] { return std::string(field); };  // built only for an error
  if (group.size() > lim.max_subject) {
    return {errc::invalid_subject,
            f() + " of " + format_size(group.size()) + " exceeds limits.max_subject (" +
                format_size(lim.max_subject) + "); use a shorter queue group name"};
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto c = static_cast<unsigned char>(group[i]);
    if (forbidden_byte(c) || c == '*' || c == '>') {
      return {errc::invalid_subject,
              f() + " " + quote(group) + " has a forbidden character " + hex_byte(c) + " " +
                  at_byte(i) +
                  "; queue group names may not contain whitespace, control characters, "
                  "'*' or '>'"};
    }
  }
  return {};
}

}  // namespace keyway::proto
