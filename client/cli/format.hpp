// Pure helpers of the keyway CLI: `{i}` templating for pub --count, JSON and
// plain rendering of received messages for sub, a JSON object writer for the
// --json output of the other verbs, and the parsing of duration and count
// flags. Any thread; no I/O. Rendering appends to a caller's string, so a
// reused string makes the per-message path allocation-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/message.hpp>

namespace keyway::cli {

/// A key or payload in which every "{i}" stands for the message index. Split
/// once; rendering is concatenation.
class index_template {
 public:
  explicit index_template(std::string_view text);

  bool has_placeholder() const noexcept { return pieces_.size() > 1; }
  /// Replaces `out` with the text, each "{i}" replaced by `index` in decimal.
  void render(std::uint64_t index, std::string& out) const;
  std::string render(std::uint64_t index) const;

 private:
  std::vector<std::string> pieces_;  // the text between placeholders
};

/// Appends `bytes` as a JSON string literal, quotes included. `"` `\` and
/// control bytes are escaped (\n, \t, ... or \u00XX); every byte >= 0x7f is
/// written as \u00XX, so the output is plain ASCII and the original bytes are
/// the code points of the decoded string (each below 256).
void append_json_string(std::string& out, std::string_view bytes);
std::string json_string(std::string_view bytes);

/// One line of `keyway sub --json`, without the newline:
/// {"subject":"a.b","key":"k","payload":"...","core":0,"seq":17,"reply_to":""}
/// plus "headers":[["name","value"],...] when the message has headers.
void append_json_message(std::string& out, const client::message& m);

/// One line of `keyway sub`, without the newline: "[core/seq] subject key: payload"
/// ("[core/seq] subject: payload" without a key). The payload is written raw.
void append_plain_message(std::string& out, const client::message& m);

/// "500ms", "2s", "1.5s", "1m", "250us", or a bare number of milliseconds.
/// std::nullopt if it is none of these or not positive. The CLI's flags go
/// through parse_duration_flag, which refuses the bare number.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

/// The value of a duration flag (--timeout, ...): a positive number with a
/// unit, us, ms, s or m ("250us", "500ms", "1.5s", "1m"); a bare number is
/// refused, since "5" could mean either. On failure, `problem` is set to a
/// one-line message naming `flag`: "--timeout: '5' has no unit; use e.g. 5ms,
/// 5s, 1m".
std::optional<std::chrono::milliseconds> parse_duration_flag(std::string_view flag,
                                                             std::string_view text,
                                                             std::string& problem);

/// The value of a count flag (--count, --msgs, ...): a whole decimal number of
/// at least `min`. On failure, `problem` is a one-line message naming `flag`:
/// "--count must be at least 1", "--count: 'x' is not a whole number".
std::optional<std::uint64_t> parse_count_flag(std::string_view flag, std::string_view text,
                                              std::uint64_t min, std::string& problem);
/// "2s", "1500ms": the shortest exact form.
std::string format_duration(std::chrono::milliseconds d);

/// Builds one JSON object, field by field, on one line: {"a":1,"b":"x"}.
/// Strings go through append_json_string; doubles that are not finite are
/// written as null.
class json_object {
 public:
  json_object& str(std::string_view name, std::string_view value);
  json_object& num(std::string_view name, std::uint64_t value);
  json_object& num(std::string_view name, std::int64_t value);
  /// `decimals` digits after the point.
  json_object& real(std::string_view name, double value, int decimals = 3);
  json_object& boolean(std::string_view name, bool value);
  /// A value that is already JSON (an object, an array, null).
  json_object& raw(std::string_view name, std::string_view json);
  /// The object, closed.
  std::string done() const { return text_ + "}"; }

 private:
  void name(std::string_view n);
  std::string text_ = "{";
};

/// Appends the object of append_json_message, its closing brace left off, so
/// a caller can add fields before closing it.
void append_json_message_open(std::string& out, const client::message& m);

/// "NAME=VALUE" → {NAME, VALUE}; std::nullopt if there is no '=' or NAME is empty.
std::optional<std::pair<std::string, std::string>> parse_header(std::string_view text);

}  // namespace keyway::cli
