// keyway.toml parsing: defaults, every key, the shipped example, and every class of
// problem (syntax, unknown section or key, wrong type, out of range, bad address, routing
// rules), checked by message so a regression in wording or in what is caught fails here.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "config/keys.hpp"

namespace {

using keyway::config::load_result;
using keyway::config::parse;
using keyway::daemon::listen_address;
using keyway::daemon::server_options;
using namespace std::chrono_literals;

load_result parse_ok(std::string_view text) {
  auto r = parse(text, "keyway.toml");
  INFO(r.joined());
  REQUIRE(r.ok());
  CHECK(r.problems.empty());
  return r;
}

// The problems of a file that must be refused.
std::vector<std::string> problems_of(std::string_view text) {
  auto r = parse(text, "keyway.toml");
  CHECK_FALSE(r.ok());
  CHECK_FALSE(r.problems.empty());
  for (const auto& p : r.problems) CHECK(p.starts_with("keyway.toml"));
  return r.problems;
}

// The one problem of a file that has exactly one.
std::string problem_of(std::string_view text) {
  auto p = problems_of(text);
  INFO(keyway::config::load_result{std::nullopt, p}.joined());
  REQUIRE(p.size() == 1);
  return p.front();
}

std::vector<std::string> listen_urls(const server_options& o) {
  std::vector<std::string> out;
  for (const auto& l : o.listen) out.push_back(l.to_string());
  return out;
}

// server_options has no operator==; compare every field.
void check_same(const server_options& a, const server_options& b) {
  CHECK(listen_urls(a) == listen_urls(b));
  REQUIRE(a.admin.has_value() == b.admin.has_value());
  if (a.admin) CHECK(a.admin->to_string() == b.admin->to_string());
  CHECK(a.workers == b.workers);
  CHECK(a.cpus == b.cpus);
  CHECK(a.partitioner == b.partitioner);
  CHECK(a.partition.seed == b.partition.seed);
  CHECK(a.partition.slots == b.partition.slots);
  CHECK(a.partition.layout == b.partition.layout);
  CHECK(a.partition.vnodes == b.partition.vnodes);
  CHECK(a.partition.split_points == b.partition.split_points);
  CHECK(a.limits.max_frame == b.limits.max_frame);
  CHECK(a.limits.max_segments == b.limits.max_segments);
  CHECK(a.limits.max_payload == b.limits.max_payload);
  CHECK(a.limits.max_subject == b.limits.max_subject);
  CHECK(a.limits.max_key == b.limits.max_key);
  CHECK(a.limits.max_headers == b.limits.max_headers);
  CHECK(a.limits.max_header_bytes == b.limits.max_header_bytes);
  CHECK(a.limits.max_client_name == b.limits.max_client_name);
  CHECK(a.limits.max_auth_token == b.limits.max_auth_token);
  CHECK(a.limits.nesting_limit == b.limits.nesting_limit);
  CHECK(a.limits.traversal_factor == b.limits.traversal_factor);
  CHECK(a.max_connections == b.max_connections);
  CHECK(a.max_subscriptions == b.max_subscriptions);
  CHECK(a.max_pattern_tokens == b.max_pattern_tokens);
  CHECK(a.max_queue_group_members == b.max_queue_group_members);
  CHECK(a.max_pattern_shapes == b.max_pattern_shapes);
  CHECK(a.max_subscription_bytes == b.max_subscription_bytes);
  CHECK(a.max_total_subscription_bytes == b.max_total_subscription_bytes);
  CHECK(a.max_pending_bytes == b.max_pending_bytes);
  CHECK(a.slow_consumer == b.slow_consumer);
  CHECK(a.slow_consumer_grace == b.slow_consumer_grace);
  CHECK(a.admin_max_connections == b.admin_max_connections);
  CHECK(a.handshake_timeout == b.handshake_timeout);
  CHECK(a.drain_timeout == b.drain_timeout);
  CHECK(a.lame_duck_grace == b.lame_duck_grace);
  CHECK(a.advertise == b.advertise);
  CHECK(a.ring_capacity == b.ring_capacity);
  CHECK(a.idle_timeout == b.idle_timeout);
  CHECK(a.unix_socket_mode == b.unix_socket_mode);
  CHECK(a.log_level == b.log_level);
  CHECK(a.log_fmt == b.log_fmt);
  CHECK(a.tokens_file == b.tokens_file);
  CHECK(a.cluster.has_value() == b.cluster.has_value());
}

bool contains(const std::vector<std::string>& problems, std::string_view text) {
  return std::any_of(problems.begin(), problems.end(),
                     [&](const std::string& p) { return p.find(text) != std::string::npos; });
}

}  // namespace

TEST_CASE("an empty file gives the built-in defaults") {
  check_same(*parse_ok("").options, server_options{});
  check_same(*parse_ok("# only a comment\n\n").options, server_options{});
  check_same(*parse_ok("[server]\n[listen]\n[admin]\n[routing]\n[limits]\n[log]\n[auth]\n").options,
             server_options{});
}

