// The deploy kit against the real tools: systemd-analyze verify on the units,
// the units, sysusers and tmpfiles snippets agreeing on /run/keyway (and
// systemd-sysusers/systemd-tmpfiles applying them to a scratch root),
// promtool on the alert rules and on keywayd's /metrics, and a real
// Prometheus server scraping a running keywayd, read back through its query
// API. Each tool is the Debian package's (scripts/deps.sh installs them).
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/itest.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/local_socket.hpp"

namespace keyway::itest {
namespace {

using test::child_process;
using test::http_get;

/// Runs a command line through sh; returns {exit code, stdout + stderr}.
std::pair<int, std::string> run(const std::string& command, ms timeout = 60s) {
  child_process p({"/bin/sh", "-c", command});
  const auto code = p.wait(timeout);
  return {code.value_or(-1), p.out() + p.err()};
}

std::string source_file(const std::string& relative) {
  std::ifstream in(std::string(KEYWAY_SOURCE_DIR) + "/" + relative);
  REQUIRE_MESSAGE(in, "cannot read " << relative);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> words_of(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

/// A unit file's assignments, KEY -> every value given, in order (comments,
/// section headers and blank lines skipped).
std::map<std::string, std::vector<std::string>> unit_settings(const std::string& text) {
  std::map<std::string, std::vector<std::string>> settings;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line[0] == ';' || line[0] == '[') continue;
    const auto eq = line.find('=');
    if (eq != std::string::npos) settings[line.substr(0, eq)].push_back(line.substr(eq + 1));
  }
  return settings;
}

/// The one value of KEY (the last one given), "" when unset.
std::string setting(const std::map<std::string, std::vector<std::string>>& s,
                    const std::string& key) {
  const auto it = s.find(key);
  return it == s.end() || it->second.empty() ? std::string() : it->second.back();
}

/// The non-comment lines of a sysusers.d or tmpfiles.d snippet, split into fields.
std::vector<std::vector<std::string>> snippet_lines(const std::string& text) {
  std::vector<std::vector<std::string>> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    auto w = words_of(line);
    if (!w.empty() && w[0][0] != '#') lines.push_back(std::move(w));
  }
  return lines;
}

unsigned octal(const std::string& s) {
  return static_cast<unsigned>(std::stoul(s, nullptr, 8));
}

/// The numeric id of NAME in a passwd or group file ("" when absent).
std::string id_in(const std::filesystem::path& file, const std::string& name) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> fields;
    std::istringstream f(line);
    for (std::string x; std::getline(f, x, ':');) fields.push_back(x);
    if (fields.size() >= 3 && fields[0] == name) return fields[2];
  }
  return {};
}

}  // namespace

TEST_CASE("deploy: systemd-analyze verify passes on the units") {
  const std::string dir = KEYWAY_TEST_UNITS_DIR;
  const auto [code, out] =
      run("systemd-analyze verify " + dir + "/keyway.service " + dir + "/keyway.socket 2>&1");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("keyway.service") == std::string::npos);  // no complaint names our units
}

TEST_CASE("deploy: sysusers, tmpfiles, keyway.service and keyway.socket agree on /run/keyway") {
  const auto service = unit_settings(source_file("systemd/keyway.service.in"));
  const auto socket = unit_settings(source_file("systemd/keyway.socket"));
  const auto sysusers = snippet_lines(source_file("systemd/keyway.sysusers"));
  const auto tmpfiles = snippet_lines(source_file("systemd/keyway.tmpfiles"));

  // The service runs as a static user and group that sysusers creates.
  const std::string user = setting(service, "User");
  const std::string group = setting(service, "Group");
  REQUIRE(!user.empty());
  REQUIRE(!group.empty());
  CHECK(setting(service, "DynamicUser") != "yes");
  bool user_created = false;
  bool group_created = false;
  for (const auto& l : sysusers) {
    if (l.size() < 3) continue;
    if (l[0] == "u" && l[1] == user) user_created = true;
    // "u NAME ID" without ":GROUP" in ID also creates group NAME.
    if (l[0] == "u" && l[1] == group && l[2].find(':') == std::string::npos) group_created = true;
    if (l[0] == "g" && l[1] == group) group_created = true;
  }
  CHECK_MESSAGE(user_created, "keyway.sysusers creates no user " << user);
  CHECK_MESSAGE(group_created, "keyway.sysusers creates no group " << group);

  // tmpfiles makes /run/<RuntimeDirectory> for the same owner and mode.
  const std::string runtime_dir = "/run/" + setting(service, "RuntimeDirectory");
  const std::vector<std::string>* dir_line = nullptr;
  for (const auto& l : tmpfiles)
    if (l.size() >= 5 && l[0] == "d" && l[1] == runtime_dir) dir_line = &l;
  REQUIRE_MESSAGE(dir_line, "keyway.tmpfiles has no 'd " << runtime_dir << "' line");
  const auto& d = *dir_line;
  CHECK(d[3] == user);
  CHECK(d[4] == group);
  CHECK(octal(d[2]) == octal(setting(service, "RuntimeDirectoryMode")));
  CHECK(octal(d[2]) == octal(setting(socket, "DirectoryMode")));
  CHECK((octal(d[2]) & 0010) != 0);  // the group may enter it
  CHECK((octal(d[2]) & 0007) == 0);  // nobody else may
  // A stop or restart of the service must not delete the socket unit's socket.
  CHECK(setting(service, "RuntimeDirectoryPreserve") == "yes");

  // The socket: in that directory, for the same owner, read-write for the group.
  bool unix_socket = false;
  for (const auto& listen : socket.at("ListenStream")) {
    if (listen.empty() || listen[0] != '/') continue;
    unix_socket = true;
    CHECK(std::filesystem::path(listen).parent_path() == runtime_dir);
  }
  CHECK(unix_socket);
  CHECK(setting(socket, "SocketUser") == user);
  CHECK(setting(socket, "SocketGroup") == group);
  CHECK(octal(setting(socket, "SocketMode")) == 0660);
}

