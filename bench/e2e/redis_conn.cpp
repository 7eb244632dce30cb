// The Redis adapter: RESP2 PUBLISH / SUBSCRIBE / PING against redis-server.
// Redis pub/sub has no queue groups and no request/reply: subscribe() with a
// group and queue_publish() with a reply subject throw bench_error, and the
// suite marks those scenarios null for Redis.
// https://redis.io/docs/reference/protocol-spec/ and https://redis.io/docs/manual/pubsub/
#include "bench/e2e/conn.hpp"
#include "bench/e2e/text_buffer.hpp"

#include <charconv>

namespace keyway::bench::e2e {
namespace {

/// One parsed RESP reply: a simple value, or a flat array of up to 4 simple
/// values (what pub/sub sends). Views into the input buffer.
struct resp_value {
  char type = 0;              // '+', '-', ':', '$' or '*'
  std::string_view text;      // + - : $ (null bulk: empty)
  std::string_view items[4];  // * elements' text
  char item_types[4] = {};
  std::size_t item_count = 0;
};

enum class parse_state { need_more, ok, bad };

/// A line ending in CRLF at `pos`: its text (without CRLF) and the next position.
parse_state line_at(std::string_view buf, std::size_t pos, std::string_view& line,
                    std::size_t& next) {
  const auto eol = buf.find("\r\n", pos);
  if (eol == std::string_view::npos) return parse_state::need_more;
  line = buf.substr(pos, eol - pos);
  next = eol + 2;
  return parse_state::ok;
}

bool to_int(std::string_view s, long long& v) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

/// A simple value (+ - : $) at `pos`.
parse_state simple_at(std::string_view buf, std::size_t pos, char& type, std::string_view& text,
                      std::size_t& next) {
  std::string_view line;
  if (auto st = line_at(buf, pos, line, next); st != parse_state::ok) return st;
  if (line.empty()) return parse_state::bad;
  type = line[0];
  if (type == '+' || type == '-' || type == ':') {
    text = line.substr(1);
    return parse_state::ok;
  }
  if (type != '$') return parse_state::bad;
  long long len = 0;
  if (!to_int(line.substr(1), len)) return parse_state::bad;
  if (len < 0) {  // null bulk string
    text = {};
    return parse_state::ok;
  }
  const auto n = static_cast<std::size_t>(len);
  if (buf.size() < next + n + 2) return parse_state::need_more;
  text = buf.substr(next, n);
  next += n + 2;
  return parse_state::ok;
}

parse_state value_at(std::string_view buf, resp_value& v, std::size_t& used) {
  if (buf.empty()) return parse_state::need_more;
  if (buf[0] != '*') return simple_at(buf, 0, v.type, v.text, used);
  std::string_view line;
  std::size_t pos = 0;
  if (auto st = line_at(buf, 0, line, pos); st != parse_state::ok) return st;
  long long count = 0;
  if (!to_int(line.substr(1), count) || count < 0 || count > 4) return parse_state::bad;
  v.type = '*';
  v.item_count = static_cast<std::size_t>(count);
  for (std::size_t i = 0; i < v.item_count; ++i) {
    if (pos < buf.size() && buf[pos] == '*') return parse_state::bad;  // nested: not from pub/sub
    if (auto st = simple_at(buf, pos, v.item_types[i], v.items[i], pos); st != parse_state::ok)
      return st;
  }
  used = pos;
  return parse_state::ok;
}

class redis_conn final : public socket_conn {
 public:
  explicit redis_conn(int fd) : socket_conn(fd) {}

  void handshake(std::string_view, clock::time_point deadline) override { sync(deadline); }

  void subscribe(std::string_view subject, std::string_view group,
                 clock::time_point deadline) override {
    if (!group.empty()) throw bench_error("Redis pub/sub has no queue groups");
    command({"SUBSCRIBE", subject});
    const std::uint64_t want = ++subscribes_wanted_;
    wait_until([&] { return subscribes_acked_ >= want; }, deadline, "redis SUBSCRIBE reply");
  }

  void queue_publish(std::string_view subject, std::span<const std::byte>,
                     std::span<const std::byte> payload, std::string_view reply_to) override {
    if (!reply_to.empty()) throw bench_error("Redis pub/sub has no request/reply");
    out_.append("*3\r\n$7\r\nPUBLISH\r\n$");
    out_.append_number(subject.size());
    out_.append("\r\n");
    out_.append(subject);
    out_.append("\r\n$");
    out_.append_number(payload.size());
    out_.append("\r\n");
    out_.append(payload);
    out_.append("\r\n");
  }

  std::size_t out_size() const noexcept override { return out_.size(); }

 protected:
  std::span<std::byte> in_space() override { return in_.space(); }

  void in_commit(std::size_t n, std::uint64_t now) override {
    in_.commit(n);
    for (;;) {
      resp_value v;
      std::size_t used = 0;
      const auto st = value_at(in_.unparsed(), v, used);
      if (st == parse_state::need_more) return;
      if (st == parse_state::bad)
        return fail("unexpected reply from redis-server: " +
                    std::string(in_.unparsed().substr(0, 80)));
      dispatch(v, now);
      in_.consume(used);
    }
  }

  std::span<const std::byte> out_front() const noexcept override { return out_.front(); }
  void out_consume(std::size_t n) noexcept override { out_.consume(n); }
  void queue_ping() override { command({"PING"}); }

 private:
  void command(std::initializer_list<std::string_view> args) {
    out_.append("*");
    out_.append_number(args.size());
    out_.append("\r\n");
    for (auto a : args) {
      out_.append("$");
      out_.append_number(a.size());
      out_.append("\r\n");
      out_.append(a);
      out_.append("\r\n");
    }
  }

  void dispatch(const resp_value& v, std::uint64_t now) {
    switch (v.type) {
      case ':':
        ++publish_replies_;
        return;  // PUBLISH: receivers reached
      case '+':
        if (v.text == "PONG") ++pongs_received_;
        return;
      case '-':
        server_error(std::string(v.text));
        return;
      case '*':
        break;
      default:
        return;
    }
    if (v.item_count == 0) return;
    const std::string_view kind = v.items[0];
    if (kind == "message" && v.item_count == 3) {
      if (sink_ != nullptr)
        sink_->on_delivery(
            {reinterpret_cast<const std::byte*>(v.items[2].data()), v.items[2].size()}, {}, now);
    } else if (kind == "subscribe") {
      ++subscribes_acked_;
    } else if (kind == "pong") {  // PING in subscribed mode
      ++pongs_received_;
    }
  }

  in_text in_;
  out_text out_;
  std::uint64_t subscribes_wanted_ = 0;
  std::uint64_t subscribes_acked_ = 0;
};

}  // namespace

std::unique_ptr<conn> make_redis_conn(int fd) {
  return std::make_unique<redis_conn>(fd);
}

}  // namespace keyway::bench::e2e
