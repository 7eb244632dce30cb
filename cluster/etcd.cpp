#include "cluster/etcd.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace keyway::cluster {

namespace {

using json = nlohmann::json;

// ---- base64 (RFC 4648, padded): the gateway's encoding of bytes fields ----

constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1])) << 8 |
                   static_cast<unsigned char>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += b64_alphabet[(n >> s) & 63];
  }
  if (const std::size_t rest = in.size() - i; rest > 0) {
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16;
    if (rest == 2) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1])) << 8;
    out += b64_alphabet[(n >> 18) & 63];
    out += b64_alphabet[(n >> 12) & 63];
    out += rest == 2 ? b64_alphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

/// Throws std::runtime_error on a character outside the alphabet or a bad
/// length (the caller reports a malformed response).
std::string base64_decode(std::string_view in) {
  static const auto table = [] {
    std::array<std::int8_t, 256> t{};
    t.fill(-1);
    for (int i = 0; i < 64; ++i)
      t[static_cast<unsigned char>(b64_alphabet[i])] = static_cast<std::int8_t>(i);
    return t;
  }();
  if (in.size() % 4 != 0) throw std::runtime_error("base64 of length " + std::to_string(in.size()));
  std::size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  std::string out;
  out.reserve(in.size() / 4 * 3);
  std::uint32_t n = 0;
  for (std::size_t i = 0; i < in.size() - pad; ++i) {
    const std::int8_t v = table[static_cast<unsigned char>(in[i])];
    if (v < 0) throw std::runtime_error("base64 with a byte outside the alphabet");
    n = n << 6 | static_cast<std::uint32_t>(v);
    if (i % 4 == 3) {
      out += static_cast<char>(n >> 16);
      out += static_cast<char>(n >> 8);
      out += static_cast<char>(n);
      n = 0;
    }
  }
  if (pad == 1) {
    n <<= 6;
    out += static_cast<char>(n >> 16);
    out += static_cast<char>(n >> 8);
  } else if (pad == 2) {
    n <<= 12;
    out += static_cast<char>(n >> 16);
  }
  return out;
}

// ---- the gateway's JSON ----------------------------------------------------

/// A 64-bit field: the gateway sends a JSON string, and omits it when 0.
std::int64_t int64_field(const json& obj, const char* name) {
  const auto it = obj.find(name);
  if (it == obj.end()) return 0;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  const auto& s = it->get_ref<const std::string&>();
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size())
    throw std::runtime_error(std::string("field ") + name + " is not an integer: " + s);
  return v;
}

std::string bytes_field(const json& obj, const char* name) {
  const auto it = obj.find(name);
  return it == obj.end() ? std::string() : base64_decode(it->get_ref<const std::string&>());
}

std::int64_t header_revision(const json& obj) {
  const auto it = obj.find("header");
  return it == obj.end() ? 0 : int64_field(*it, "revision");
}

kv parse_kv(const json& j) {
  return kv{
      bytes_field(j, "key"),          bytes_field(j, "value"),   int64_field(j, "create_revision"),
      int64_field(j, "mod_revision"), int64_field(j, "version"), int64_field(j, "lease")};
}

/// The first byte string after every key that starts with `prefix`: the
/// range_end of a prefix range ("\0", every key, for an empty prefix or one
/// of 0xff bytes only).
std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) return std::string(1, '\0');
  end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return end;
}

json put_request(std::string_view key, std::string_view value, std::int64_t lease) {
  json put{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) put["lease"] = std::to_string(lease);
  return put;
}

/// A one-compare txn on `key`: target (CREATE, MOD) == revision, then put,
/// else range the key.
json txn_request(std::string_view key, const char* target, const char* field, std::int64_t revision,
                 json put) {
  const std::string k = base64_encode(key);
  return json{{"compare", json::array({{{"key", k},
                                        {"target", target},
                                        {"result", "EQUAL"},
                                        {field, std::to_string(revision)}}})},
              {"success", json::array({{{"request_put", std::move(put)}}})},
              {"failure", json::array({{{"request_range", {{"key", k}}}}})}};
}

// ---- endpoints and libcurl ---------------------------------------------------

