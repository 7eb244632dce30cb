// keys: the one table of keyway.toml's keys. Each row gives a key's name, its type, its
// default (as keyway.toml writes it), its valid range, whether a SIGHUP applies it (live)
// or only a restart does, the keywayd flag that sets it, a one-line description, and how
// to tell whether two server_options differ in it.
//
// Derived from the table:
//   - the schema of the reader (config.cpp: which sections and keys exist, in this order);
//   - the restart-only rule of server::reload (restart_keys_changed());
//   - the rows of docs/configuration.md's key tables (docs_row()).
// Checked against it by tests/unit/config/keys_test.cpp: config/keyway.toml (every key,
// at its default, "(live)" on exactly the live ones), docs/configuration.md (every row
// and the flags table), keywayd's flags (daemon/main.cpp), and that the reader reads
// every key (a non-default value changes the parsed options in that key).
//
// Adding a key: a row here, the reader in config.cpp, keyway.toml, the docs' table; the
// tests name whatever is missing.
//
// Threads: immutable static data; any thread.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/options.hpp"

namespace keyway::config {

enum class reload_rule { live, restart };

struct key_info {
  /// "section.key", e.g. "server.drain_timeout".
  std::string_view name;
  /// As in the docs' Type column, e.g. "duration", "integer (bytes)".
  std::string_view type;
  /// The built-in default as a TOML value, as keyway.toml writes it: "\"10s\"", "[]".
  std::string_view default_toml;
  /// Shown after the default in the docs, e.g. "(1 MiB)"; may be empty.
  std::string_view default_note;
  /// The values allowed, as in the docs' Valid column, e.g. "0..1h".
  std::string_view valid;
  reload_rule reload;
  /// The keywayd flag that sets it ("--drain-timeout"), or empty.
  std::string_view flag;
  /// One line: what the key does.
  std::string_view doc;
  /// True if `a` and `b` agree in this key.
  bool (*same)(const daemon::server_options& a, const daemon::server_options& b);
  /// The name a refused reload gives it if not its own: "listen" for listen.tcp and
  /// listen.unix (one --listen sets both), "routing" for the partitioner's keys.
  std::string_view reported_as = {};

  /// What a refused reload calls the key.
  std::string_view reload_name() const { return reported_as.empty() ? name : reported_as; }

  std::string_view section() const { return name.substr(0, name.find('.')); }
  std::string_view key() const { return name.substr(name.find('.') + 1); }
};

/// Every key, sections in the order of the file (server, listen, admin, routing, limits,
/// log, auth, cluster), keys in the order of their section.
std::span<const key_info> keys();

/// The row of `name`, or nullptr.
const key_info* find_key(std::string_view name);

/// Sections that are off unless the file has them ([cluster]): keyway.toml shows them
/// commented out, and adding or removing one takes a restart.
bool optional_section(std::string_view section);

/// The section names, in order.
std::vector<std::string_view> sections();

/// The keys of `section` (without the "section." prefix), in order.
std::vector<std::string_view> section_keys(std::string_view section);

/// The restart-only keys whose values differ between `current` and `next`, by
/// reload_name(), once each, in table order, after "cluster" when one has a [cluster]
/// section and the other not: what a reload must refuse.
std::vector<std::string> restart_keys_changed(const daemon::server_options& current,
                                              const daemon::server_options& next);

/// The key's row in docs/configuration.md: | `key` | type | `default` note | valid | reload |
std::string docs_row(const key_info& k);

}  // namespace keyway::config