TEST_CASE("the shipped keyway.toml parses cleanly and equals the defaults") {
  auto r = keyway::config::load_file(KEYWAY_EXAMPLE_CONFIG);
  INFO(r.joined());
  REQUIRE(r.ok());
  check_same(*r.options, server_options{});
}

TEST_CASE("every key written at its default value gives the defaults") {
  auto text = parse_ok(R"(
[server]
workers = 0
cpus = []
drain_timeout = "10s"
lame_duck_grace = "500ms"
advertise = []
[listen]
tcp = ["127.0.0.1:7400"]
unix = []
unix_socket_mode = "0660"
[admin]
listen = "127.0.0.1:7401"
max_connections = 64
[routing]
partitioner = "consistent"
slots = 65536
vnodes = 160
split_points = []
[limits]
max_payload = 1048576
max_connections = 0
max_subscriptions = 65536
max_pattern_tokens = 32
max_queue_group_members = 1024
max_pattern_shapes = 64
max_subscription_bytes = 67108864
max_total_subscription_bytes = 1073741824
max_pending_bytes = 67108864
slow_consumer = "disconnect"
slow_consumer_grace = "5s"
handshake_timeout = "5s"
idle_timeout = "0s"
[log]
level = "info"
format = "text"
[auth]
tokens_file = ""
)");
  check_same(*text.options, server_options{});
}

TEST_CASE("the shipped keyway.toml names every key") {
  FILE* f = std::fopen(KEYWAY_EXAMPLE_CONFIG, "r");
  REQUIRE(f != nullptr);
  std::string file;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) file.append(buf, n);
  std::fclose(f);
  for (std::string_view key : {"workers =",
                               "cpus =",
                               "drain_timeout =",
                               "lame_duck_grace =",
                               "advertise =",
                               "tcp =",
                               "unix =",
                               "unix_socket_mode =",
                               "listen =",
                               "partitioner =",
                               "slots =",
                               "vnodes =",
                               "split_points =",
                               "max_payload =",
                               "max_connections =",
                               "max_subscriptions =",
                               "max_pattern_tokens =",
                               "max_queue_group_members =",
                               "max_pattern_shapes =",
                               "max_subscription_bytes =",
                               "max_total_subscription_bytes =",
                               "max_pending_bytes =",
                               "slow_consumer =",
                               "slow_consumer_grace =",
                               "handshake_timeout =",
                               "idle_timeout =",
                               "level =",
                               "format =",
                               "tokens_file ="}) {
    INFO(key);
    CHECK(file.find(std::string("\n").append(key)) != std::string::npos);
  }
}

TEST_CASE("every key is read") {
  auto r = parse_ok(R"(
[server]
workers = 2
cpus = [3, 1]
drain_timeout = "3s"
lame_duck_grace = "2s"
advertise = ["tcp://10.0.0.2:7400", "tcp://keyway-b.example.com:7400", "tcp://[fd00::2]:7400",
             "unix:///run/keyway/keyway.sock"]

[listen]
tcp = ["0.0.0.0:7500", "[::1]:0"]
unix = ["/tmp/keyway-a.sock"]
unix_socket_mode = "0600"

[admin]
listen = "127.0.0.1:9100"

[routing]
partitioner = "range"
slots = 1024
vnodes = 32
split_points = ["g", "p"]

[limits]
max_payload = 4096
max_connections = 10
max_subscriptions = 20
max_pending_bytes = 1048576
slow_consumer = "drop"
handshake_timeout = 250
idle_timeout = "2m"

[log]
level = "debug"
format = "json"

[auth]
tokens_file = "/etc/keyway/tokens"
)");
  const server_options& o = *r.options;
  CHECK(o.workers == 2);
  CHECK(o.cpus == std::vector<int>{3, 1});
  CHECK(o.drain_timeout == 3s);
  CHECK(o.lame_duck_grace == 2s);
  CHECK(o.advertise ==
        std::vector<std::string>{"tcp://10.0.0.2:7400", "tcp://keyway-b.example.com:7400",
                                 "tcp://[fd00::2]:7400", "unix:///run/keyway/keyway.sock"});
  CHECK(listen_urls(o) == std::vector<std::string>{"tcp://0.0.0.0:7500", "tcp://[::1]:0",
                                                   "unix:///tmp/keyway-a.sock"});
  CHECK(o.unix_socket_mode == 0600);
  REQUIRE(o.admin);
  CHECK(o.admin->to_string() == "tcp://127.0.0.1:9100");
  CHECK(o.partitioner == keyway::core::partition_strategy::range);
  CHECK(o.partition.slots == 1024);
  CHECK(o.partition.vnodes == 32);
  CHECK(o.partition.split_points == std::vector<std::string>{"g", "p"});
  CHECK(o.limits.max_payload == 4096);
  CHECK(o.limits.max_frame == keyway::proto::limits::with_max_payload(4096).max_frame);
  CHECK(o.max_connections == 10);
  CHECK(o.max_subscriptions == 20);
  CHECK(o.max_pending_bytes == 1048576);
  CHECK(o.slow_consumer == keyway::daemon::slow_consumer_policy::drop);
  CHECK(o.handshake_timeout == 250ms);
  CHECK(o.idle_timeout == 2min);
  CHECK(o.log_level == "debug");
  CHECK(o.log_fmt == keyway::daemon::log_format::json);
  CHECK(o.tokens_file == "/etc/keyway/tokens");
}

