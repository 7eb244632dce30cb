// etcd: a client for etcd 3.4's v3 API, spoken through its JSON gateway
// (grpc-gateway) over plain HTTP with libcurl: leases, the key-value calls
// cluster membership needs (create-if-absent, compare-and-put, prefix range)
// and a streaming watch on a prefix.
//
// Threads: an etcd_client or an etcd_watch belongs to one thread at a time
// (the cluster control thread); calls block. Nothing here is shared between
// instances but libcurl's global state, initialised once.
//
// Cost: every unary call is one HTTP/1.1 POST (a JSON body, base64 keys and
// values) on a connection kept alive across calls, so a round trip to etcd
// plus one Raft commit for writes. A watch holds one long-lived HTTP stream;
// next() parses what arrived and waits in curl_multi_poll, never spinning.
//
// Addresses: only the endpoints given ("http://HOST:PORT") are ever contacted:
// no proxy from the environment, no redirects, HTTP only.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <keyway/result.hpp>

namespace keyway::cluster {

/// One key as etcd stores it. Revisions are etcd's store revisions.
struct kv {
  std::string key, value;
  std::int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

struct range_result {
  std::vector<kv> kvs;
  std::int64_t revision = 0;  // the store's revision at the read
};

struct create_result {
  bool created = false;
  std::int64_t revision = 0;   // the store's revision after the txn
  std::optional<kv> existing;  // the key's current kv when not created
};

struct watch_event {
  enum class kind { put, del } type;
  kv item;  // for del only item.key and item.mod_revision (the deletion's revision)
};

/// Unary calls, blocking, one thread at a time.
class etcd_client {
 public:
  /// endpoints: "http://HOST:PORT" each (anything else throws
  /// std::invalid_argument naming it). Each call tries the endpoints in turn,
  /// starting from the last one that answered, each with `timeout`; an error
  /// names every endpoint tried and why (connection refused, timeout, HTTP
  /// status and etcd's error message). An answer from etcd that is an error
  /// (a lease not found, a bad request) is returned at once, without trying
  /// the other endpoints; "unavailable" (no leader) moves on to the next one.
  etcd_client(std::vector<std::string> endpoints, std::chrono::milliseconds timeout);
  ~etcd_client();
  etcd_client(const etcd_client&) = delete;
  etcd_client& operator=(const etcd_client&) = delete;

  /// The new lease's id. etcd raises a TTL below its minimum (1.5 election
  /// timeouts) to that minimum.
  result<std::int64_t, std::string> lease_grant(std::chrono::seconds ttl);
  /// TTL left in seconds; 0 or less: the lease is gone (expired or revoked).
  result<std::int64_t, std::string> lease_keepalive(std::int64_t lease);
  /// Deletes the lease and every key bound to it. A lease already gone is not
  /// an error.
  result<void, std::string> lease_revoke(std::int64_t lease);
  /// One txn: if the key does not exist (create_revision == 0) put it with
  /// `lease` (0: none), else read it into `existing`.
  result<create_result, std::string> create_if_absent(std::string_view key, std::string_view value,
                                                      std::int64_t lease);
  /// The revision of the put; lease 0: none.
  result<std::int64_t, std::string> put(std::string_view key, std::string_view value,
                                        std::int64_t lease);
  /// Puts only if the key's mod_revision is still `mod_revision` (one txn);
  /// false when it changed or the key is gone.
  result<bool, std::string> put_if_unchanged(std::string_view key, std::string_view value,
                                             std::int64_t lease, std::int64_t mod_revision);
  /// Every key that starts with `prefix` (an empty prefix: every key), in key
  /// order.
  result<range_result, std::string> range_prefix(std::string_view prefix);
  /// True if the key existed.
  result<bool, std::string> erase(std::string_view key);
  /// Drops the history before `revision` (a watch from an older revision is
  /// then canceled as compacted). The revision must not be above the store's.
  result<void, std::string> compact(std::int64_t revision);

  /// The endpoint that answered last (the first one before any call).
  const std::string& last_endpoint() const noexcept;

 private:
  struct response;
  result<response, std::string> call(const char* path, const std::string& body);
  /// call(), then `parse` on the reply's JSON: a field of the wrong type or
  /// bad base64 becomes an error naming the endpoint and the call.
  template <class T, class Request, class Parse>
  result<T, std::string> rpc(const char* path, const Request& request, Parse parse);

  std::vector<std::string> endpoints_;
  std::chrono::milliseconds timeout_;
  std::size_t current_ = 0;  // the endpoint tried first by the next call
  void* curl_ = nullptr;     // a CURL easy handle, kept for its connection
  char errbuf_[256] = {};    // curl's detail of the last failure (CURL_ERROR_SIZE)
};

/// One streaming watch on a prefix; one thread at a time.
class etcd_watch {
 public:
  /// Starts watching `prefix` from `start_revision` (events with revision >=
  /// it; 0: from now). Tries the endpoints in turn until one acknowledges the
  /// watch, each within `connect_timeout`. Endpoints that are not
  /// "http://HOST:PORT" throw std::invalid_argument; every other error (no
  /// endpoint answers, the watch canceled or compacted) is reported by next().
  etcd_watch(std::vector<std::string> endpoints, std::string prefix, std::int64_t start_revision,
             std::chrono::milliseconds connect_timeout);
  ~etcd_watch();
  etcd_watch(const etcd_watch&) = delete;
  etcd_watch& operator=(const etcd_watch&) = delete;

  /// Waits up to `wait` for events and returns those that arrived (possibly
  /// none), in revision order. An error means the stream is gone (etcd down,
  /// history compacted past the start: the error names the compact revision,
  /// the watch canceled); every later call returns the same error. The caller
  /// then ranges again and watches anew from the revision it needs.
  result<std::vector<watch_event>, std::string> next(std::chrono::milliseconds wait);

  /// The revision up to which every event has been returned by next(): the
  /// revision to resume from is revision() + 1. It is the last event's
  /// revision, or the header revision of an acknowledgement or progress
  /// response that carries no events once the watch is known to be caught
  /// up; never a revision whose events are still to come.
  std::int64_t revision() const noexcept;

 private:
  void start_attempt();
  void fail(std::string why);
  void handle_line(std::string_view line, std::vector<watch_event>& out);
  void handle_done(int curl_code);
  void end_attempt(const std::string& why);

  std::vector<std::string> endpoints_;
  std::string prefix_;
  std::int64_t start_revision_;
  std::chrono::milliseconds connect_timeout_;
  std::size_t attempt_ = 0;  // endpoints_[attempt_] is being tried or streams
  std::chrono::steady_clock::time_point attempt_deadline_;
  bool established_ = false;  // etcd acknowledged the watch
  std::int64_t revision_ = 0;
  std::string buffer_;                // streamed bytes not yet split into lines
  std::string attempt_errors_;        // why earlier endpoints failed
  std::optional<std::string> error_;  // set once the stream is gone
  std::string request_;
  char errbuf_[256] = {};  // curl's detail of the last failure (CURL_ERROR_SIZE)
  void* multi_ = nullptr;  // CURLM
  void* easy_ = nullptr;   // CURL, the current attempt's transfer
};

}  // namespace keyway::cluster
