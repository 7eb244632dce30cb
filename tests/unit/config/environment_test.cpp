// check_environment() and load_file(): the checks that need the machine (CPU affinity,
// directories, the tokens file) and reading the file itself. Paths live under a fresh
// temporary directory, so the tests are hermetic.
#include <doctest/doctest.h>

#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.hpp"

namespace {

using keyway::config::check_environment;
using keyway::daemon::listen_address;
using keyway::daemon::server_options;

// A directory removed at the end of the test.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "keyway-config-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

unsigned allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  return static_cast<unsigned>(CPU_COUNT(&set));
}

}  // namespace

TEST_CASE("the defaults pass the environment checks") {
  CHECK(check_environment(server_options{}, "keyway.toml").empty());
}

TEST_CASE("more workers than CPUs in the affinity mask is refused") {
  server_options o;
  o.workers = allowed_cpus();
  CHECK(check_environment(o, "keyway.toml").empty());
  o.workers = allowed_cpus() + 1;
  auto problems = check_environment(o, "keyway.toml");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].starts_with("keyway.toml: server.workers = " + std::to_string(o.workers) +
                                " is more than the " + std::to_string(allowed_cpus()) +
                                " CPUs this process may use ("));
}

TEST_CASE("cpus outside the affinity mask are refused") {
  server_options o;
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  int first = 0;
  while (!CPU_ISSET(first, &set)) ++first;
  o.cpus = {first, 100000};
  o.workers = 1;  // not what is being tested
  auto problems = check_environment(o, "keyway.toml");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].starts_with(
      "keyway.toml: server.cpus lists CPU 100000, which is outside this process's CPU affinity ("));
}

TEST_CASE("a unix listener in a missing directory is refused") {
  temp_dir dir;
  auto parsed = keyway::config::parse(
      "[listen]\nunix = [\"" + (dir.path / "ok.sock").string() + "\", \"/nope-keyway/x.sock\"]\n",
      "keyway.toml");
  REQUIRE(parsed.ok());  // parsing does not look at the disk
  auto problems = check_environment(*parsed.options, "keyway.toml");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0] ==
        "keyway.toml: listen.unix = \"/nope-keyway/x.sock\": directory /nope-keyway does not "
        "exist; create it or "
        "choose another path");
  dir.write("file", "x");
  server_options o;
  o.listen.push_back(
      keyway::daemon::parse_listen_url("unix://" + (dir.path / "file" / "x.sock").string()));
  problems = check_environment(o, "command line");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].starts_with("command line: listen.unix = "));
  CHECK(problems[0].ends_with("is not a directory"));
}

TEST_CASE("an unreadable tokens file is refused") {
  temp_dir dir;
  server_options o;
  o.tokens_file = dir.write("tokens", "secret\n");
  CHECK(check_environment(o, "keyway.toml").empty());
  o.tokens_file = (dir.path / "missing").string();
  auto problems = check_environment(o, "keyway.toml");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0] ==
        "keyway.toml: auth.tokens_file = \"" + o.tokens_file +
            "\" cannot be read: No such file or directory; fix the path or its permissions, or set "
            "it to \"\" to turn authentication off");
  o.tokens_file = dir.path.string();
  problems = check_environment(o, "keyway.toml");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].ends_with("is not a regular file"));
}

TEST_CASE("several environment problems are reported together") {
  server_options o;
  o.workers = allowed_cpus() + 1;
  o.listen.push_back(keyway::daemon::parse_listen_url("unix:///nope-keyway/a.sock"));
  o.tokens_file = "/nope-keyway/tokens";
  CHECK(check_environment(o, "keyway.toml").size() == 3);
}

TEST_CASE("load_file reads the file and names it in every problem") {
  temp_dir dir;
  const auto good = dir.write("good.toml", "[server]\nworkers = 3\n");
  auto r = keyway::config::load_file(good);
  REQUIRE(r.ok());
  CHECK(r.options->workers == 3);

  const auto bad = dir.write("bad.toml", "[server]\nworkers = \"x\"\n");
  r = keyway::config::load_file(bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.joined() == bad + ": server.workers = \"x\" has the wrong type: expected an integer");

  const auto missing = (dir.path / "missing.toml").string();
  r = keyway::config::load_file(missing);
  REQUIRE_FALSE(r.ok());
  CHECK(r.joined() == missing + ": cannot read the config file: No such file or directory");

  r = keyway::config::load_file(dir.path.string());
  REQUIRE_FALSE(r.ok());
  CHECK(r.joined() == dir.path.string() + ": cannot read the config file: Is a directory");
}
