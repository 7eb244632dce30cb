#include "client/cli/format.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace keyway::cli {

index_template::index_template(std::string_view text) {
  constexpr std::string_view placeholder = "{i}";
  for (;;) {
    const auto pos = text.find(placeholder);
    if (pos == std::string_view::npos) break;
    pieces_.emplace_back(text.substr(0, pos));
    text.remove_prefix(pos + placeholder.size());
  }
  pieces_.emplace_back(text);
}

void index_template::render(std::uint64_t index, std::string& out) const {
  out.assign(pieces_.front());
  if (pieces_.size() == 1) return;
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, index);
  const std::string_view number(digits, static_cast<std::size_t>(end - digits));
  for (std::size_t i = 1; i < pieces_.size(); ++i) {
    out.append(number);
    out.append(pieces_[i]);
  }
}

std::string index_template::render(std::uint64_t index) const {
  std::string out;
  render(index, out);
  return out;
}

void append_json_string(std::string& out, std::string_view bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out.append("\\\"");
        continue;
      case '\\':
        out.append("\\\\");
        continue;
      case '\b':
        out.append("\\b");
        continue;
      case '\f':
        out.append("\\f");
        continue;
      case '\n':
        out.append("\\n");
        continue;
      case '\r':
        out.append("\\r");
        continue;
      case '\t':
        out.append("\\t");
        continue;
      default:
        break;
    }
    if (c < 0x20 || c >= 0x7f) {
      const char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
      out.append(esc, sizeof esc);
    } else {
      out.push_back(ch);
    }
  }
  out.push_back('"');
}

std::string json_string(std::string_view bytes) {
  std::string out;
  append_json_string(out, bytes);
  return out;
}

namespace {
void append_number(std::string& out, std::uint64_t v) {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, v);
  out.append(digits, end);
}
}  // namespace

void append_json_message(std::string& out, const client::message& m) {
  append_json_message_open(out, m);
  out.push_back('}');
}

void append_json_message_open(std::string& out, const client::message& m) {
  out.append("{\"subject\":");
  append_json_string(out, m.subject);
  out.append(",\"key\":");
  append_json_string(out, m.key);
  out.append(",\"payload\":");
  append_json_string(out, m.payload);
  out.append(",\"core\":");
  append_number(out, m.owner_core);
  out.append(",\"seq\":");
  append_number(out, m.seq);
  out.append(",\"reply_to\":");
  append_json_string(out, m.reply_to);
  if (!m.headers.empty()) {
    out.append(",\"headers\":[");
    for (std::size_t i = 0; i < m.headers.size(); ++i) {
      if (i > 0) out.push_back(',');
      out.push_back('[');
      append_json_string(out, m.headers[i].name);
      out.push_back(',');
      append_json_string(out, m.headers[i].value);
      out.push_back(']');
    }
    out.push_back(']');
  }
}

void json_object::name(std::string_view n) {
  if (text_.size() > 1) text_.push_back(',');
  append_json_string(text_, n);
  text_.push_back(':');
}

json_object& json_object::str(std::string_view n, std::string_view value) {
  name(n);
  append_json_string(text_, value);
  return *this;
}

json_object& json_object::num(std::string_view n, std::uint64_t value) {
  name(n);
  append_number(text_, value);
  return *this;
}

json_object& json_object::num(std::string_view n, std::int64_t value) {
  name(n);
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, value);
  text_.append(digits, end);
  return *this;
}

json_object& json_object::real(std::string_view n, double value, int decimals) {
  name(n);
  if (!std::isfinite(value)) {
    text_.append("null");
    return *this;
  }
  char buf[64];
  const int len = std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  if (len > 0 && static_cast<std::size_t>(len) < sizeof buf)
    text_.append(buf, static_cast<std::size_t>(len));
  else
    text_.append("null");
  return *this;
}

json_object& json_object::boolean(std::string_view n, bool value) {
  name(n);
  text_.append(value ? "true" : "false");
  return *this;
}

json_object& json_object::raw(std::string_view n, std::string_view json) {
  name(n);
  text_.append(json);
  return *this;
}

void append_plain_message(std::string& out, const client::message& m) {
  out.push_back('[');
  append_number(out, m.owner_core);
  out.push_back('/');
  append_number(out, m.seq);
  out.append("] ");
  out.append(m.subject);
  if (!m.key.empty()) {
    out.push_back(' ');
    out.append(m.key);
  }
  out.append(": ");
  out.append(m.payload);
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data() || !std::isfinite(value) || value <= 0)
    return std::nullopt;
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  double ms = 0;
  if (unit.empty() || unit == "ms")
    ms = value;
  else if (unit == "us")
    ms = value / 1000.0;
  else if (unit == "s")
    ms = value * 1000.0;
  else if (unit == "m")
    ms = value * 60'000.0;
  else
    return std::nullopt;
  if (ms > 1e12) return std::nullopt;
  const auto rounded = static_cast<std::int64_t>(std::ceil(ms));  // 250us is 1ms, never 0
  return std::chrono::milliseconds(rounded);
}

std::optional<std::chrono::milliseconds> parse_duration_flag(std::string_view flag,
                                                             std::string_view text,
                                                             std::string& problem) {
  const std::string f(flag), t(text);
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  const bool number = ec == std::errc{} && end != text.data() && std::isfinite(value);
  if (number && value <= 0) {
    problem = f + ": '" + t + "' is not positive; use e.g. 500ms, 2s, 1m";
    return std::nullopt;
  }
  if (number && end == text.data() + text.size()) {
    problem = f + ": '" + t + "' has no unit; use e.g. " + t + "ms, " + t + "s, 1m";
    return std::nullopt;
  }
  auto d = number ? parse_duration(text) : std::nullopt;
  if (!d) {
    problem = f + ": '" + t + "' is not a duration; use e.g. 500ms, 2s, 1m (units: us, ms, s, m)";
    return std::nullopt;
  }
  return d;
}

std::optional<std::uint64_t> parse_count_flag(std::string_view flag, std::string_view text,
                                              std::uint64_t min, std::string& problem) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) {
    problem = std::string(flag) + ": '" + std::string(text) + "' is too large";
    return std::nullopt;
  }
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) {
    problem = std::string(flag) + ": '" + std::string(text) + "' is not a whole number";
    return std::nullopt;
  }
  if (value < min) {
    problem = std::string(flag) + " must be at least " + std::to_string(min);
    return std::nullopt;
  }
  return value;
}

std::string format_duration(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::optional<std::pair<std::string, std::string>> parse_header(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0) return std::nullopt;
  return std::pair<std::string, std::string>{std::string(text.substr(0, eq)),
                                             std::string(text.substr(eq + 1))};
}

}  // namespace keyway::cli