/// Refuses anything but "http://HOST:PORT" (no path, no user, a port in
/// 1..65535): the client talks to nothing the endpoint does not name.
void check_endpoints(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) throw std::invalid_argument("etcd: no endpoints given");
  for (const auto& e : endpoints) {
    const std::string_view scheme = "http://";
    const std::string_view rest = std::string_view(e).substr(
        e.compare(0, scheme.size(), scheme) == 0 ? scheme.size() : e.size());
    const auto colon = rest.rfind(':');
    const std::string_view host = colon == std::string_view::npos ? "" : rest.substr(0, colon);
    const std::string_view port = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
    unsigned p = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    const bool ok = !host.empty() && host.find_first_of("/@?# ") == std::string_view::npos &&
                    !port.empty() && ec == std::errc{} && end == port.data() + port.size() &&
                    p >= 1 && p <= 65535;
    if (!ok)
      throw std::invalid_argument("etcd endpoint '" + e +
                                  "' is not http://HOST:PORT (e.g. http://127.0.0.1:2379)");
  }
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

curl_slist* json_headers() {
  // "Expect:" keeps curl from waiting for a 100-continue on bodies over 1 KiB.
  static curl_slist* headers = [] {
    curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
    return curl_slist_append(h, "Expect:");
  }();
  return headers;
}

/// The options both kinds of transfer share: a POST of `body` to `url`, HTTP
/// only, no proxy, no redirect, no signals.
void set_common(CURL* c, const std::string& url, const std::string& body, char* errbuf) {
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, json_headers());
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  errbuf[0] = '\0';
}

/// Why a transfer failed, in curl's words and its detail ("Failed to connect
/// to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server").
std::string curl_failure(CURLcode code, const char* errbuf, std::chrono::milliseconds timeout) {
  std::string why = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(code);
  if (code == CURLE_OPERATION_TIMEDOUT)
    why = "timed out after " + std::to_string(timeout.count()) + " ms (" + why + ")";
  return why;
}

/// etcd's message from an error body ({"error": ..., "message": ..., "code": N}).
std::string etcd_message(const json& j) {
  if (const auto it = j.find("message"); it != j.end() && it->is_string()) return *it;
  if (const auto it = j.find("error"); it != j.end() && it->is_string()) return *it;
  return j.dump();
}

/// The gRPC status of an error body: "code" for a unary call, "grpc_code"
/// inside a stream's "error"; 0 if neither is a number.
std::int64_t grpc_code(const json& j) {
  for (const char* name : {"code", "grpc_code"})
    if (const auto it = j.find(name); it != j.end() && it->is_number_integer())
      return it->get<std::int64_t>();
  return 0;
}

/// An HTTP error answer: the status and etcd's message, or what the body was
/// instead of JSON.
std::string http_error(long status, const json& j, std::string_view body) {
  std::string why = "HTTP " + std::to_string(status);
  if (j.is_object()) return why + ": " + etcd_message(j);
  if (body.empty()) return why + " with an empty body";
  return why + " with a body that is not JSON: " + std::string(body.substr(0, 200));
}

size_t append_body(char* data, size_t size, size_t n, void* to) {
  static_cast<std::string*>(to)->append(data, size * n);
  return size * n;
}

// The handles keep a pointer to the error buffer: it is a member (of the
// header's size, which must be curl's).
static_assert(CURL_ERROR_SIZE == 256);

constexpr int grpc_unavailable = 14;
// A watch stream's unparsed bytes (one response line at most, in practice).
constexpr std::size_t max_watch_buffer = 16u << 20;

}  // namespace

// ---- etcd_client -------------------------------------------------------------

struct etcd_client::response {
  json body;
};

etcd_client::etcd_client(std::vector<std::string> endpoints, std::chrono::milliseconds timeout)
    : endpoints_(std::move(endpoints)), timeout_(timeout) {
  check_endpoints(endpoints_);
  global_init();
  curl_ = curl_easy_init();
  if (curl_ == nullptr) throw std::runtime_error("etcd: curl_easy_init failed");
}

etcd_client::~etcd_client() {
  curl_easy_cleanup(static_cast<CURL*>(curl_));
}

const std::string& etcd_client::last_endpoint() const noexcept {
  return endpoints_[current_];
}

