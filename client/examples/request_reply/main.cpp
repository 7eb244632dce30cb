// request_reply: a responder and a requester, two connections in one program
// (in real life, two services). The responder answers every request on
// greet.hello with connection::respond; the requester sends requests with
// connection::request and prints each reply. Exit 0 if every reply is right.
// Usage: request_reply [URL]   (default: $KEYWAY_URL, else tcp://127.0.0.1:7400)
#include <keyway/client.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace kc = keyway::client;
using namespace std::chrono_literals;

static int fail(const char* what, const kc::error& e) {
  std::fprintf(stderr, "request_reply: %s failed: %s\n", what, e.to_string().c_str());
  return 1;
}

int main(int argc, char** argv) {
  const char* env = std::getenv("KEYWAY_URL");
  const std::string url = argc > 1 ? argv[1] : env != nullptr ? env : "tcp://127.0.0.1:7400";

  // The responder: its handler runs on the IO thread, where respond() is fine
  // (blocking calls are not: they return errc::would_block there).
  auto responder = kc::connect(url);
  if (!responder) return fail("connect", responder.error());
  kc::connection& service = **responder;
  auto sub = service.subscribe("greet.hello", [&service](const kc::message& request) {
    if (auto r = service.respond(request, "hello, " + request.payload); !r)
      std::fprintf(stderr, "request_reply: respond failed: %s\n", r.error().to_string().c_str());
  });
  if (!sub) return fail("subscribe", sub.error());

  // The requester.
  auto requester = kc::connect(url);
  if (!requester) return fail("connect", requester.error());
  kc::connection& client = **requester;
  for (const std::string name : {"alice", "bob"}) {
    auto reply = client.request("greet.hello", name, 2s);
    if (!reply) return fail("request", reply.error());
    std::printf("request %s -> reply: %s\n", name.c_str(), reply->payload.c_str());
    if (reply->payload != "hello, " + name) {
      std::fprintf(stderr, "request_reply: unexpected reply '%s'\n", reply->payload.c_str());
      return 1;
    }
  }

  // Nobody subscribes to greet.nobody: the server says so at once.
  auto none = client.request("greet.nobody", "x", 2s);
  if (none || none.error().code != kc::server_errc::no_responders) {
    std::fprintf(stderr, "request_reply: expected no_responders for greet.nobody\n");
    return 1;
  }
  std::printf("request greet.nobody -> %s\n", none.error().to_string().c_str());
  return 0;
}
