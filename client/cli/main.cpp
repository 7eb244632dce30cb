// keyway: the command-line client. Parses the command line (CLI11) and runs
// one subcommand: pub, sub, req, reply, bench or version
// (client/cli/commands.hpp, client/cli/bench.hpp). The server URL — or a
// comma-separated list of them — comes from --server, else $KEYWAY_URL, else
// tcp://127.0.0.1:7400. docs/cli.md is the reference.
//
// Numbers and durations are taken as text and checked here, after parsing,
// so that every problem is one line that names the flag ("--timeout: '5' has
// no unit; use e.g. 5ms, 5s, 1m"), with exit code 2.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <optional>

#include "client/cli/bench.hpp"
#include "client/cli/commands.hpp"
#include "client/cli/format.hpp"
#include "client/url.hpp"

namespace {

using namespace keyway::cli;

constexpr const char* command_list = "pub, sub, req, reply, bench, version";

std::string env_or(const char* name, std::string_view fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(fallback);
}

bool is_command(std::string_view a) {
  return a == "pub" || a == "sub" || a == "req" || a == "reply" || a == "bench" || a == "version";
}

/// Before CLI11 sees the command line: an unknown command gets one line that
/// names the valid ones (CLI11 would only say the argument was not expected),
/// and so does a missing one. Returns the exit code when it printed.
std::optional<int> check_command(int argc, char** argv) {
  bool help_or_version = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--") {
      if (i + 1 < argc && !is_command(argv[i + 1])) break;
      return std::nullopt;
    }
    if (a.starts_with("-")) {
      if (a == "-h" || a == "--help" || a == "--version") help_or_version = true;
      if (a == "-s" || a == "--server" || a == "--name" || a == "--token") ++i;  // its value
      continue;
    }
    if (is_command(a)) return std::nullopt;
    std::fprintf(stderr, "keyway: unknown command '%.*s'; commands: %s\n",
                 static_cast<int>(a.size()), a.data(), command_list);
    return exit_usage;
  }
  if (help_or_version) return std::nullopt;
  std::fprintf(stderr, "keyway: no command given; commands: %s (keyway --help tells more)\n",
               command_list);
  return exit_usage;
}

/// Collects the problems of the flags given as text; each is one line.
class flag_checker {
 public:
  void duration(const char* flag, const std::string& text, std::chrono::milliseconds& out) {
    std::string problem;
    if (auto d = parse_duration_flag(flag, text, problem))
      out = *d;
    else
      problems_.push_back(problem);
  }
  /// Only when the option was given (`opt->count() > 0`).
  void count(const CLI::Option* opt, const char* flag, const std::string& text, std::uint64_t min,
             std::uint64_t& out, const char* hint = nullptr) {
    if (opt->count() == 0) return;
    std::string problem;
    if (auto n = parse_count_flag(flag, text, min, problem)) {
      out = *n;
    } else {
      if (hint != nullptr && problem.find("at least") != std::string::npos)
        problem += std::string("; ") + hint;
      problems_.push_back(problem);
    }
  }
  /// Prints the first problem; true if there was one.
  bool failed() const {
    if (problems_.empty()) return false;
    std::fprintf(stderr, "keyway: %s\n", problems_.front().c_str());
    return true;
  }

 private:
  std::vector<std::string> problems_;
};

}  // namespace