TEST_CASE("admin listen set to the empty string or off disables the admin listener") {
  CHECK_FALSE(parse_ok("[admin]\nlisten = \"\"\n").options->admin.has_value());
  CHECK_FALSE(parse_ok("[admin]\nlisten = \"off\"\n").options->admin.has_value());
  CHECK(parse_ok("[admin]\nlisten = \"127.0.0.1:0\"\n").options->admin.has_value());
}

TEST_CASE("cpus sets the worker count and must match an explicit one") {
  CHECK(parse_ok("[server]\ncpus = [0, 1, 2]\n").options->workers == 3);
  CHECK(parse_ok("[server]\nworkers = 0\ncpus = [4]\n").options->workers == 1);
  CHECK(problem_of("[server]\nworkers = 2\ncpus = [0, 1, 2]\n") ==
        "keyway.toml: server.workers = 2 but server.cpus lists 3 CPUs; list one CPU per worker, or "
        "leave "
        "workers out (it then defaults to the number of cpus)");
  CHECK(problem_of("[server]\ncpus = [0, 1, 0]\n") ==
        "keyway.toml: server.cpus[2] = 0 repeats CPU 0; each worker needs a CPU of its own");
  CHECK(problem_of("[server]\ncpus = [-1]\n") ==
        "keyway.toml: server.cpus[0] = -1 is out of range; allowed a CPU number, 0 or more");
}

TEST_CASE("listeners") {
  SUBCASE("unix only needs tcp emptied") {
    auto o = *parse_ok("[listen]\ntcp = []\nunix = [\"/run/k.sock\"]\n").options;
    CHECK(listen_urls(o) == std::vector<std::string>{"unix:///run/k.sock"});
    auto both = *parse_ok("[listen]\nunix = [\"/run/k.sock\"]\n").options;
    CHECK(listen_urls(both) ==
          std::vector<std::string>{"tcp://127.0.0.1:7400", "unix:///run/k.sock"});
  }
  SUBCASE("at least one listener") {
    CHECK(problem_of("[listen]\ntcp = []\n") ==
          "keyway.toml: listen.tcp and listen.unix are both empty; keywayd needs at least one "
          "listener, e.g. "
          "tcp = [\"127.0.0.1:7400\"]");
  }
  SUBCASE("socket mode as an octal string or a TOML octal") {
    CHECK(parse_ok("[listen]\nunix_socket_mode = \"0600\"\n").options->unix_socket_mode == 0600);
    CHECK(parse_ok("[listen]\nunix_socket_mode = \"0o640\"\n").options->unix_socket_mode == 0640);
    CHECK(parse_ok("[listen]\nunix_socket_mode = 0o666\n").options->unix_socket_mode == 0666);
    CHECK(parse_ok("[listen]\nunix_socket_mode = 384\n").options->unix_socket_mode == 0600);
    CHECK(problem_of("[listen]\nunix_socket_mode = 660\n") ==
          "keyway.toml: listen.unix_socket_mode = 660 is out of range; allowed 0..0777; write the "
          "mode in octal: "
          "\"0660\" or 0o660");
    CHECK(problem_of("[listen]\nunix_socket_mode = \"rw-rw----\"\n") ==
          "keyway.toml: listen.unix_socket_mode = \"rw-rw----\" is not an octal mode; write e.g. "
          "\"0660\"");
    CHECK(problem_of("[listen]\nunix_socket_mode = \"1777\"\n")
              .find("is out of range; allowed 0..0777") != std::string::npos);
  }
}

