// keyway: the command-line client. Parses the command line (CLI11) and runs
// one subcommand: pub, sub, req or reply (client/cli/commands.hpp). The server
// URL comes from --server, else $KEYWAY_URL, else tcp://127.0.0.1:7400.
#include <CLI/CLI.hpp>

#include <cstdlib>

#include "client/cli/commands.hpp"
#include "client/cli/format.hpp"
#include "client/url.hpp"

namespace {

std::string env_or(const char* name, std::string_view fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(fallback);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace keyway::cli;
  CLI::App app{"keyway: publish, subscribe and make requests through keywayd"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may come after the subcommand

  global_options g;
  g.server = env_or("KEYWAY_URL", keyway::client::default_url);
  g.auth_token = env_or("KEYWAY_TOKEN", "");
  app.add_option("-s,--server", g.server, "tcp://HOST:PORT or unix:///path (env KEYWAY_URL)")
      ->capture_default_str();
  app.add_option("--name", g.client_name, "client name the server logs")->capture_default_str();
  app.add_option("--token", g.auth_token, "auth token (env KEYWAY_TOKEN)");

  pub_options po;
  auto* pub = app.add_subcommand("pub", "publish messages");
  pub->add_option("subject", po.subject, "literal subject, e.g. orders.eu")->required();
  pub->add_option("payload", po.payload,
                  "payload; '-' reads it from stdin; {i} is the index with --count");
  pub->add_option("-k,--key", po.key, "routing key; {i} is the index with --count");
  auto* count_opt =
      pub->add_option("-n,--count", po.count, "publish N messages")->check(CLI::PositiveNumber);
  pub->add_flag("--ack", po.ack,
                "wait for the server's ack of each message (pipelined) and report deliveries");
  pub->add_option("-H,--header", po.headers, "header NAME=VALUE (repeatable)");
  pub->add_option("--reply-to", po.reply_to, "reply_to subject");

  sub_options so;
  auto* sub = app.add_subcommand("sub", "subscribe and print messages");
  sub->add_option("pattern", so.pattern, "subject pattern; * matches a token, a final > the rest")
      ->required();
  sub->add_option("-q,--queue", so.queue, "queue group");
  sub->add_option("-n,--count", so.count, "exit after N messages")->check(CLI::PositiveNumber);
  sub->add_flag("--json", so.json, "one JSON object per line");

  req_options ro;
  std::string timeout = "2s";
  auto* req = app.add_subcommand("req", "send a request and print the reply");
  req->add_option("subject", ro.subject, "literal subject")->required();
  req->add_option("payload", ro.payload, "payload; '-' reads it from stdin");
  req->add_option("-k,--key", ro.key, "routing key");
  req->add_option("-t,--timeout", timeout, "how long to wait for the reply, e.g. 500ms or 2s")
      ->capture_default_str();
  req->add_option("-H,--header", ro.headers, "header NAME=VALUE (repeatable)");

  reply_options yo;
  auto* reply = app.add_subcommand("reply", "answer requests");
  reply->add_option("pattern", yo.pattern, "subject pattern")->required();
  reply->add_option("payload", yo.payload,
                    "the answer; without it the request's payload is echoed");
  reply->add_option("-q,--queue", yo.queue, "queue group");
  reply->add_option("-n,--count", yo.count, "exit after answering N requests")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? exit_ok : exit_usage;
  }

  if (auto url = keyway::client::parse_url(g.server); !url) {
    std::fprintf(stderr, "keyway: %s\n", url.error().message.c_str());
    return exit_usage;
  }
  if (*pub) {
    po.count_given = count_opt->count() > 0;
    return run_pub(g, std::move(po));
  }
  if (*sub) return run_sub(g, so);
  if (*req) {
    auto d = parse_duration(timeout);
    if (!d) {
      std::fprintf(stderr, "keyway: --timeout '%s' is not a duration; use e.g. 500ms, 2s or 1m\n",
                   timeout.c_str());
      return exit_usage;
    }
    ro.timeout = *d;
    return run_req(g, std::move(ro));
  }
  yo.payload_given = reply->get_option("payload")->count() > 0;
  return run_reply(g, yo);
}
