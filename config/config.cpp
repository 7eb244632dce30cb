#include "config/config.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <toml++/toml.h>

#include "config/keys.hpp"
#include "core/partitioner.hpp"
#include "proto/limits.hpp"

namespace keyway::config {
namespace {

using daemon::listen_address;
using daemon::server_options;
using std::chrono::milliseconds;

// The whole schema, from the key table (config/keys.hpp) in its order. Anything else in
// the file is an error, so a typo never silently leaves a default in place.
struct section_schema {
  std::string_view name;
  std::vector<std::string_view> keys;
};

const std::vector<section_schema>& schema() {
  static const std::vector<section_schema> s = [] {
    std::vector<section_schema> out;
    for (const std::string_view name : sections()) out.push_back({name, section_keys(name)});
    return out;
  }();
  return s;
}

std::string join(const std::vector<std::string_view>& items, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest of `candidates` to `word` if it is a plausible typo, else empty.
std::string_view closest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::string_view best;
  std::size_t best_distance = 3;  // at most two edits
  for (std::string_view c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_distance && d < c.size()) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

std::string show(const toml::node& n) {
  if (const auto* s = n.as_string()) return toml_string(s->get());
  if (const auto* a = n.as_array()) {
    std::string out = "[";
    for (std::size_t i = 0; i < a->size(); ++i) out += (i ? ", " : "") + show(*a->get(i));
    return out + "]";
  }
  std::ostringstream os;
  n.visit([&](const auto& v) { os << v; });
  return os.str();
}

bool is_ip_literal(const std::string& host) {
  unsigned char buf[16];
  if (::inet_pton(AF_INET, host.c_str(), buf) == 1) return true;
  const std::string bare = host.substr(0, host.find('%'));  // fe80::1%eth0: a scope id
  return ::inet_pton(AF_INET6, bare.c_str(), buf) == 1;
}

// parse_listen_url says "listen URL 'tcp://x': <why>; use tcp://HOST:PORT or ...". In the
// file the scheme is implied by the key, so keep only <why>.
std::string listen_url_reason(const std::string& url, const std::string& what) {
  const std::string head = "listen URL '" + url + "': ";
  const std::string tail = "; use tcp://HOST:PORT or unix:///absolute/path";
  if (!what.starts_with(head) || !what.ends_with(tail)) return what;
  return what.substr(head.size(), what.size() - head.size() - tail.size());
}

// URLs in server.advertise: a welcome carries them all.
constexpr std::size_t max_advertised = 256;

// A DNS name as a client would resolve it: dot-separated labels of letters,
// digits and '-' (not at either end of a label), 1..63 bytes each, 253 in all.
bool is_host_name(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  std::size_t label = 0;
  for (std::size_t i = 0; i < host.size(); ++i) {
    const char c = host[i];
    if (c == '.') {
      if (label == 0 || host[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    if (++label > 63) return false;
  }
  return label > 0 && host.back() != '-';
}

// Why `url` is not a URL a client can connect to (server.advertise), or "" if
// it is: tcp://HOST:PORT with HOST a name, an IP address or [IPv6] and PORT
// 1..65535, or unix:///absolute/path. `port_zero`: what to say of port 0.
std::string client_url_problem(
    const std::string& url,
    std::string_view port_zero =
        "port 0 cannot be advertised (it binds any free port); give the port clients connect to") {
  listen_address a;
  try {
    a = daemon::parse_listen_url(url);
  } catch (const std::invalid_argument& e) {
    std::string why = listen_url_reason(url, e.what());
    if (const auto at = why.find("from 0 to 65535"); at != std::string::npos)
      why.replace(at, 15, "from 1 to 65535");
    return why;
  }
  if (a.type == listen_address::kind::unix_path) return {};
  if (a.port == 0) return std::string(port_zero);
  const bool bracketed = url.compare(6, 1, "[") == 0;
  if (bracketed) {
    unsigned char buf[16];
    if (::inet_pton(AF_INET6, a.host.c_str(), buf) != 1)
      return "host [" + a.host + "] is not an IPv6 address";
    return {};
  }
  if (a.host.find(':') != std::string::npos)
    return "an IPv6 host must be in brackets, e.g. tcp://[::1]:7400";
  if (!is_ip_literal(a.host) && !is_host_name(a.host))
    return "host " + toml_string(a.host) +
           " is neither an IP address nor a host name (letters, digits, '-' and '.')";
  return {};
}

// "partitioner slots = 3 is not ..." -> "routing.slots = 3 is not ...".
std::string rename_subject(const std::string& msg, const std::string& from, const std::string& to) {
  if (msg.starts_with(from)) return to + msg.substr(from.size());
  return to + ": " + msg;
}

// Reads one parsed document onto server_options, collecting every problem.
class reader {
 public:
  reader(const toml::table& root, std::string_view file) : root_(root), file_(file) {}

  std::vector<std::string> problems;

  void check_names();
  void read_server(server_options& o);
  void read_listen(server_options& o);
  void read_admin(server_options& o);
  void read_routing(server_options& o);
  void read_limits(server_options& o);
  void read_log(server_options& o);
  void read_auth(server_options& o);
  void read_cluster(server_options& o);

 private:
  void fail(const std::string& msg) {
    problems.push_back(one_line(std::string(file_) + ": " + msg));
  }

  const toml::node* find(std::string_view section, std::string_view key) const {
    const toml::node* s = root_.get(section);
    if (s == nullptr || !s->is_table()) return nullptr;  // check_names() reported it
    return s->as_table()->get(key);
  }

  void wrong_type(const std::string& name, const toml::node& n, std::string_view expected) {
    fail(name + " = " + show(n) + " has the wrong type: expected " + std::string(expected));
  }

  void out_of_range(const std::string& name, const toml::node& n, std::string_view allowed) {
    fail(name + " = " + show(n) + " is out of range; allowed " + std::string(allowed));
  }

  std::optional<std::int64_t> integer(const std::string& name, const toml::node& n, std::int64_t lo,
                                      std::int64_t hi, std::string_view allowed) {
    const auto* v = n.as_integer();
    if (v == nullptr) {
      wrong_type(name, n, "an integer");
      return std::nullopt;
    }
    if (v->get() < lo || v->get() > hi) {
      out_of_range(name, n, allowed);
      return std::nullopt;
    }
    return v->get();
  }

  std::optional<std::string> string(const std::string& name, const toml::node& n) {
    if (const auto* s = n.as_string()) return s->get();
    wrong_type(name, n, "a string");
    return std::nullopt;
  }

  std::optional<std::string> choice(const std::string& name, const toml::node& n,
                                    const std::vector<std::string_view>& allowed) {
    auto s = string(name, n);
    if (!s) return std::nullopt;
    if (std::find(allowed.begin(), allowed.end(), *s) != allowed.end()) return s;
    fail(name + " = " + show(n) + " is not allowed; use one of " + join(allowed, ", "));
    return std::nullopt;
  }

  std::optional<milliseconds> duration(const std::string& name, const toml::node& n,
                                       milliseconds lo, milliseconds hi,
                                       std::string_view note = {}) {
    milliseconds d{};
    if (const auto* i = n.as_integer()) {
      d = milliseconds(i->get());
    } else if (const auto* s = n.as_string()) {
      auto parsed = parse_duration(s->get());
      if (!parsed.value) {
        fail(name + " = " + parsed.error);
        return std::nullopt;
      }
      d = *parsed.value;
    } else {
      wrong_type(name, n,
                 "a duration such as \"500ms\", \"5s\" or \"2m\", or an integer of milliseconds");
      return std::nullopt;
    }
    if (d < lo || d > hi) {
      out_of_range(name, n, format_duration(lo) + ".." + format_duration(hi) + std::string(note));
      return std::nullopt;
    }
    return d;
  }

  // The elements of an array, or nullopt (and a problem) if `n` is not one.
  const toml::array* array(const std::string& name, const toml::node& n,
                           std::string_view expected) {
    if (const auto* a = n.as_array()) return a;
    wrong_type(name, n, expected);
    return nullptr;
  }

  std::optional<listen_address> tcp_address(const std::string& name, const toml::node& n);

  const toml::table& root_;
  std::string_view file_;
};

void reader::check_names() {
  std::vector<std::string_view> sections;
  for (const auto& s : schema()) sections.push_back(s.name);
  for (auto&& [k, v] : root_) {
    const std::string_view name = k.str();
    const auto it = std::find_if(schema().begin(), schema().end(),
                                 [&](const auto& s) { return s.name == name; });
    if (it == schema().end()) {
      if (!v.is_table()) {
        // A key above the first [section]. Say where it belongs if it is one of ours.
        std::string where;
        for (const auto& s : schema()) {
          if (std::find(s.keys.begin(), s.keys.end(), name) != s.keys.end()) {
            where = "; did you mean to put it under [" + std::string(s.name) + "]?";
            break;
          }
        }
        fail("unknown key " + std::string(name) + " outside any section" +
             (where.empty() ? "; every key belongs to a section: " + join(sections, ", ") : where));
        continue;
      }
      const std::string_view guess = closest(name, sections);
      fail("unknown section [" + std::string(name) + "]" +
           (guess.empty() ? "; the sections are " + join(sections, ", ")
                          : "; did you mean [" + std::string(guess) + "]?"));
      continue;
    }
    if (!v.is_table()) {
      wrong_type(std::string(name), v, "a table: [" + std::string(name) + "]");
      continue;
    }
    for (auto&& [key, value] : *v.as_table()) {
      (void)value;
      if (std::find(it->keys.begin(), it->keys.end(), key.str()) != it->keys.end()) continue;
      const std::string_view guess = closest(key.str(), it->keys);
      fail("unknown key " + std::string(name) + "." + std::string(key.str()) +
           (guess.empty()
                ? "; the keys of [" + std::string(name) + "] are " + join(it->keys, ", ")
                : "; did you mean " + std::string(name) + "." + std::string(guess) + "?"));
    }
  }
}

void reader::read_server(server_options& o) {
  bool workers_ok = true;
  bool workers_set = false;
  if (const auto* n = find("server", "workers")) {
    auto v = integer("server.workers", *n, 0, 1024, "0..1024 (0 = one worker per CPU)");
    workers_ok = v.has_value();
    workers_set = v.has_value() && *v > 0;
    if (v) o.workers = static_cast<unsigned>(*v);
  }
  bool cpus_ok = true;
  if (const auto* n = find("server", "cpus")) {
    const auto* a = array("server.cpus", *n, "an array of CPU numbers such as [0, 1]");
    cpus_ok = a != nullptr;
    std::vector<int> cpus;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      const std::string name = "server.cpus[" + std::to_string(i) + "]";
      auto v =
          integer(name, *a->get(i), 0, std::numeric_limits<int>::max(), "a CPU number, 0 or more");
      if (!v) {
        cpus_ok = false;
      } else if (std::find(cpus.begin(), cpus.end(), *v) != cpus.end()) {
        fail(name + " = " + std::to_string(*v) + " repeats CPU " + std::to_string(*v) +
             "; each worker needs a CPU of its own");
        cpus_ok = false;
      } else {
        cpus.push_back(static_cast<int>(*v));
      }
    }
    if (cpus_ok) o.cpus = std::move(cpus);
  }
  if (workers_ok && cpus_ok && !o.cpus.empty()) {
    if (!workers_set) {
      o.workers = static_cast<unsigned>(o.cpus.size());
    } else if (o.workers != o.cpus.size()) {
      fail("server.workers = " + std::to_string(o.workers) + " but server.cpus lists " +
           std::to_string(o.cpus.size()) + " CPUs; list one CPU per worker, or leave workers out " +
           "(it then defaults to the number of cpus)");
    }
  }
  if (const auto* n = find("server", "drain_timeout")) {
    if (auto d = duration("server.drain_timeout", *n, milliseconds(0), std::chrono::hours(1)))
      o.drain_timeout = *d;
  }
  if (const auto* n = find("server", "lame_duck_grace")) {
    if (auto d = duration("server.lame_duck_grace", *n, milliseconds(0), std::chrono::hours(1)))
      o.lame_duck_grace = *d;
  }
  if (const auto* n = find("server", "advertise")) {
    const auto* a = array("server.advertise", *n,
                          "an array of client URLs such as [\"tcp://10.0.0.2:7400\", "
                          "\"unix:///run/keyway/keyway.sock\"]");
    if (a != nullptr && a->size() > max_advertised) {
      fail("server.advertise lists " + std::to_string(a->size()) + " URLs; at most " +
           std::to_string(max_advertised) + " are announced in a welcome");
      a = nullptr;
    }
    bool ok = a != nullptr;
    std::vector<std::string> urls;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      const std::string name = "server.advertise[" + std::to_string(i) + "]";
      auto url = string(name, *a->get(i));
      if (!url) {
        ok = false;
        continue;
      }
      if (const std::string why = client_url_problem(*url); !why.empty()) {
        fail(name + " = " + show(*a->get(i)) + " is not a client URL: " + why +
             "; write tcp://HOST:PORT (HOST a name, an IP address or [IPv6], PORT 1..65535) or "
             "unix:///absolute/path");
        ok = false;
        continue;
      }
      if (std::find(urls.begin(), urls.end(), *url) != urls.end()) {
        fail(name + " = " + show(*a->get(i)) + " is listed twice; list each URL once");
        ok = false;
        continue;
      }
      urls.push_back(std::move(*url));
    }
    if (ok) o.advertise = std::move(urls);
  }
}

std::optional<listen_address> reader::tcp_address(const std::string& name, const toml::node& n) {
  auto text = string(name, n);
  if (!text) return std::nullopt;
  if (text->find("://") != std::string::npos) {
    fail(name + " = " + show(n) +
         " has a scheme; write HOST:PORT, e.g. \"127.0.0.1:7400\" or \"[::1]:7400\"");
    return std::nullopt;
  }
  const std::string url = "tcp://" + *text;
  listen_address a;
  try {
    a = daemon::parse_listen_url(url);
  } catch (const std::invalid_argument& e) {
    fail(name + " = " + show(n) + " is not a valid address: " + listen_url_reason(url, e.what()) +
         "; write HOST:PORT, e.g. \"127.0.0.1:7400\" or \"[::1]:7400\"");
    return std::nullopt;
  }
  if (!is_ip_literal(a.host)) {
    fail(name + " = " + show(n) + " is not a valid address: host " + toml_string(a.host) +
         " is not an IP address; keywayd does not resolve names, so write e.g. 127.0.0.1, 0.0.0.0 "
         "or [::1]");
    return std::nullopt;
  }
  return a;
}

void reader::read_listen(server_options& o) {
  std::vector<listen_address> tcp{listen_address{}};
  std::vector<listen_address> unix_paths;
  bool ok = true;
  if (const auto* n = find("listen", "tcp")) {
    tcp.clear();
    const auto* a = array("listen.tcp", *n, "an array of \"HOST:PORT\" strings");
    ok = ok && a != nullptr;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      const std::string name = "listen.tcp[" + std::to_string(i) + "]";
      auto addr = tcp_address(name, *a->get(i));
      if (!addr) {
        ok = false;
        continue;
      }
      const bool repeated =
          addr->port != 0 && std::any_of(tcp.begin(), tcp.end(), [&](const auto& t) {
            return t.host == addr->host && t.port == addr->port;
          });
      if (repeated) {
        fail(name + " = " + show(*a->get(i)) + " is listed twice; each address can be bound once");
        ok = false;
        continue;
      }
      tcp.push_back(*addr);
    }
  }
  if (const auto* n = find("listen", "unix")) {
    const auto* a = array("listen.unix", *n, "an array of absolute paths");
    ok = ok && a != nullptr;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      const std::string name = "listen.unix[" + std::to_string(i) + "]";
      auto path = string(name, *a->get(i));
      if (!path) {
        ok = false;
        continue;
      }
      const std::string url = "unix://" + *path;
      try {
        auto addr = daemon::parse_listen_url(url);
        if (std::any_of(unix_paths.begin(), unix_paths.end(),
                        [&](const auto& u) { return u.path == addr.path; })) {
          fail(name + " = " + show(*a->get(i)) + " is listed twice; each path can be bound once");
          ok = false;
          continue;
        }
        unix_paths.push_back(std::move(addr));
      } catch (const std::invalid_argument& e) {
        fail(name + " = " + show(*a->get(i)) +
             " is not a valid path: " + listen_url_reason(url, e.what()) +
             "; write an absolute path such as \"/run/keyway/keyway.sock\"");
        ok = false;
      }
    }
  }
  // Neither key given: the listeners stay as they were (the defaults, or the
  // file's when keywayd applies its flags).
  const bool listed = find("listen", "tcp") != nullptr || find("listen", "unix") != nullptr;
  if (ok && listed && tcp.empty() && unix_paths.empty()) {
    fail(
        "listen.tcp and listen.unix are both empty; keywayd needs at least one listener, e.g. "
        "tcp = [\"127.0.0.1:7400\"]");
  }
  if (ok && listed) {
    o.listen = std::move(tcp);
    o.listen.insert(o.listen.end(), unix_paths.begin(), unix_paths.end());
  }

  if (const auto* n = find("listen", "unix_socket_mode")) {
    constexpr std::string_view allowed = "0..0777; write the mode in octal: \"0660\" or 0o660";
    std::optional<std::int64_t> mode;
    if (const auto* s = n->as_string()) {
      std::string_view digits = s->get();
      if (digits.starts_with("0o")) digits.remove_prefix(2);
      std::uint32_t v = 0;
      const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, 8);
      if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size()) {
        fail("listen.unix_socket_mode = " + show(*n) +
             " is not an octal mode; write e.g. \"0660\"");
      } else if (v > 0777) {
        out_of_range("listen.unix_socket_mode", *n, allowed);
      } else {
        mode = v;
      }
    } else if (n->is_integer()) {
      mode = integer("listen.unix_socket_mode", *n, 0, 0777, allowed);
    } else {
      wrong_type("listen.unix_socket_mode", *n,
                 "an octal string such as \"0660\" or an integer such as 0o660");
    }
    if (mode) o.unix_socket_mode = static_cast<std::uint32_t>(*mode);
  }
}