TEST_CASE("bad addresses are refused with the key and the reason") {
  CHECK(problem_of("[listen]\ntcp = [\"localhost\"]\n") ==
        "keyway.toml: listen.tcp[0] = \"localhost\" is not a valid address: missing :PORT; write "
        "HOST:PORT, e.g. "
        "\"127.0.0.1:7400\" or \"[::1]:7400\"");
  CHECK(problem_of("[listen]\ntcp = [\"127.0.0.1:7400\", \"localhost:7400\"]\n") ==
        "keyway.toml: listen.tcp[1] = \"localhost:7400\" is not a valid address: host "
        "\"localhost\" is not an IP "
        "address; keywayd does not resolve names, so write e.g. 127.0.0.1, 0.0.0.0 or [::1]");
  CHECK(problem_of("[listen]\ntcp = [\"127.0.0.1:70000\"]\n")
            .find("listen.tcp[0] = \"127.0.0.1:70000\" is not a valid address: the port must be a "
                  "number from 0 to 65535") != std::string::npos);
  CHECK(problem_of("[listen]\ntcp = [\"tcp://127.0.0.1:7400\"]\n") ==
        "keyway.toml: listen.tcp[0] = \"tcp://127.0.0.1:7400\" has a scheme; write HOST:PORT, e.g. "
        "\"127.0.0.1:7400\" or \"[::1]:7400\"");
  CHECK(problem_of("[listen]\ntcp = [\"127.0.0.1:7400\", \"127.0.0.1:7400\"]\n") ==
        "keyway.toml: listen.tcp[1] = \"127.0.0.1:7400\" is listed twice; each address can be "
        "bound once");
  CHECK(problem_of("[listen]\nunix = [\"relative.sock\"]\n") ==
        "keyway.toml: listen.unix[0] = \"relative.sock\" is not a valid path: the Unix socket path "
        "must be "
        "absolute; write an absolute path such as \"/run/keyway/keyway.sock\"");
  CHECK(problem_of("[admin]\nlisten = \"127.0.0.1\"\n")
            .starts_with(
                "keyway.toml: admin.listen = \"127.0.0.1\" is not a valid address: missing :PORT"));
  CHECK(problem_of("[admin]\nlisten = \"127.0.0.1:7400\"\n") ==
        "keyway.toml: admin.listen = \"127.0.0.1:7400\" is also in listen.tcp; give the admin "
        "listener a port of "
        "its own");
  // Port 0 never clashes: each bind picks its own port.
  CHECK(
      parse_ok(
          "[listen]\ntcp = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n")
          .ok());
}

TEST_CASE("unknown sections and keys are errors") {
  CHECK(problem_of("[server]\nwrokers = 4\n") ==
        "keyway.toml: unknown key server.wrokers; did you mean server.workers?");
  CHECK(problem_of("[limits]\nmax_frame = 4\n") ==
        "keyway.toml: unknown key limits.max_frame; the keys of [limits] are max_payload, "
        "max_connections, max_subscriptions, max_pattern_tokens, max_queue_group_members, "
        "max_pattern_shapes, "
        "max_subscription_bytes, max_total_subscription_bytes, max_pending_bytes, slow_consumer, "
        "slow_consumer_grace, handshake_timeout, idle_timeout");
  CHECK(problem_of("[servr]\nworkers = 4\n") ==
        "keyway.toml: unknown section [servr]; did you mean [server]?");
  CHECK(problem_of("[tls]\ncert = 3\n") ==
        "keyway.toml: unknown section [tls]; the sections are server, listen, admin, routing, "
        "limits, log, auth, cluster");
  CHECK(problem_of("workers = 4\n") ==
        "keyway.toml: unknown key workers outside any section; did you mean to put it under "
        "[server]?");
  CHECK(problem_of("[server.extra]\nx = 1\n") ==
        "keyway.toml: unknown key server.extra; the keys of [server] are workers, cpus, "
        "drain_timeout, lame_duck_grace, advertise");
  CHECK(problem_of("server = 1\n") ==
        "keyway.toml: server = 1 has the wrong type: expected a table: [server]");
}

TEST_CASE("wrong types are errors") {
  CHECK(problem_of("[server]\nworkers = \"two\"\n") ==
        "keyway.toml: server.workers = \"two\" has the wrong type: expected an integer");
  CHECK(problem_of("[server]\ncpus = 1\n") ==
        "keyway.toml: server.cpus = 1 has the wrong type: expected an array of CPU numbers such as "
        "[0, 1]");
  CHECK(problem_of("[listen]\ntcp = \"127.0.0.1:7400\"\n") ==
        "keyway.toml: listen.tcp = \"127.0.0.1:7400\" has the wrong type: expected an array of "
        "\"HOST:PORT\" "
        "strings");
  CHECK(problem_of("[listen]\ntcp = [7400]\n") ==
        "keyway.toml: listen.tcp[0] = 7400 has the wrong type: expected a string");
  CHECK(problem_of("[limits]\nmax_payload = 1.5\n") ==
        "keyway.toml: limits.max_payload = 1.5 has the wrong type: expected an integer");
  CHECK(problem_of("[limits]\nidle_timeout = true\n") ==
        "keyway.toml: limits.idle_timeout = true has the wrong type: expected a duration such as "
        "\"500ms\", "
        "\"5s\" or \"2m\", or an integer of milliseconds");
  CHECK(problem_of("[log]\nlevel = 3\n") ==
        "keyway.toml: log.level = 3 has the wrong type: expected a string");
  CHECK(problem_of("[auth]\ntokens_file = [\"a\"]\n") ==
        "keyway.toml: auth.tokens_file = [\"a\"] has the wrong type: expected a string");
  CHECK(problem_of("[routing]\nsplit_points = [\"a\", 2]\n") ==
        "keyway.toml: routing.split_points[1] = 2 has the wrong type: expected a string");
}

