// The keyway CLI's subcommands (pub, sub, req, reply, version; bench is in
// bench.hpp), each a function from parsed options to an exit code, and the
// helpers they share. They run on the main thread; message handlers run on
// the client's IO thread and hand results back through atomics and a
// condition variable. Messages for users go to stderr ("keyway: ..."), data
// to stdout.
//
// Reconnect: pub, sub and reply ride through server restarts with the
// library's reconnect (every server of the --server list, for ever), printing
// a line on stderr when the link drops and when it is back; --no-reconnect
// makes a lost link fatal (exit 1).
//
// Exit codes: 0 success; 1 error (connection, server error, publish refused
// or possibly lost, bench shortfall); 2 usage; 3 request timed out; 4 no
// responders.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <keyway/client.hpp>

namespace keyway::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_error = 1;
inline constexpr int exit_usage = 2;
inline constexpr int exit_timeout = 3;
inline constexpr int exit_no_responders = 4;

struct global_options {
  std::string server;  // --server, KEYWAY_URL, or the default URL; a comma-separated list
  std::string client_name = "keyway-cli";
  std::string auth_token;  // --token or KEYWAY_TOKEN
  bool reconnect = true;   // false: --no-reconnect
};

struct pub_options {
  std::string subject;
  std::string payload;  // "-": read stdin
  std::string key;
  std::uint64_t count = 1;
  bool count_given = false;  // {i} templating only with --count
  bool ack = false;
  std::vector<std::string> headers;  // NAME=VALUE
  std::string reply_to;
  /// How long one publish refused with buffer_full (the link is down and the
  /// reconnect buffer full) is retried before pub gives up.
  std::chrono::milliseconds buffer_wait{60000};
  bool json = false;
};

struct sub_options {
  std::string pattern;
  std::string queue;
  std::uint64_t count = 0;  // 0: until interrupted
  bool json = false;
};

struct req_options {
  std::string subject;
  std::string payload;
  std::string key;
  std::chrono::milliseconds timeout{2000};
  std::vector<std::string> headers;
  bool json = false;
};

struct reply_options {
  std::string pattern;
  std::string queue;
  std::uint64_t count = 0;  // 0: until interrupted
  std::string payload;
  bool payload_given = false;  // else echo the request's payload
  bool json = false;
};

int run_pub(const global_options& g, pub_options o);
int run_sub(const global_options& g, const sub_options& o);
int run_req(const global_options& g, req_options o);
int run_reply(const global_options& g, const reply_options& o);
/// "keyway 0.1.0", or {"version":"0.1.0"} with json.
int run_version(bool json);

/// Installs SIGINT/SIGTERM handlers that make sub and reply stop cleanly.
void install_stop_signals();

// ---- shared by the subcommands ------------------------------------------------

/// Writes "keyway: <text>" and a newline to stderr, flushed.
void say(const std::string& text);
/// What a user reads for a failed call: the message, or the code's name.
std::string describe(const client::error& e);
/// The options every connection of the CLI starts from: name, token, and
/// reconnect as --no-reconnect says.
client::connect_options base_options(const global_options& g);

}  // namespace keyway::cli