void reader::read_admin(server_options& o) {
  if (const auto* m = find("admin", "max_connections")) {
    if (auto v = integer("admin.max_connections", *m, 1, 10'000, "1..10000"))
      o.admin_max_connections = static_cast<std::size_t>(*v);
  }
  const auto* n = find("admin", "listen");
  if (n == nullptr) return;
  // "" or "off" disables the admin listener, as --admin off does.
  if (n->is_string() && (n->as_string()->get().empty() || n->as_string()->get() == "off")) {
    o.admin.reset();
    return;
  }
  auto addr = tcp_address("admin.listen", *n);
  if (!addr) return;
  for (const auto& l : o.listen) {
    if (l.type == listen_address::kind::tcp && addr->port != 0 && l.host == addr->host &&
        l.port == addr->port) {
      fail("admin.listen = " + show(*n) +
           " is also in listen.tcp; give the admin listener a port of its own");
      return;
    }
  }
  o.admin = *addr;
}

void reader::read_routing(server_options& o) {
  bool strategy_ok = true;
  if (const auto* n = find("routing", "partitioner")) {
    strategy_ok = false;
    if (auto name = string("routing.partitioner", *n)) {
      if (auto s = core::parse_partition_strategy(*name)) {
        o.partitioner = *s;
        strategy_ok = true;
      } else {
        fail("routing.partitioner = " + show(*n) +
             " is not allowed; use one of consistent, hash, round_robin, or range with "
             "routing.split_points");
      }
    }
  }
  if (const auto* n = find("routing", "slots")) {
    if (auto v = integer("routing.slots", *n, std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max(), "")) {
      core::partitioner_options p;
      p.slots = *v < 0 ? 0 : static_cast<std::size_t>(*v);
      const std::string err =
          core::partitioner_options_error(core::partition_strategy::consistent, p);
      if (err.empty()) {
        o.partition.slots = p.slots;
      } else {
        fail(rename_subject(err, "partitioner slots = " + std::to_string(p.slots),
                            "routing.slots = " + show(*n)));
      }
    }
  }
  if (const auto* n = find("routing", "vnodes")) {
    if (auto v = integer("routing.vnodes", *n, std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max(), "")) {
      core::partitioner_options p;
      p.layout = core::consistent_layout::vnode_ring;
      p.vnodes = *v < 0 ? 0 : static_cast<std::size_t>(*v);
      const std::string err =
          core::partitioner_options_error(core::partition_strategy::consistent, p);
      if (err.empty()) {
        o.partition.vnodes = p.vnodes;
      } else {
        fail(rename_subject(err, "partitioner vnodes = " + std::to_string(p.vnodes),
                            "routing.vnodes = " + show(*n)));
      }
    }
  }
  bool points_ok = true;
  if (const auto* n = find("routing", "split_points")) {
    const auto* a = array("routing.split_points", *n, "an array of strings");
    points_ok = a != nullptr;
    std::vector<std::string> points;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      auto s = string("routing.split_points[" + std::to_string(i) + "]", *a->get(i));
      if (s) points.push_back(std::move(*s));
      points_ok = points_ok && s.has_value();
    }
    if (points_ok) o.partition.split_points = std::move(points);
  }
  if (!strategy_ok || !points_ok) return;
  const auto& points = o.partition.split_points;
  if (o.partitioner == core::partition_strategy::range) {
    if (points.empty()) {
      fail(
          "routing.partitioner = \"range\" needs routing.split_points, e.g. split_points = [\"m\"] "
          "for two "
          "ranges; or use consistent");
    } else if (auto err =
                   core::partitioner_options_error(core::partition_strategy::range, o.partition);
               !err.empty()) {
      fail("routing.split_points: " + err);
    }
  } else if (!points.empty()) {
    fail("routing.split_points is set but routing.partitioner is \"" +
         std::string(core::to_string(o.partitioner)) +
         "\"; split points apply only to partitioner = \"range\", so remove them or switch to "
         "range");
  }
}

void reader::read_limits(server_options& o) {
  if (const auto* n = find("limits", "max_payload")) {
    constexpr std::int64_t max = 64ll << 20;
    if (auto v = integer("limits.max_payload", *n, 1, max, "1..67108864 bytes (64 MiB)")) {
      auto l = proto::limits::with_max_payload(static_cast<std::uint32_t>(*v));
      if (auto st = proto::validate_limits(l); !st) {
        fail("limits.max_payload = " + show(*n) + ": " + st.message());
      } else {
        o.limits = l;
      }
    }
  }
  if (const auto* n = find("limits", "max_connections")) {
    if (auto v = integer("limits.max_connections", *n, 0, 1'000'000,
                         "0..1000000 (0 = from the file-descriptor limit)"))
      o.max_connections = *v;
  }
  if (const auto* n = find("limits", "max_subscriptions")) {
    if (auto v = integer("limits.max_subscriptions", *n, 1, 1'000'000, "1..1000000 per connection"))
      o.max_subscriptions = static_cast<std::uint32_t>(*v);
  }
  if (const auto* n = find("limits", "max_pattern_tokens")) {
    if (auto v = integer("limits.max_pattern_tokens", *n, 1, 128, "1..128"))
      o.max_pattern_tokens = static_cast<std::uint32_t>(*v);
  }
  if (const auto* n = find("limits", "max_queue_group_members")) {
    if (auto v = integer("limits.max_queue_group_members", *n, 1, 4096,
                         "1..4096 (a group's slot table has 4096 slots)"))
      o.max_queue_group_members = static_cast<std::uint32_t>(*v);
  }
  if (const auto* n = find("limits", "max_pattern_shapes")) {
    if (auto v = integer("limits.max_pattern_shapes", *n, 1, 65536, "1..65536"))
      o.max_pattern_shapes = static_cast<std::uint32_t>(*v);
  }
  if (const auto* n = find("limits", "max_subscription_bytes")) {
    if (auto v = integer("limits.max_subscription_bytes", *n, 64ll << 10, 1ll << 40,
                         "65536..1099511627776 bytes (64 KiB..1 TiB) per connection"))
      o.max_subscription_bytes = static_cast<std::uint64_t>(*v);
  }
  if (const auto* n = find("limits", "max_total_subscription_bytes")) {
    if (auto v = integer("limits.max_total_subscription_bytes", *n, 64ll << 10, 1ll << 40,
                         "65536..1099511627776 bytes (64 KiB..1 TiB)"))
      o.max_total_subscription_bytes = static_cast<std::uint64_t>(*v);
  }
  if (const auto* n = find("limits", "max_pending_bytes")) {
    if (auto v = integer("limits.max_pending_bytes", *n, 64ll << 10, 16ll << 30,
                         "65536..17179869184 bytes (64 KiB..16 GiB)"))
      o.max_pending_bytes = static_cast<std::uint64_t>(*v);
  }
  if (const auto* n = find("limits", "slow_consumer")) {
    if (auto v = choice("limits.slow_consumer", *n, {"disconnect", "drop"}))
      o.slow_consumer = *v == "drop" ? daemon::slow_consumer_policy::drop
                                     : daemon::slow_consumer_policy::disconnect;
  }
  if (const auto* n = find("limits", "slow_consumer_grace")) {
    if (auto d = duration("limits.slow_consumer_grace", *n, milliseconds(0), std::chrono::hours(1)))
      o.slow_consumer_grace = *d;
  }
  if (const auto* n = find("limits", "handshake_timeout")) {
    if (auto d = duration("limits.handshake_timeout", *n, milliseconds(1), std::chrono::hours(1)))
      o.handshake_timeout = *d;
  }
  if (const auto* n = find("limits", "idle_timeout")) {
    if (auto d = duration("limits.idle_timeout", *n, milliseconds(0), std::chrono::hours(24),
                          " (0 = never)"))
      o.idle_timeout = *d;
  }
}

void reader::read_log(server_options& o) {
  if (const auto* n = find("log", "level")) {
    if (auto v =
            choice("log.level", *n, {"trace", "debug", "info", "warn", "error", "critical", "off"}))
      o.log_level = *v;
  }
  if (const auto* n = find("log", "format")) {
    if (auto v = choice("log.format", *n, {"text", "json"}))
      o.log_fmt = *v == "json" ? daemon::log_format::json : daemon::log_format::text;
  }
}

void reader::read_auth(server_options& o) {
  if (const auto* n = find("auth", "tokens_file")) {
    if (auto v = string("auth.tokens_file", *n)) o.tokens_file = *v;
  }
}

// Why `url` is not an etcd client URL (http://HOST:PORT, HOST a name, an IP
// address or [IPv6], PORT 1..65535), or "": a client URL's host and port rules.
std::string etcd_url_problem(const std::string& url) {
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme))
    return url.starts_with("https://") ? "TLS to etcd is not supported; use http://HOST:PORT"
                                       : "has no http:// scheme";
  return client_url_problem("tcp://" + url.substr(scheme.size()),
                            "port 0 is not a port to connect to; give the port etcd listens on");
}