TEST_CASE("values out of range are errors") {
  CHECK(problem_of("[limits]\nmax_payload = 0\n") ==
        "keyway.toml: limits.max_payload = 0 is out of range; allowed 1..67108864 bytes (64 MiB)");
  CHECK(problem_of("[limits]\nmax_payload = 67108865\n").find("is out of range") !=
        std::string::npos);
  CHECK(parse_ok("[limits]\nmax_payload = 67108864\n").options->limits.max_payload == 67108864);
  CHECK(problem_of("[server]\nworkers = 1025\n") ==
        "keyway.toml: server.workers = 1025 is out of range; allowed 0..1024 (0 = one worker per "
        "CPU)");
  CHECK(problem_of("[server]\nworkers = -1\n").find("server.workers = -1 is out of range") !=
        std::string::npos);
  CHECK(
      problem_of("[limits]\nmax_connections = -1\n") ==
      "keyway.toml: limits.max_connections = -1 is out of range; allowed 0..1000000 (0 = from the "
      "file-descriptor limit)");
  CHECK(parse_ok("[limits]\nmax_connections = 0\n").options->max_connections == 0);
  CHECK(problem_of("[limits]\nmax_pattern_tokens = 129\n") ==
        "keyway.toml: limits.max_pattern_tokens = 129 is out of range; allowed 1..128");
  CHECK(problem_of("[limits]\nmax_queue_group_members = 4097\n") ==
        "keyway.toml: limits.max_queue_group_members = 4097 is out of range; allowed 1..4096 (a "
        "group's slot "
        "table has 4096 slots)");
  CHECK(problem_of("[limits]\nslow_consumer_grace = \"2h\"\n").find("limits.slow_consumer_grace") !=
        std::string::npos);
  CHECK(problem_of("[admin]\nmax_connections = 0\n") ==
        "keyway.toml: admin.max_connections = 0 is out of range; allowed 1..10000");
  CHECK(problem_of("[limits]\nmax_subscriptions = 1000001\n") ==
        "keyway.toml: limits.max_subscriptions = 1000001 is out of range; allowed 1..1000000 per "
        "connection");
  CHECK(problem_of("[limits]\nmax_pending_bytes = 65535\n") ==
        "keyway.toml: limits.max_pending_bytes = 65535 is out of range; allowed 65536..17179869184 "
        "bytes "
        "(64 KiB..16 GiB)");
  CHECK(parse_ok("[limits]\nmax_pending_bytes = 17179869184\n").options->max_pending_bytes ==
        16ull << 30);
  CHECK(problem_of("[limits]\nhandshake_timeout = \"0s\"\n") ==
        "keyway.toml: limits.handshake_timeout = \"0s\" is out of range; allowed 1ms..1h");
  CHECK(problem_of("[limits]\nidle_timeout = \"25h\"\n") ==
        "keyway.toml: limits.idle_timeout = \"25h\" is out of range; allowed 0..24h (0 = never)");
  CHECK(problem_of("[server]\ndrain_timeout = -5\n") ==
        "keyway.toml: server.drain_timeout = -5 is out of range; allowed 0..1h");
  CHECK(problem_of("[server]\ndrain_timeout = \"5 s\"\n") ==
        "keyway.toml: server.drain_timeout = \"5 s\" is not a duration; use a whole number and a "
        "unit, e.g. "
        "500ms, 5s, 2m or 1h (a bare number means milliseconds)");
  CHECK(
      problem_of("[limits]\nslow_consumer = \"block\"\n") ==
      "keyway.toml: limits.slow_consumer = \"block\" is not allowed; use one of disconnect, drop");
  CHECK(problem_of("[log]\nlevel = \"verbose\"\n") ==
        "keyway.toml: log.level = \"verbose\" is not allowed; use one of trace, debug, info, warn, "
        "error, "
        "critical, off");
  CHECK(problem_of("[log]\nformat = \"xml\"\n") ==
        "keyway.toml: log.format = \"xml\" is not allowed; use one of text, json");
}

