// The key table (config/keys.hpp) against everything else that names config keys: the
// reader (it reads every key, the table's defaults are the built-in ones), the reload
// rule (restart keys are refused, live ones are not), config/keyway.toml,
// docs/configuration.md (key tables and flags table) and keywayd's flags (daemon/main.cpp).
// A key added in one place and not in the others fails here, naming it.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "config/keys.hpp"

namespace {

using keyway::config::find_key;
using keyway::config::key_info;
using keyway::config::keys;
using keyway::config::reload_rule;
using keyway::daemon::server_options;

std::string read_source(const std::string& relative) {
  const std::string path = std::string(KEYWAY_SOURCE_DIR) + "/" + relative;
  std::ifstream in(path);
  INFO(path);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::set<std::string> table_names() {
  std::set<std::string> out;
  for (const auto& k : keys()) out.emplace(k.name);
  return out;
}

// A value other than the default for every key, as the TOML lines of its section.
const std::map<std::string, std::string>& examples() {
  static const std::map<std::string, std::string> m{
      {"server.workers", "workers = 2"},
      {"server.cpus", "cpus = [0]"},
      {"server.drain_timeout", "drain_timeout = \"30s\""},
      {"server.lame_duck_grace", "lame_duck_grace = \"5s\""},
      {"server.advertise", "advertise = [\"tcp://10.0.0.2:7400\"]"},
      {"listen.tcp", "tcp = [\"127.0.0.1:7500\"]"},
      {"listen.unix", "unix = [\"/tmp/keyway-keys-test.sock\"]"},
      {"listen.unix_socket_mode", "unix_socket_mode = \"0600\""},
      {"admin.listen", "listen = \"127.0.0.1:7501\""},
      {"admin.max_connections", "max_connections = 8"},
      {"routing.partitioner", "partitioner = \"hash\""},
      {"routing.slots", "slots = 1024"},
      {"routing.vnodes", "vnodes = 80"},
      {"routing.split_points", "partitioner = \"range\"\nsplit_points = [\"m\"]"},
      {"limits.max_payload", "max_payload = 2048"},
      {"limits.max_connections", "max_connections = 10"},
      {"limits.max_subscriptions", "max_subscriptions = 10"},
      {"limits.max_pattern_tokens", "max_pattern_tokens = 8"},
      {"limits.max_queue_group_members", "max_queue_group_members = 8"},
      {"limits.max_pattern_shapes", "max_pattern_shapes = 8"},
      {"limits.max_subscription_bytes", "max_subscription_bytes = 131072"},
      {"limits.max_total_subscription_bytes", "max_total_subscription_bytes = 131072"},
      {"limits.max_pending_bytes", "max_pending_bytes = 131072"},
      {"limits.slow_consumer", "slow_consumer = \"drop\""},
      {"limits.slow_consumer_grace", "slow_consumer_grace = \"1s\""},
      {"limits.handshake_timeout", "handshake_timeout = \"1s\""},
      {"limits.idle_timeout", "idle_timeout = \"1m\""},
      {"log.level", "level = \"debug\""},
      {"log.format", "format = \"json\""},
      {"auth.tokens_file", "tokens_file = \"/tmp/keyway-tokens\""},
      {"cluster.name", "name = \"blue\""},
      {"cluster.node_id", "node_id = \"n1\""},
      {"cluster.peer_listen", "peer_listen = \"tcp://127.0.0.1:7602\""},
      {"cluster.peer_advertise", "peer_advertise = \"tcp://10.0.0.2:7402\""},
      {"cluster.advertise", "advertise = \"tcp://10.0.0.2:7400\""},
      {"cluster.etcd_endpoints", "etcd_endpoints = [\"http://127.0.0.1:2479\"]"},
      {"cluster.lease_ttl", "lease_ttl = \"5s\""},
  };
  return m;
}

}  // namespace

TEST_CASE("key table: names are section.key, unique, documented, and every section is read") {
  std::set<std::string> seen;
  for (const auto& k : keys()) {
    INFO(k.name);
    CHECK(k.name.find('.') != std::string_view::npos);
    CHECK(!k.section().empty());
    CHECK(!k.key().empty());
    CHECK(seen.emplace(k.name).second);
    CHECK(!k.type.empty());
    CHECK(!k.default_toml.empty());
    CHECK(!k.valid.empty());
    CHECK(!k.doc.empty());
    CHECK(static_cast<bool>(k.same));
    CHECK(find_key(k.name) == &k);
  }
  CHECK(find_key("server.nope") == nullptr);
  CHECK(keyway::config::sections() == std::vector<std::string_view>{"server", "listen", "admin",
                                                                    "routing", "limits", "log",
                                                                    "auth", "cluster"});
}

TEST_CASE("key table: its defaults, written as TOML, parse to the built-in defaults") {
  std::string text;
  std::string_view section;
  for (const auto& k : keys()) {
    if (k.section() != section) {
      section = k.section();
      text.append("[").append(section).append("]\n");
    }
    text += std::string(k.key()) + " = " + std::string(k.default_toml) + "\n";
  }
  auto r = keyway::config::parse(text, "keyway.toml");
  INFO(r.joined());
  REQUIRE(r.ok());
  const server_options defaults;
  for (const auto& k : keys()) {
    INFO(k.name);
    CHECK(k.same(*r.options, defaults));
  }
}

TEST_CASE(
    "key table: the reader reads every key, restart keys are refused on reload and live keys are "
    "not") {
  const server_options defaults;
  CHECK(keyway::config::restart_keys_changed(defaults, defaults).empty());
  for (const auto& k : keys()) {
    INFO(k.name);
    const auto it = examples().find(std::string(k.name));
    REQUIRE_MESSAGE(it != examples().end(), "keys_test.cpp has no example value for this key");
    std::string text = "[";  // appended, not operator+: no -Wrestrict false positive (GCC 12)
    text.append(k.section()).append("]\n").append(it->second).append("\n");
    auto r = keyway::config::parse(text, "keyway.toml");
    INFO(r.joined());
    REQUIRE(r.ok());
    CHECK_FALSE(k.same(defaults, *r.options));  // read, and told apart by the comparison
    const auto fixed = keyway::config::restart_keys_changed(defaults, *r.options);
    if (k.reload == reload_rule::restart) {
      CHECK(std::find(fixed.begin(), fixed.end(), k.reload_name()) != fixed.end());
    } else {
      CHECK(fixed.empty());
    }
  }
  for (const auto& [name, example] : examples()) {
    INFO(name);
    CHECK(find_key(name) != nullptr);
  }
}

TEST_CASE(
    "key table: config/keyway.toml sets every key at its default and marks exactly the live ones") {
  const std::string file = read_source("config/keyway.toml");
  std::istringstream in(file);
  std::string line, section, comments;
  std::set<std::string> found;
  const std::regex section_re(R"(^\[([a-z_]+)\]\s*$)");
  const std::regex key_re(R"(^([a-z_]+) = (.*)$)");
  // An optional section ([cluster]) is shipped commented out: "#[cluster]", "#key = value".
  const std::regex optional_section_re(R"(^#\[([a-z_]+)\]\s*$)");
  const std::regex optional_key_re(R"(^#([a-z_]+) = (.*)$)");
  std::smatch m;
  bool in_optional = false;
  while (std::getline(in, line)) {
    if (std::regex_match(line, m, optional_section_re)) {
      section = m[1];
      INFO(section);
      CHECK(keyway::config::optional_section(section));
      in_optional = true;
      comments.clear();
      continue;
    }
    if (in_optional && std::regex_match(line, m, optional_key_re))
      line = line.substr(1);  // checked as the key it sets when uncommented
    if (line.starts_with("#")) {
      comments += line + "\n";
    } else if (std::regex_match(line, m, section_re)) {
      section = m[1];
      INFO(section);
      CHECK_FALSE(keyway::config::optional_section(section));  // shipped on: would turn it on
      in_optional = false;
      comments.clear();
    } else if (std::regex_match(line, m, key_re)) {
      const std::string name = section + "." + std::string(m[1]);
      INFO(name);
      const key_info* k = find_key(name);
      REQUIRE_MESSAGE(k != nullptr, "keyway.toml sets a key the table does not have");
      CHECK(found.insert(name).second);
      CHECK(std::string(m[2]) == k->default_toml);
      CHECK((comments.find("(live)") != std::string::npos) == (k->reload == reload_rule::live));
      comments.clear();
    }
  }
  CHECK(found == table_names());
}

TEST_CASE("key table: docs/configuration.md has one row per key, as the table gives it") {
  const std::string doc = read_source("docs/configuration.md");
  std::istringstream in(doc);
  std::string line, section;
  std::set<std::string> found;
  const std::regex heading_re(R"(^### \[([a-z_]+)\]\s*$)");
  const std::regex row_re(R"(^\| `([a-z_]+)` \|.*)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (line.starts_with("#")) {
      section = std::regex_match(line, m, heading_re) ? std::string(m[1]) : std::string();
    } else if (!section.empty() && std::regex_match(line, m, row_re)) {
      const std::string name = section + "." + std::string(m[1]);
      INFO(name);
      const key_info* k = find_key(name);
      REQUIRE_MESSAGE(k != nullptr, "the docs list a key the table does not have");
      CHECK(found.insert(name).second);
      CHECK(line == keyway::config::docs_row(*k));
    }
  }
  CHECK(found == table_names());
}