void reader::read_cluster(server_options& o) {
  const toml::node* section = root_.get("cluster");
  if (section == nullptr || !section->is_table()) return;  // no [cluster]: a single node
  daemon::cluster_options c = o.cluster.value_or(daemon::cluster_options{});
  auto named = [&](const char* key, std::string& into, bool empty_ok) {
    const std::string name = std::string("cluster.") + key;
    const auto* n = find("cluster", key);
    if (n == nullptr) return;
    auto v = string(name, *n);
    if (!v) return;
    if (const std::string why =
            v->empty() && empty_ok ? std::string() : daemon::cluster_name_problem(*v);
        !why.empty())
      return fail(name + " = " + show(*n) + " " + why);
    into = *v;
  };
  named("name", c.name, false);
  named("node_id", c.node_id, true);  // "": the host name
  // A peer URL, tcp://IP:PORT: peers bind and dial addresses, not names or paths.
  const auto peer_url = [&](const std::string& name, const toml::node& n,
                            const std::string& v) -> std::optional<listen_address> {
    std::optional<listen_address> addr;
    try {
      addr = daemon::parse_listen_url(v);
    } catch (const std::invalid_argument& e) {
      fail(name + " = " + show(n) + " is not a valid URL: " + listen_url_reason(v, e.what()) +
           "; write tcp://IP:PORT, e.g. tcp://10.0.0.1:7402");
      return std::nullopt;
    }
    if (addr->type != listen_address::kind::tcp) {
      fail(name + " = " + show(n) + " is a Unix path; peers connect over TCP: write tcp://IP:PORT");
      return std::nullopt;
    }
    if (!is_ip_literal(addr->host)) {
      fail(name + " = " + show(n) + " has host " + toml_string(addr->host) +
           ", not an IP address; keywayd does not resolve names for peers");
      return std::nullopt;
    }
    return addr;
  };
  if (const auto* n = find("cluster", "peer_listen"))
    if (auto v = string("cluster.peer_listen", *n))
      if (auto addr = peer_url("cluster.peer_listen", *n, *v)) c.peer_listen = *addr;
  if (const auto* n = find("cluster", "peer_advertise")) {
    if (auto v = string("cluster.peer_advertise", *n); v && !v->empty()) {
      if (auto addr = peer_url("cluster.peer_advertise", *n, *v)) {
        if (addr->port == 0 || addr->host == "0.0.0.0" || addr->host == "::")
          fail("cluster.peer_advertise = " + show(*n) +
               " cannot be dialled (port 0 or a wildcard address); give the address and port "
               "other nodes reach this one at");
        else
          c.peer_advertise = addr->to_string();
      }
    }
  }
  if (const auto* n = find("cluster", "advertise")) {
    if (auto v = string("cluster.advertise", *n)) {
      if (const std::string why = v->empty() ? std::string() : client_url_problem(*v); !why.empty())
        fail("cluster.advertise = " + show(*n) + " is not a client URL: " + why +
             "; write tcp://HOST:PORT or unix:///absolute/path, or \"\" for the first listener");
      else
        c.advertise = *v;
    }
  }
  if (const auto* n = find("cluster", "etcd_endpoints")) {
    const auto* a = array("cluster.etcd_endpoints", *n,
                          "an array of etcd client URLs such as [\"http://127.0.0.1:2379\"]");
    constexpr std::size_t max_endpoints = 16;
    if (a != nullptr && (a->empty() || a->size() > max_endpoints)) {
      fail("cluster.etcd_endpoints lists " + std::to_string(a->size()) + " URLs; allowed 1.." +
           std::to_string(max_endpoints));
      a = nullptr;
    }
    bool ok = a != nullptr;
    std::vector<std::string> urls;
    for (std::size_t i = 0; a != nullptr && i < a->size(); ++i) {
      const std::string name = "cluster.etcd_endpoints[" + std::to_string(i) + "]";
      auto url = string(name, *a->get(i));
      if (!url) {
        ok = false;
      } else if (const std::string why = etcd_url_problem(*url); !why.empty()) {
        fail(name + " = " + show(*a->get(i)) + " is not an etcd client URL: " + why +
             "; write http://HOST:PORT, e.g. http://127.0.0.1:2379");
        ok = false;
      } else if (std::find(urls.begin(), urls.end(), *url) != urls.end()) {
        fail(name + " = " + show(*a->get(i)) + " is listed twice; list each URL once");
        ok = false;
      } else {
        urls.push_back(std::move(*url));
      }
    }
    if (ok) c.etcd_endpoints = std::move(urls);
  }
  if (const auto* n = find("cluster", "lease_ttl")) {
    if (auto d =
            duration("cluster.lease_ttl", *n, std::chrono::seconds(2), std::chrono::minutes(10),
                     " (etcd refuses leases shorter than about 1.5 election timeouts)"))
      c.lease_ttl = *d;
  }
  // The peer listener must not take a client or admin listener's address.
  const auto& peer = c.peer_listen;
  const auto clash = [&](const listen_address& l) {
    return l.type == listen_address::kind::tcp && l.port != 0 && l.port == peer.port &&
           l.host == peer.host;
  };
  if (peer.port != 0 && std::any_of(o.listen.begin(), o.listen.end(), clash))
    fail("cluster.peer_listen = " + toml_string(peer.to_string()) +
         " is also a client listener (listen.tcp); give the peers a port of their own");
  else if (peer.port != 0 && o.admin && clash(*o.admin))
    fail("cluster.peer_listen = " + toml_string(peer.to_string()) +
         " is also the admin listener (admin.listen); give the peers a port of their own");
  o.cluster = std::move(c);
}

}  // namespace