TEST_CASE("deploy: systemd-sysusers and systemd-tmpfiles make /run/keyway keyway:keyway 0750") {
  // Applied to a scratch root: the user and group land in its /etc, and
  // tmpfiles resolves the owner there.
  temp_dir root;
  std::filesystem::create_directories(root.path() / "etc");
  const std::string src = KEYWAY_SOURCE_DIR;
  auto [code, out] = run("systemd-sysusers --root=" + root.path().string() + " " + src +
                         "/systemd/keyway.sysusers");
  INFO(out);
  REQUIRE(code == 0);
  const std::string uid = id_in(root.path() / "etc/passwd", "keyway");
  const std::string gid = id_in(root.path() / "etc/group", "keyway");
  REQUIRE(!uid.empty());
  REQUIRE(!gid.empty());
  if (::geteuid() != 0) {
    MESSAGE("not root: systemd-tmpfiles cannot chown, its part is skipped");
    return;
  }
  std::tie(code, out) = run("systemd-tmpfiles --root=" + root.path().string() + " --create " + src +
                            "/systemd/keyway.tmpfiles");
  INFO(out);
  REQUIRE(code == 0);
  struct stat st {};
  REQUIRE(::stat((root.path() / "run/keyway").c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK(std::to_string(st.st_uid) == uid);
  CHECK(std::to_string(st.st_gid) == gid);
  CHECK((st.st_mode & 07777) == 0750);
}

TEST_CASE("deploy: promtool checks the alert rules and runs their unit tests") {
  const std::string dir = std::string(KEYWAY_SOURCE_DIR) + "/deploy/prometheus";
  auto [code, out] = run(
      "cd " + dir + " && promtool check rules alerts.yml && promtool test rules alerts_test.yml");
  INFO(out);
  CHECK(code == 0);
  std::tie(code, out) = run("cd " + dir + " && promtool check config prometheus.yml");
  INFO(out);
  CHECK(code == 0);
}

TEST_CASE("deploy: a real Prometheus scrapes keywayd and promtool accepts its metrics") {
  keywayd_process d({"--workers", "2"});
  raw_client sub = open_client(d.url(), "sub");
  raw_client pub = open_client(d.url(), "pub");
  sub.subscribe(1, "prom.>");
  constexpr int n = 1234;
  for (int i = 0; i < n; ++i)
    pub.publish("prom.x", std::string("k").append(std::to_string(i % 50)), "payload");
  pub.ping();
  REQUIRE(sub.collect(n, 10s).size() == n);

  temp_dir dir;
  {
    const auto r = http_get(d.admin_port(), "/metrics");
    REQUIRE(r.status == 200);
    std::ofstream(dir.path() / "metrics.txt") << r.body;
  }
  auto [code, out] = run("promtool check metrics < " + (dir.path() / "metrics.txt").string());
  INFO("promtool check metrics: " << out);
  CHECK(code == 0);

  const std::uint16_t port = keyway::test::closed_loopback_port();
  std::ofstream(dir.path() / "prometheus.yml")
      << "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keyway\n    "
         "static_configs:\n"
      << "      - targets: [\"127.0.0.1:" << d.admin_port() << "\"]\n";
  child_process prom({"/usr/bin/prometheus",
                      "--config.file=" + (dir.path() / "prometheus.yml").string(),
                      "--storage.tsdb.path=" + (dir.path() / "data").string(),
                      "--web.listen-address=127.0.0.1:" + std::to_string(port)});
  // Ask until the scraped sum shows every publish (bounded: 60 s).
  double seen = -1;
  std::string last;
  const auto deadline = steady::now() + 60s;
  while (steady::now() < deadline && seen != n) {
    std::this_thread::sleep_for(500ms);
    try {
      const auto r = http_get(port, "/api/v1/query?query=sum(keyway_messages_received_total)", 5s);
      last = r.body;
      if (r.status != 200) continue;
      const auto j = nlohmann::json::parse(r.body);
      if (j["status"] == "success" && !j["data"]["result"].empty())
        seen = std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
    } catch (const std::exception& e) {
      last = e.what();  // Prometheus still starting
    }
  }
  INFO("last answer: " << last << "\nprometheus stderr:\n" << prom.err());
  CHECK(seen == n);
  const auto up = http_get(port, "/api/v1/query?query=up%7Bjob%3D%22keyway%22%7D", 5s);
  CHECK(up.body.find("\"value\":[") != std::string::npos);
  CHECK(up.body.find("\"1\"]") != std::string::npos);
  prom.signal(SIGTERM);
  CHECK(prom.wait(20s).has_value());
}

}  // namespace keyway::itest
