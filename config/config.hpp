// config: reads keyway.toml onto daemon::server_options (docs/configuration.md lists every
// key). Built-in defaults < the file < command-line flags: parse() starts from
// server_options{} and keywayd applies its flags to the result.
//
// Every problem is reported, not just the first, as one line that names the file, the key
// (section.key), the bad value and the rule, e.g.
//   keyway.toml: limits.max_payload = 0 is out of range; allowed 1..67108864 bytes
// Unknown sections, unknown keys and wrong types are errors, so a typo is never ignored.
//
// Threads: plain functions with no shared state; call them from any thread (keywayd calls
// them from main at start-up and on SIGHUP). Cost: start-up path, allocates freely.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/options.hpp"

namespace keyway::config {

/// What parse() and load_file() return: options if the file is valid, else every problem.
struct load_result {
  std::optional<daemon::server_options> options;
  /// One complete sentence per problem, each starting with the file name.
  std::vector<std::string> problems;

  bool ok() const noexcept { return options.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  /// The problems, one per line, without a trailing newline.
  std::string joined() const;
};

/// Parses TOML text, as if read from `file_name`, onto `base` (the built-in
/// defaults unless given: keywayd passes the file's options to apply its flags,
/// written as TOML, with the same checks). Checks everything that does not
/// depend on the machine; see check_environment().
load_result parse(std::string_view toml_text, std::string_view file_name,
                  daemon::server_options base = {});

/// Reads `path` and parses it. An unreadable file is one problem that names the path and
/// the system's reason (e.g. "No such file or directory").
load_result load_file(const std::string& path);

/// Checks that depend on the machine, for options from parse() and again after
/// command-line overrides:
///   - workers not above the CPUs in this process's affinity mask (sched_getaffinity);
///   - every entry of cpus inside that mask;
///   - the directory of every unix listener exists;
///   - tokens_file, if set, is a readable regular file.
/// Each message starts with `file_name` (the config file, or e.g. "command line").
/// Returns the problems; empty means ok.
std::vector<std::string> check_environment(const daemon::server_options& options,
                                           std::string_view file_name);

struct duration_result {
  std::optional<std::chrono::milliseconds> value;
  /// Set when value is not: `"5x" is not a duration; use ...` (quotes the text).
  std::string error;
};

/// "250ms", "5s", "2m", "1h", or a bare whole number of milliseconds ("1500").
/// No sign, no fraction, no spaces. Shared by the config file and keywayd's flags.
duration_result parse_duration(std::string_view text);

/// `text` as a TOML basic string ("a\"b"), cut after 120 bytes: how every message shows a
/// string value, so it reads the way the file spells it.
std::string toml_string(std::string_view text);

/// `text` as a TOML basic string, whole: how keywayd writes its flags as TOML.
std::string toml_quote(std::string_view text);

/// `text` with newlines and carriage returns written as \n and \r: every
/// problem goes through it, since toml++'s descriptions and the values it
/// prints (an array of tables, a multi-line string, a path) may span lines.
std::string one_line(std::string_view text);

/// "1500ms", "5s", "2m", "1h": the largest unit that divides `d` exactly; "0" for zero.
std::string format_duration(std::chrono::milliseconds d);

}  // namespace keyway::config