result<etcd_client::response, std::string> etcd_client::call(const char* path,
                                                             const std::string& body) {
  CURL* c = static_cast<CURL*>(curl_);
  std::string tried;
  for (std::size_t i = 0; i < endpoints_.size(); ++i) {
    const std::size_t at = (current_ + i) % endpoints_.size();
    const std::string& endpoint = endpoints_[at];
    std::string reply;
    set_common(c, endpoint + path, body, errbuf_);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_.count()));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_.count()));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
    const CURLcode code = curl_easy_perform(c);
    if (!tried.empty()) tried += "; ";
    if (code != CURLE_OK) {
      tried += endpoint + ": " + curl_failure(code, errbuf_, timeout_);
      continue;
    }
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    json j = json::parse(reply, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      tried += endpoint + ": " + http_error(status, j, reply);
      continue;
    }
    // The streaming endpoints (lease keepalive) wrap the message in "result",
    // or report an error in "error".
    const auto e = j.find("error");
    const bool stream_error = e != j.end() && e->is_object();
    if (stream_error) j = json(*e);
    if (status != 200 || stream_error || j.contains("code")) {
      tried += endpoint + ": " + http_error(status, j, reply);
      if (grpc_code(j) != grpc_unavailable)
        return std::string("etcd ") + path + " failed: " + tried;
      continue;
    }
    if (const auto r = j.find("result"); r != j.end()) j = json(*r);
    current_ = at;
    return response{std::move(j)};
  }
  return std::string("etcd ") + path + ": no endpoint answered (" + tried + ")";
}

template <class T, class Request, class Parse>
result<T, std::string> etcd_client::rpc(const char* path, const Request& request, Parse parse) {
  auto r = call(path, request.dump());
  if (!r) return r.error();
  // A field of the wrong type or bad base64 becomes an error naming the
  // endpoint and the call.
  try {
    return T(parse(r->body));
  } catch (const std::exception& e) {
    return std::string("etcd ") + last_endpoint() + path + ": malformed response: " + e.what();
  }
}

result<std::int64_t, std::string> etcd_client::lease_grant(std::chrono::seconds ttl) {
  return rpc<std::int64_t>("/v3/lease/grant", (json{{"TTL", std::to_string(ttl.count())}}),
                           [](const json& j) { return int64_field(j, "ID"); });
}

result<std::int64_t, std::string> etcd_client::lease_keepalive(std::int64_t lease) {
  return rpc<std::int64_t>("/v3/lease/keepalive", (json{{"ID", std::to_string(lease)}}),
                           [](const json& j) { return int64_field(j, "TTL"); });
}

result<void, std::string> etcd_client::lease_revoke(std::int64_t lease) {
  auto r = call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump());
  // etcd answers 404 "requested lease not found" for a lease already gone.
  if (!r && r.error().find("lease not found") == std::string::npos) return r.error();
  return {};
}

result<create_result, std::string> etcd_client::create_if_absent(std::string_view key,
                                                                 std::string_view value,
                                                                 std::int64_t lease) {
  return rpc<create_result>(
      "/v3/kv/txn",
      txn_request(key, "CREATE", "create_revision", 0, put_request(key, value, lease)),
      [](const json& j) {
        create_result c;
        c.created = j.value("succeeded", false);
        c.revision = header_revision(j);
        if (!c.created) {
          // responses[0].response_range.kvs[0]; absent if the key
          // vanished, which the txn's atomicity rules out.
          const json& range = j.at("responses").at(0).at("response_range");
          if (const auto kvs = range.find("kvs"); kvs != range.end() && !kvs->empty())
            c.existing = parse_kv(kvs->at(0));
        }
        return c;
      });
}

result<std::int64_t, std::string> etcd_client::put(std::string_view key, std::string_view value,
                                                   std::int64_t lease) {
  return rpc<std::int64_t>("/v3/kv/put", put_request(key, value, lease), header_revision);
}

result<bool, std::string> etcd_client::put_if_unchanged(std::string_view key,
                                                        std::string_view value, std::int64_t lease,
                                                        std::int64_t mod_revision) {
  return rpc<bool>(
      "/v3/kv/txn",
      txn_request(key, "MOD", "mod_revision", mod_revision, put_request(key, value, lease)),
      [](const json& j) { return j.value("succeeded", false); });
}