int main(int argc, char** argv) {
  if (auto rc = check_command(argc, argv)) return *rc;

  CLI::App app{"keyway: publish, subscribe, make requests and measure keywayd"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may come after the subcommand
  app.set_version_flag("--version", "keyway " + std::string(keyway::client::version()),
                       "print the version and exit");

  global_options g;
  g.server = env_or("KEYWAY_URL", keyway::client::default_url);
  g.auth_token = env_or("KEYWAY_TOKEN", "");
  bool no_reconnect = false;
  app.add_option("-s,--server", g.server,
                 "tcp://HOST:PORT or unix:///path, or several separated by commas (env KEYWAY_URL)")
      ->capture_default_str();
  app.add_option("--name", g.client_name, "client name the server logs")->capture_default_str();
  app.add_option("--token", g.auth_token, "auth token (env KEYWAY_TOKEN)");
  app.add_flag("--no-reconnect", no_reconnect,
               "exit (code 1) when the connection drops, instead of reconnecting");

  flag_checker check;

  pub_options po;
  std::string pub_count, buffer_wait = "1m";
  auto* pub = app.add_subcommand("pub", "publish messages");
  pub->add_option("subject", po.subject, "literal subject, e.g. orders.eu")->required();
  pub->add_option("payload", po.payload,
                  "payload; '-' reads it from stdin; {i} is the index with --count");
  pub->add_option("-k,--key", po.key, "routing key; {i} is the index with --count");
  auto* pub_count_opt =
      pub->add_option("-n,--count", pub_count, "publish N messages (N >= 1)")->type_name("N");
  pub->add_flag("--ack", po.ack,
                "wait for the server's ack of each message (pipelined) and report deliveries");
  pub->add_option("-H,--header", po.headers, "header NAME=VALUE (repeatable)");
  pub->add_option("--reply-to", po.reply_to, "reply_to subject");
  pub->add_option("--buffer-wait", buffer_wait,
                  "while disconnected with the reconnect buffer full, how long one publish waits "
                  "for the connection to come back")
      ->type_name("DURATION")
      ->capture_default_str();
  pub->add_flag("--json", po.json, "print a JSON summary on stdout");

  sub_options so;
  std::string sub_count;
  auto* sub = app.add_subcommand("sub", "subscribe and print messages");
  sub->add_option("pattern", so.pattern, "subject pattern; * matches a token, a final > the rest")
      ->required();
  sub->add_option("-q,--queue", so.queue, "queue group");
  auto* sub_count_opt =
      sub->add_option("-n,--count", sub_count, "exit after N messages (N >= 1)")->type_name("N");
  sub->add_flag("--json", so.json, "one JSON object per message");

  req_options ro;
  std::string req_timeout = "2s";
  auto* req = app.add_subcommand("req", "send a request and print the reply");
  req->add_option("subject", ro.subject, "literal subject")->required();
  req->add_option("payload", ro.payload, "payload; '-' reads it from stdin");
  req->add_option("-k,--key", ro.key, "routing key");
  req->add_option("-t,--timeout", req_timeout, "how long to wait for the reply, e.g. 500ms or 2s")
      ->type_name("DURATION")
      ->capture_default_str();
  req->add_option("-H,--header", ro.headers, "header NAME=VALUE (repeatable)");
  req->add_flag("--json", ro.json, "print the reply as a JSON object");

  reply_options yo;
  std::string reply_count;
  auto* reply = app.add_subcommand("reply", "answer requests");
  reply->add_option("pattern", yo.pattern, "subject pattern")->required();
  auto* reply_payload_opt = reply->add_option(
      "payload", yo.payload, "the answer; without it the request's payload is echoed");
  reply->add_option("-q,--queue", yo.queue, "queue group");
  auto* reply_count_opt =
      reply->add_option("-n,--count", reply_count, "exit after answering N requests (N >= 1)")
          ->type_name("N");
  reply->add_flag("--json", yo.json, "one JSON object per request answered");

  bench_options bo;
  std::string bench_msgs, bench_size, bench_pub, bench_sub, bench_keys, bench_timeout = "10s";
  auto* bench = app.add_subcommand("bench", "measure throughput and latency");
  bench->add_option("mode", bo.mode, "pub, sub, queue or request")->required();
  auto* bench_msgs_opt =
      bench->add_option("--msgs", bench_msgs, "messages (requests) in all (default 100000)")
          ->type_name("N");
  auto* bench_size_opt =
      bench->add_option("--size", bench_size, "payload bytes (default 128)")->type_name("BYTES");
  auto* bench_pub_opt =
      bench->add_option("--pub", bench_pub, "publishers, or requesters (default 1)")
          ->type_name("N");
  auto* bench_sub_opt = bench
                            ->add_option("--sub", bench_sub,
                                         "subscribers, or responders (default 1; not in pub mode)")
                            ->type_name("N");
  auto* bench_keys_opt =
      bench
          ->add_option("--key-space", bench_keys,
                       "keys cycle over K distinct keys; 0 = no key (default 64)")
          ->type_name("K");
  bench->add_option("--subject", bo.subject, "subject (default bench.<pid>)");
  bench->add_flag("--ack", bo.ack, "acknowledged publishes, with latency (pub, sub, queue)");
  bench
      ->add_option("--timeout", bench_timeout,
                   "how long subscribers may take to receive everything once the publishers are "
                   "done; each request's timeout")
      ->type_name("DURATION")
      ->capture_default_str();
  bench->add_flag("--json", bo.json, "print the results as one JSON object");

  bool version_json = false;
  auto* version = app.add_subcommand("version", "print the version");
  version->add_flag("--json", version_json, "as {\"version\":\"...\"}");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? exit_ok : exit_usage;
  }

  if (*version) return run_version(version_json);

  g.reconnect = !no_reconnect;
  if (auto urls = keyway::client::parse_url_list(g.server); !urls) {
    std::fprintf(stderr, "keyway: %s\n", urls.error().message.c_str());
    return exit_usage;
  }

  if (*pub) {
    check.count(pub_count_opt, "--count", pub_count, 1, po.count, "leave it out to publish once");
    check.duration("--buffer-wait", buffer_wait, po.buffer_wait);
    if (check.failed()) return exit_usage;
    po.count_given = pub_count_opt->count() > 0;
    return run_pub(g, std::move(po));
  }
  if (*sub) {
    check.count(sub_count_opt, "--count", sub_count, 1, so.count,
                "leave it out to receive until interrupted");
    if (check.failed()) return exit_usage;
    return run_sub(g, so);
  }
  if (*req) {
    check.duration("--timeout", req_timeout, ro.timeout);
    if (check.failed()) return exit_usage;
    return run_req(g, std::move(ro));
  }
  if (*reply) {
    check.count(reply_count_opt, "--count", reply_count, 1, yo.count,
                "leave it out to answer until interrupted");
    if (check.failed()) return exit_usage;
    yo.payload_given = reply_payload_opt->count() > 0;
    return run_reply(g, yo);
  }
  check.count(bench_msgs_opt, "--msgs", bench_msgs, 1, bo.msgs);
  check.count(bench_size_opt, "--size", bench_size, 0, bo.size);
  check.count(bench_pub_opt, "--pub", bench_pub, 1, bo.publishers);
  check.count(bench_sub_opt, "--sub", bench_sub, 1, bo.subscribers);
  check.count(bench_keys_opt, "--key-space", bench_keys, 0, bo.key_space);
  check.duration("--timeout", bench_timeout, bo.timeout);
  if (check.failed()) return exit_usage;
  bo.subscribers_given = bench_sub_opt->count() > 0;
  return run_bench(g, bo);
}