TEST_CASE("routing rules") {
  CHECK(problem_of("[routing]\npartitioner = \"random\"\n") ==
        "keyway.toml: routing.partitioner = \"random\" is not allowed; use one of consistent, "
        "hash, round_robin, "
        "or range with routing.split_points");
  CHECK(problem_of("[routing]\npartitioner = \"range\"\n") ==
        "keyway.toml: routing.partitioner = \"range\" needs routing.split_points, e.g. "
        "split_points = [\"m\"] for "
        "two ranges; or use consistent");
  CHECK(problem_of("[routing]\nsplit_points = [\"m\"]\n") ==
        "keyway.toml: routing.split_points is set but routing.partitioner is \"consistent\"; split "
        "points apply "
        "only to partitioner = \"range\", so remove them or switch to range");
  CHECK(
      problem_of("[routing]\npartitioner = \"range\"\nsplit_points = [\"m\", \"c\"]\n")
          .starts_with(
              "keyway.toml: routing.split_points: range split point 1 (\"c\") is not greater than "
              "split point 0 (\"m\")"));
  CHECK(
      problem_of("[routing]\nslots = 1000\n")
          .starts_with("keyway.toml: routing.slots = 1000 is not a power of two in [2, 16777216]"));
  CHECK(problem_of("[routing]\nslots = -4\n")
            .starts_with("keyway.toml: routing.slots = -4 is not a power of two"));
  CHECK(problem_of("[routing]\nvnodes = 0\n") ==
        "keyway.toml: routing.vnodes = 0 is outside [1, 65536]; use e.g. 160");
  CHECK(parse_ok("[routing]\npartitioner = \"hash\"\n").options->partitioner ==
        keyway::core::partition_strategy::hash);
  CHECK(parse_ok("[routing]\npartitioner = \"round_robin\"\nsplit_points = []\n")
            .options->partitioner == keyway::core::partition_strategy::round_robin);
}