result<range_result, std::string> etcd_client::range_prefix(std::string_view prefix) {
  return rpc<range_result>(
      "/v3/kv/range",
      (json{{"key", base64_encode(prefix.empty() ? std::string_view("\0", 1) : prefix)},
            {"range_end", base64_encode(prefix_end(prefix))}}),
      [](const json& j) {
        range_result r;
        r.revision = header_revision(j);
        if (const auto kvs = j.find("kvs"); kvs != j.end())
          for (const auto& k : *kvs) r.kvs.push_back(parse_kv(k));
        return r;
      });
}

result<bool, std::string> etcd_client::erase(std::string_view key) {
  return rpc<bool>("/v3/kv/deleterange", (json{{"key", base64_encode(key)}}),
                   [](const json& j) { return int64_field(j, "deleted") > 0; });
}

result<void, std::string> etcd_client::compact(std::int64_t revision) {
  auto r = call("/v3/kv/compaction", json{{"revision", std::to_string(revision)}}.dump());
  if (!r) return r.error();
  return {};
}

// ---- etcd_watch ----------------------------------------------------------------

etcd_watch::etcd_watch(std::vector<std::string> endpoints, std::string prefix,
                       std::int64_t start_revision, std::chrono::milliseconds connect_timeout)
    : endpoints_(std::move(endpoints)),
      prefix_(std::move(prefix)),
      start_revision_(start_revision),
      connect_timeout_(connect_timeout),
      revision_(start_revision > 0 ? start_revision - 1 : 0) {
  check_endpoints(endpoints_);
  global_init();
  json create{{"key", base64_encode(prefix_.empty() ? std::string_view("\0", 1) : prefix_)},
              {"range_end", base64_encode(prefix_end(prefix_))}};
  if (start_revision_ > 0) create["start_revision"] = std::to_string(start_revision_);
  request_ = json{{"create_request", std::move(create)}}.dump();
  multi_ = curl_multi_init();
  if (multi_ == nullptr) throw std::runtime_error("etcd watch: curl_multi_init failed");
  start_attempt();
}

etcd_watch::~etcd_watch() {
  if (easy_ != nullptr) {
    curl_multi_remove_handle(static_cast<CURLM*>(multi_), static_cast<CURL*>(easy_));
    curl_easy_cleanup(static_cast<CURL*>(easy_));
  }
  curl_multi_cleanup(static_cast<CURLM*>(multi_));
}

std::int64_t etcd_watch::revision() const noexcept {
  return revision_;
}

void etcd_watch::start_attempt() {
  CURL* c = curl_easy_init();
  if (c == nullptr) return fail("curl_easy_init failed");
  easy_ = c;
  buffer_.clear();
  set_common(c, endpoints_[attempt_] + "/v3/watch", request_, errbuf_);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(connect_timeout_.count()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &buffer_);
  curl_multi_add_handle(static_cast<CURLM*>(multi_), c);
  attempt_deadline_ = std::chrono::steady_clock::now() + connect_timeout_;
}

void etcd_watch::fail(std::string why) {
  if (!error_)
    error_ = "etcd watch on prefix '" + prefix_ + "' from revision " +
             std::to_string(start_revision_) + ": " + std::move(why);
}

/// Why the current attempt's transfer ended: curl's code, or -1 when etcd
/// did not acknowledge the watch in time.
void etcd_watch::handle_done(int curl_code) {
  if (curl_code == -1)
    return end_attempt("no acknowledgement within " + std::to_string(connect_timeout_.count()) +
                       " ms");
  if (curl_code != CURLE_OK)
    return end_attempt(curl_failure(static_cast<CURLcode>(curl_code), errbuf_, connect_timeout_));
  long status = 0;
  curl_easy_getinfo(static_cast<CURL*>(easy_), CURLINFO_RESPONSE_CODE, &status);
  const json j = json::parse(buffer_, nullptr, false);
  end_attempt(status != 200 ? http_error(status, j, buffer_)
                            : std::string("etcd closed the stream"));
}

