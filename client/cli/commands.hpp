// The keyway CLI's subcommands (pub, sub, req, reply), each a function from
// parsed options to an exit code. They run on the main thread; message
// handlers run on the client's IO thread and hand results back through
// atomics and a condition variable. Messages for users go to stderr, data to
// stdout.
//
// Exit codes: 0 success; 1 error (connection, server error, publish refused);
// 2 usage; 3 request timed out; 4 no responders.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace keyway::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_error = 1;
inline constexpr int exit_usage = 2;
inline constexpr int exit_timeout = 3;
inline constexpr int exit_no_responders = 4;

struct global_options {
  std::string server;  // --server, KEYWAY_URL, or the default URL
  std::string client_name = "keyway-cli";
  std::string auth_token;  // --token or KEYWAY_TOKEN
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
};

struct reply_options {
  std::string pattern;
  std::string queue;
  std::uint64_t count = 0;  // 0: until interrupted
  std::string payload;
  bool payload_given = false;  // else echo the request's payload
};

int run_pub(const global_options& g, pub_options o);
int run_sub(const global_options& g, const sub_options& o);
int run_req(const global_options& g, req_options o);
int run_reply(const global_options& g, const reply_options& o);

/// Installs SIGINT/SIGTERM handlers that make sub and reply stop cleanly.
void install_stop_signals();

}  // namespace keyway::cli
