// Pure helpers of the keyway CLI: `{i}` templating for pub --count, JSON and
// plain rendering of received messages for sub, and duration parsing for
// --timeout. Any thread; no I/O. Rendering appends to a caller's string, so a
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
/// std::nullopt if it is none of these or not positive.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
/// "2s", "1500ms": the shortest exact form.
std::string format_duration(std::chrono::milliseconds d);

/// "NAME=VALUE" → {NAME, VALUE}; std::nullopt if there is no '=' or NAME is empty.
std::optional<std::pair<std::string, std::string>> parse_header(std::string_view text);

}  // namespace keyway::cli