/// Drops the current transfer. Before etcd's acknowledgement, the next
/// endpoint is tried; after it, the stream is gone.
void etcd_watch::end_attempt(const std::string& why) {
  const std::string& endpoint = endpoints_[attempt_];
  curl_multi_remove_handle(static_cast<CURLM*>(multi_), static_cast<CURL*>(easy_));
  curl_easy_cleanup(static_cast<CURL*>(easy_));
  easy_ = nullptr;
  if (established_) return fail("the stream from " + endpoint + " ended: " + why);
  if (!attempt_errors_.empty()) attempt_errors_ += "; ";
  attempt_errors_ += endpoint + ": " + why;
  if (++attempt_ < endpoints_.size()) return start_attempt();
  fail("no endpoint acknowledged the watch (" + attempt_errors_ + ")");
}

/// One response of the stream: {"result": {...}} or {"error": {...}}.
/// Events go to `out`; an error ends the attempt or the watch.
void etcd_watch::handle_line(std::string_view line, std::vector<watch_event>& out) {
  const json j = json::parse(line, nullptr, false);
  if (!j.is_object())
    return end_attempt("a line that is not JSON: " + std::string(line.substr(0, 200)));
  if (const auto e = j.find("error"); e != j.end())
    return end_attempt("etcd reported: " + (e->is_object() ? etcd_message(*e) : e->dump()));
  try {
    const json& r = j.at("result");
    if (r.value("canceled", false)) {
      const std::int64_t compacted = int64_field(r, "compact_revision");
      if (compacted > 0) {
        fail("etcd has compacted its history up to revision " + std::to_string(compacted) +
             "; range again and watch from revision " + std::to_string(compacted) + " or later");
      } else {
        fail("etcd canceled the watch: " +
             r.value("cancel_reason", std::string("no reason given")));
      }
      return;
    }
    const std::int64_t header = header_revision(r);
    if (r.value("created", false)) {
      established_ = true;
      // Caught up only if there is no history to replay (watching from now,
      // or from a revision still to come).
      if (start_revision_ == 0 || start_revision_ > header) revision_ = std::max(revision_, header);
      return;
    }
    const auto events = r.find("events");
    if (events == r.end() || events->empty()) {
      // A progress notification: sent only to a watch that is caught up.
      revision_ = std::max(revision_, header);
      return;
    }
    for (const auto& e : *events) {
      const bool del = e.value("type", std::string("PUT")) == "DELETE";
      watch_event ev{del ? watch_event::kind::del : watch_event::kind::put, parse_kv(e.at("kv"))};
      revision_ = std::max(revision_, ev.item.mod_revision);
      out.push_back(std::move(ev));
    }
  } catch (const std::exception& e) {
    end_attempt(std::string("a malformed response: ") + e.what());
  }
}

result<std::vector<watch_event>, std::string> etcd_watch::next(std::chrono::milliseconds wait) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + wait;
  std::vector<watch_event> out;
  CURLM* m = static_cast<CURLM*>(multi_);
  while (!error_) {
    int running = 0;
    curl_multi_perform(m, &running);
    // Complete lines first: a stream that ended may have sent its last
    // events (or its cancellation) just before. A bad line ends the attempt
    // (and clears buffer_).
    const std::size_t attempt = attempt_;
    std::size_t start = 0;
    for (std::size_t nl;
         !error_ && attempt_ == attempt && (nl = buffer_.find('\n', start)) != std::string::npos;
         start = nl + 1) {
      const std::string_view line = std::string_view(buffer_).substr(start, nl - start);
      if (line.find_first_not_of(" \r\t") != std::string_view::npos) handle_line(line, out);
    }
    if (error_) break;
    if (attempt_ != attempt) continue;
    buffer_.erase(0, start);
    if (buffer_.size() > max_watch_buffer) {
      end_attempt("a response line over " + std::to_string(max_watch_buffer >> 20) + " MiB");
      continue;
    }
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(m, &queued))
      if (msg->msg == CURLMSG_DONE) handle_done(msg->data.result);
    if (error_ || !out.empty()) break;
    if (!established_ && easy_ != nullptr && clock::now() >= attempt_deadline_) {
      handle_done(-1);
      continue;
    }
    const auto now = clock::now();
    if (now >= deadline) break;
    auto until = deadline;
    if (!established_) until = std::min(until, attempt_deadline_);
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
    curl_multi_poll(m, nullptr, 0, static_cast<int>(std::clamp<std::int64_t>(ms, 1, 60'000)),
                    nullptr);
  }
  if (error_) return *error_;
  return out;
}

}  // namespace keyway::cluster