std::string one_line(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else
      out += c;
  }
  return out;
}

namespace {
std::string quote(std::string_view s, std::size_t max_shown) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == max_shown) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(s[i]);
    if (s[i] == '"' || s[i] == '\\') {
      out += '\\';
      out += s[i];
    } else if (u < 0x20 || u == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", u);
      out += esc;
    } else {
      out += s[i];
    }
  }
  return out + '"';
}
}  // namespace

std::string toml_string(std::string_view s) {
  return quote(s, 120);
}

std::string toml_quote(std::string_view s) {
  return quote(s, std::string_view::npos);
}

std::string load_result::joined() const {
  std::string out;
  for (const auto& p : problems) {
    if (!out.empty()) out += '\n';
    out += p;
  }
  return out;
}

load_result parse(std::string_view toml_text, std::string_view file_name, server_options base) {
  load_result out;
  toml::table root;
  try {
    root = toml::parse(toml_text, file_name);
  } catch (const toml::parse_error& e) {
    out.problems.push_back(std::string(file_name) + ":" + std::to_string(e.source().begin.line) +
                           ":" + std::to_string(e.source().begin.column) +
                           ": TOML syntax error: " + one_line(e.description()));
    return out;
  }
  reader r(root, file_name);
  server_options o = std::move(base);
  r.check_names();
  r.read_server(o);
  r.read_listen(o);
  r.read_admin(o);  // after listen: it checks for a clash with listen.tcp
  r.read_routing(o);
  r.read_limits(o);
  r.read_log(o);
  r.read_auth(o);
  r.read_cluster(o);  // after listen and admin: it checks for clashes with them
  if (r.problems.empty()) {
    out.options = std::move(o);
  } else {
    out.problems = std::move(r.problems);
  }
  return out;
}

duration_result parse_duration(std::string_view text) {
  const auto bad = [&] {
    return duration_result{std::nullopt,
                           toml_string(text) +
                               " is not a duration; use a whole number and a unit, e.g. 500ms, 5s, "
                               "2m or 1h (a bare number means milliseconds)"};
  };
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec == std::errc::invalid_argument || end == text.data()) return bad();
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m")
    factor = 60'000;
  else if (unit == "h")
    factor = 3'600'000;
  if (factor == 0) return bad();
  constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<milliseconds::rep>::max());
  if (ec == std::errc::result_out_of_range || n > max / factor)
    return {std::nullopt, toml_string(text) + " is too long a duration"};
  return {milliseconds(static_cast<milliseconds::rep>(n * factor)), {}};
}

std::string format_duration(milliseconds d) {
  const auto ms = d.count();
  if (ms == 0) return "0";
  if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace keyway::config
