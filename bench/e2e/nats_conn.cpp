// The NATS adapter: the core text protocol of nats-server (INFO, CONNECT,
// PUB, SUB with an optional queue group, MSG, PING/PONG, +OK/-ERR). No
// headers, verbose off, as the official clients run.
// https://docs.nats.io/reference/reference-protocols/nats-protocol
#include "bench/e2e/conn.hpp"
#include "bench/e2e/text_buffer.hpp"

#include <charconv>

namespace keyway::bench::e2e {
namespace {

bool parse_size(std::string_view s, std::size_t& out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

class nats_conn final : public socket_conn {
 public:
  explicit nats_conn(int fd) : socket_conn(fd) {}

  void handshake(std::string_view name, clock::time_point deadline) override {
    wait_until([&] { return got_info_; }, deadline, "nats INFO");
    out_.append(
        R"(CONNECT {"verbose":false,"pedantic":false,"lang":"c++","version":"0.1.0","protocol":1,"name":")");
    out_.append(name);
    out_.append("\"}\r\n");
    sync(deadline);  // the server has accepted CONNECT
  }

  void subscribe(std::string_view subject, std::string_view group,
                 clock::time_point deadline) override {
    out_.append("SUB ");
    out_.append(subject);
    if (!group.empty()) {
      out_.append(" ");
      out_.append(group);
    }
    out_.append(" ");
    out_.append_number(next_sid_++);
    out_.append("\r\n");
    // nats-server handles a connection's input in order: once PONG comes
    // back, the subscription is in the server's index.
    sync(deadline);
  }

  void queue_publish(std::string_view subject, std::span<const std::byte>,
                     std::span<const std::byte> payload, std::string_view reply_to) override {
    out_.append("PUB ");
    out_.append(subject);
    out_.append(" ");
    if (!reply_to.empty()) {
      out_.append(reply_to);
      out_.append(" ");
    }
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
      const std::string_view buf = in_.unparsed();
      const auto eol = buf.find("\r\n");
      if (eol == std::string_view::npos) return;
      const std::string_view line = buf.substr(0, eol);
      if (line.starts_with("MSG ")) {
        // MSG <subject> <sid> [reply-to] <#bytes>
        std::string_view tok[5];
        std::size_t count = 0;
        std::string_view rest = line.substr(4);
        while (!rest.empty() && count < 5) {
          const auto sp = rest.find(' ');
          tok[count++] = rest.substr(0, sp);
          rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
        }
        std::size_t len = 0;
        if ((count != 3 && count != 4) || !parse_size(tok[count - 1], len))
          return fail("bad MSG line from nats-server: " + std::string(line.substr(0, 120)));
        const std::size_t total = eol + 2 + len + 2;
        if (buf.size() < total) return;  // the payload is not all here yet
        const std::string_view payload = buf.substr(eol + 2, len);
        const std::string_view reply_to = count == 4 ? tok[2] : std::string_view{};
        if (sink_ != nullptr)
          sink_->on_delivery({reinterpret_cast<const std::byte*>(payload.data()), payload.size()},
                             reply_to, now);
        in_.consume(total);
        continue;
      }
      if (line == "PING") {
        out_.append("PONG\r\n");
      } else if (line == "PONG") {
        ++pongs_received_;
      } else if (line.starts_with("INFO ")) {
        got_info_ = true;
      } else if (line.starts_with("-ERR")) {
        server_error(std::string(line));
      } else if (line != "+OK") {
        return fail("unexpected line from nats-server: " + std::string(line.substr(0, 120)));
      }
      in_.consume(eol + 2);
    }
  }

  std::span<const std::byte> out_front() const noexcept override { return out_.front(); }
  void out_consume(std::size_t n) noexcept override { out_.consume(n); }
  void queue_ping() override { out_.append("PING\r\n"); }

 private:
  in_text in_;
  out_text out_;
  bool got_info_ = false;
  std::size_t next_sid_ = 1;
};

}  // namespace

std::unique_ptr<conn> make_nats_conn(int fd) {
  return std::make_unique<nats_conn>(fd);
}

}  // namespace keyway::bench::e2e