TEST_CASE("a syntax error names the file with its line and column") {
  auto p = problem_of("[server]\nworkers = 2\ndrain_timeout = = 5\n");
  CHECK(p.starts_with("keyway.toml:3:"));
  CHECK(p.find(": TOML syntax error: ") != std::string::npos);
  auto dup = problem_of("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
  CHECK(dup.starts_with("keyway.toml:3:"));
  CHECK(parse("x = ", "/etc/keyway/keyway.toml")
            .problems.at(0)
            .starts_with("/etc/keyway/keyway.toml:1:"));
}

TEST_CASE("several problems are reported together") {
  auto problems = problems_of(R"(
[server]
wrokers = 4
drain_timeout = "soon"
[listen]
tcp = ["localhost"]
[limits]
max_payload = 0
[log]
level = "loud"
[nope]
)");
  CHECK(problems.size() == 6);
  CHECK(contains(problems, "unknown key server.wrokers"));
  CHECK(contains(problems, "server.drain_timeout = \"soon\" is not a duration"));
  CHECK(contains(problems, "listen.tcp[0] = \"localhost\" is not a valid address"));
  CHECK(contains(problems, "limits.max_payload = 0 is out of range"));
  CHECK(contains(problems, "log.level = \"loud\" is not allowed"));
  CHECK(contains(problems, "unknown section [nope]"));
  const auto joined = load_result{std::nullopt, problems}.joined();
  CHECK(std::count(joined.begin(), joined.end(), '\n') == 5);
  CHECK_FALSE(joined.ends_with("\n"));
}

TEST_CASE("values are shown escaped") {
  CHECK(problem_of("[log]\nlevel = \"a\\\"b\\n\"\n") ==
        "keyway.toml: log.level = \"a\\\"b\\u000a\" is not allowed; use one of trace, debug, info, "
        "warn, error, "
        "critical, off");
}

TEST_CASE("a TOML syntax error is one problem on one line") {
  // Found by fuzz_config: toml++ quotes the offending text, newline included.
  auto r = keyway::config::parse("q=i\n", "keyway.toml");
  REQUIRE(r.problems.size() == 1);
  INFO(r.problems[0]);
  CHECK(r.problems[0].starts_with("keyway.toml:1:"));
  CHECK(r.problems[0].find('\n') == std::string::npos);
  CHECK(r.problems[0].find('\r') == std::string::npos);
}

TEST_CASE("a value shown in a problem is kept on one line") {
  // Found by fuzz_config: an array of tables where a table is expected is
  // printed by toml++ over several lines.
  auto r = keyway::config::parse("[[auth]]\ntcp = [\"127.0.0.1:0\"]\n[[log]]\nlisten = \"\"\n",
                                 "keyway.toml");
  REQUIRE_FALSE(r.problems.empty());
  for (const auto& p : r.problems) {
    INFO(p);
    CHECK(p.find('\n') == std::string::npos);
  }
}

TEST_CASE("server.lame_duck_grace is a duration of 0..1h") {
  CHECK(parse_ok("[server]\nlame_duck_grace = 0\n").options->lame_duck_grace == 0ms);
  CHECK(parse_ok("[server]\nlame_duck_grace = \"30s\"\n").options->lame_duck_grace == 30s);
  CHECK(problem_of("[server]\nlame_duck_grace = \"2h\"\n") ==
        "keyway.toml: server.lame_duck_grace = \"2h\" is out of range; allowed 0..1h");
  CHECK(problem_of("[server]\nlame_duck_grace = \"soon\"\n") ==
        "keyway.toml: server.lame_duck_grace = \"soon\" is not a duration; use a whole number and "
        "a unit, e.g. "
        "500ms, 5s, 2m or 1h (a bare number means milliseconds)");
}

TEST_CASE("server.advertise takes client URLs and names the bad one, its value and the rule") {
  CHECK(parse_ok("[server]\nadvertise = []\n").options->advertise.empty());
  CHECK(parse_ok("[server]\nadvertise = [\"tcp://127.0.0.1:7400\", \"tcp://a-b.c1:1\", "
                 "\"tcp://[::1]:65535\"]\n")
            .options->advertise.size() == 3);
  const std::string rule =
      "; write tcp://HOST:PORT (HOST a name, an IP address or [IPv6], PORT 1..65535) or "
      "unix:///absolute/path";
  const auto bad = [](std::string_view value) {
    return problem_of("[server]\nadvertise = [\"tcp://10.0.0.1:7400\", \"" + std::string(value) +
                      "\"]\n");
  };
  CHECK(bad("http://10.0.0.2:7400") ==
        "keyway.toml: server.advertise[1] = \"http://10.0.0.2:7400\" is not a client URL: unknown "
        "scheme" +
            rule);
  CHECK(bad("tcp://10.0.0.2") ==
        "keyway.toml: server.advertise[1] = \"tcp://10.0.0.2\" is not a client URL: missing :PORT" +
            rule);
  CHECK(bad("tcp://10.0.0.2:70000") ==
        "keyway.toml: server.advertise[1] = \"tcp://10.0.0.2:70000\" is not a client "
        "URL: the port must be a number from 1 to 65535" +
            rule);
  CHECK(bad("tcp://10.0.0.2:0") ==
        "keyway.toml: server.advertise[1] = \"tcp://10.0.0.2:0\" is not a client URL: port 0 "
        "cannot be advertised (it "
        "binds any free port); give the port clients connect to" +
            rule);
  CHECK(bad("tcp://:7400") ==
        "keyway.toml: server.advertise[1] = \"tcp://:7400\" is not a client URL: missing host" +
            rule);
  CHECK(bad("tcp://bad_host:7400") ==
        "keyway.toml: server.advertise[1] = \"tcp://bad_host:7400\" is not a client URL: host "
        "\"bad_host\" is neither "
        "an IP address nor a host name (letters, digits, '-' and '.')" +
            rule);
  CHECK(bad("tcp://-a.b:7400").find("is neither an IP address nor a host name") !=
        std::string::npos);
  CHECK(bad("tcp://a..b:7400").find("is neither an IP address nor a host name") !=
        std::string::npos);
  CHECK(bad("tcp://" + std::string(64, 'a') + ".b:7400").find("nor a host name") !=
        std::string::npos);
  CHECK(bad("tcp://::1:7400") ==
        "keyway.toml: server.advertise[1] = \"tcp://::1:7400\" is not a client URL: an IPv6 "
        "host must be in brackets, e.g. tcp://[::1]:7400" +
            rule);
  CHECK(bad("tcp://[nope]:7400") ==
        "keyway.toml: server.advertise[1] = \"tcp://[nope]:7400\" is not a client URL: host [nope] "
        "is not an IPv6 "
        "address" +
            rule);
  CHECK(bad("unix://run/keyway.sock") ==
        "keyway.toml: server.advertise[1] = \"unix://run/keyway.sock\" is not a client URL: the "
        "Unix socket path must "
        "be absolute" +
            rule);
  CHECK(bad("tcp://10.0.0.1:7400") ==
        "keyway.toml: server.advertise[1] = \"tcp://10.0.0.1:7400\" is listed twice; list each URL "
        "once");
  CHECK(problem_of("[server]\nadvertise = \"tcp://10.0.0.2:7400\"\n") ==
        "keyway.toml: server.advertise = \"tcp://10.0.0.2:7400\" has the wrong type: expected an "
        "array of client URLs "
        "such as [\"tcp://10.0.0.2:7400\", \"unix:///run/keyway/keyway.sock\"]");
  CHECK(problem_of("[server]\nadvertise = [7400]\n") ==
        "keyway.toml: server.advertise[0] = 7400 has the wrong type: expected a string");
  std::string many = "[server]\nadvertise = [";
  for (int i = 0; i < 257; ++i)
    many += (i ? ", " : "") + std::string("\"tcp://h") + std::to_string(i) + ":1\"";
  CHECK(problem_of(many + "]\n") ==
        "keyway.toml: server.advertise lists 257 URLs; at most 256 are announced in a welcome");
  // Every bad entry is reported, and nothing is taken from a refused list.
  const auto problems =
      problems_of("[server]\nadvertise = [\"tcp://x\", \"unix://y\", \"tcp://ok:1\"]\n");
  CHECK(problems.size() == 2);
}

TEST_CASE("[cluster]: absent means a single node, and present, its keys default") {
  CHECK_FALSE(parse_ok("[server]\nworkers = 1\n").options->cluster.has_value());
  const auto r = parse_ok("[cluster]\n");
  REQUIRE(r.options->cluster.has_value());
  const auto& c = *r.options->cluster;
  CHECK(c.name == "keyway");
  CHECK(c.node_id.empty());
  CHECK(c.peer_listen.to_string() == "tcp://127.0.0.1:7402");
  CHECK(c.advertise.empty());
  CHECK(c.peer_advertise.empty());
  CHECK(c.etcd_endpoints == std::vector<std::string>{"http://127.0.0.1:2379"});
  CHECK(c.lease_ttl == 3s);

  const auto set = parse_ok(R"([cluster]
name = "blue"
node_id = "n-1.a_b"
peer_listen = "tcp://[::1]:0"
peer_advertise = "tcp://[::1]:7402"
advertise = "tcp://kw1.example:7400"
etcd_endpoints = ["http://127.0.0.1:2379", "http://[::1]:2379", "http://etcd-2:2379"]
lease_ttl = "2s"
)");
  const auto& d = *set.options->cluster;
  CHECK(d.name == "blue");
  CHECK(d.node_id == "n-1.a_b");
  CHECK(d.peer_listen.to_string() == "tcp://[::1]:0");
  CHECK(d.advertise == "tcp://kw1.example:7400");
  CHECK(d.peer_advertise == "tcp://[::1]:7402");
  CHECK(d.etcd_endpoints.size() == 3);
  CHECK(d.lease_ttl == 2s);
}

TEST_CASE("[cluster]: bad values are refused with the key, the value and the rule") {
  auto has = [](const std::string& problem, std::initializer_list<std::string_view> parts) {
    INFO(problem);
    for (auto part : parts) CHECK(problem.find(part) != std::string::npos);
  };
  has(problem_of("[cluster]\nname = \"\"\n"), {"cluster.name", "0 bytes", "1..64"});
  has(problem_of("[cluster]\nnode_id = \"a/b\"\n"), {"cluster.node_id", "\"/\"", "letters"});
  has(problem_of("[cluster]\npeer_listen = \"unix:///tmp/p.sock\"\n"),
      {"cluster.peer_listen", "Unix path", "TCP"});
  has(problem_of("[cluster]\npeer_listen = \"tcp://peer.example:7402\"\n"),
      {"cluster.peer_listen", "not an IP address"});
  has(problem_of("[listen]\ntcp = [\"127.0.0.1:7500\"]\n[cluster]\npeer_listen = "
                 "\"tcp://127.0.0.1:7500\"\n"),
      {"cluster.peer_listen", "client listener"});
  has(problem_of("[admin]\nlisten = \"127.0.0.1:7501\"\n[cluster]\npeer_listen = "
                 "\"tcp://127.0.0.1:7501\"\n"),
      {"cluster.peer_listen", "admin listener"});
  has(problem_of("[cluster]\nadvertise = \"tcp://10.0.0.1:0\"\n"), {"cluster.advertise", "port 0"});
  has(problem_of("[cluster]\npeer_advertise = \"tcp://peer.example:7402\"\n"),
      {"cluster.peer_advertise", "IP address"});
  has(problem_of("[cluster]\npeer_advertise = \"tcp://0.0.0.0:7402\"\n"),
      {"cluster.peer_advertise", "wildcard"});
  has(problem_of("[cluster]\npeer_advertise = \"tcp://10.0.0.1:0\"\n"),
      {"cluster.peer_advertise", "port 0"});
  has(problem_of("[cluster]\netcd_endpoints = []\n"),
      {"cluster.etcd_endpoints", "0 URLs", "1..16"});
  has(problem_of("[cluster]\netcd_endpoints = [\"https://127.0.0.1:2379\"]\n"),
      {"cluster.etcd_endpoints[0]", "TLS"});
  has(problem_of("[cluster]\netcd_endpoints = [\"127.0.0.1:2379\"]\n"),
      {"cluster.etcd_endpoints[0]", "http://"});
  has(problem_of("[cluster]\netcd_endpoints = [\"http://127.0.0.1:99999\"]\n"),
      {"cluster.etcd_endpoints[0]", "1 to 65535"});
  has(problem_of("[cluster]\netcd_endpoints = [\"http://a:1\", \"http://a:1\"]\n"),
      {"cluster.etcd_endpoints[1]", "twice"});
  has(problem_of("[cluster]\nlease_ttl = \"1s\"\n"), {"cluster.lease_ttl", "2s..10m"});
  has(problem_of("[cluster]\nnodes = 3\n"), {"unknown key cluster.nodes"});
}

TEST_CASE("[cluster]: joining or leaving a cluster takes a restart") {
  const auto single = parse_ok("");
  const auto node = parse_ok("[cluster]\n");
  CHECK(keyway::config::restart_keys_changed(*single.options, *node.options) ==
        std::vector<std::string>{"cluster"});
  CHECK(keyway::config::restart_keys_changed(*node.options, *single.options) ==
        std::vector<std::string>{"cluster"});
  CHECK(keyway::config::restart_keys_changed(*node.options, *node.options).empty());
}