TEST_CASE("key table: keywayd's flags and the docs' flags table map to the table's keys") {
  std::set<std::string> table_flags;
  for (const auto& k : keys())
    if (!k.flag.empty()) table_flags.emplace(k.flag);

  // daemon/main.cpp: every option is a key's flag, or one of the flags that set no key.
  const std::string main_cpp = read_source("daemon/main.cpp");
  const std::set<std::string> not_keys{"--config", "--check-config", "--version"};
  std::set<std::string> main_flags;
  const std::regex option_re(R"re(add_(?:option|flag)\(\s*"(--[a-z-]+)")re");
  for (std::sregex_iterator it(main_cpp.begin(), main_cpp.end(), option_re), end; it != end; ++it) {
    const std::string flag = (*it)[1];
    if (!not_keys.contains(flag)) main_flags.insert(flag);
  }
  CHECK(main_flags == table_flags);
  // Its flags-to-TOML lines name the key the table gives the flag.
  const std::regex override_re(R"re((?:number|text)\("(--[a-z-]+)",\s*"([a-z_]+\.[a-z_]+)")re");
  int overrides = 0;
  for (std::sregex_iterator it(main_cpp.begin(), main_cpp.end(), override_re), end; it != end;
       ++it) {
    const std::string flag = (*it)[1], name = (*it)[2];
    INFO(flag << " -> " << name);
    const key_info* k = find_key(name);
    REQUIRE(k != nullptr);
    CHECK(k->flag == flag);
    ++overrides;
  }
  CHECK(overrides > 10);

  // docs/configuration.md, "Where values come from": | `--flag ARG` | `section.key` ... |
  const std::string doc = read_source("docs/configuration.md");
  const std::regex row_re(R"(^\| `(--[a-z-]+)[^|]*\| `([a-z_]+\.[a-z_]+)`.*)");
  std::istringstream in(doc);
  std::string line;
  std::smatch m;
  std::set<std::string> doc_flags;
  while (std::getline(in, line)) {
    if (!std::regex_match(line, m, row_re)) continue;
    const std::string flag = m[1], name = m[2];
    INFO(flag << " -> " << name);
    const key_info* k = find_key(name);
    REQUIRE(k != nullptr);
    CHECK(k->flag == flag);
    doc_flags.insert(flag);
  }
  CHECK(doc_flags == table_flags);
}
