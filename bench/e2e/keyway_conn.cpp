// The Keyway adapter: the wire protocol spoken through the proto codec
// directly (proto::encoder, proto::decoder, proto::validate_server_frame), not
// through keyway::client, so that the generator pays only for encoding and
// decoding, like the NATS and Redis adapters, and not for the client
// library's locking and call bookkeeping. Every server frame is validated,
// as keyway::client does.
#include "bench/e2e/conn.hpp"
#include "proto/codec.hpp"

#include <algorithm>
#include <vector>

namespace keyway::bench::e2e {
namespace {

namespace wire = proto::wire;

class keyway_conn final : public socket_conn {
 public:
  explicit keyway_conn(int fd) : socket_conn(fd), out_(256 * 1024) {}

  void handshake(std::string_view name, clock::time_point deadline) override {
    check(enc_->hello(out_, {proto::protocol_version, name, {}}), "hello");
    wait_until([&] { return welcomed_; }, deadline, "keyway hello/welcome");
  }

  void subscribe(std::string_view subject, std::string_view group,
                 clock::time_point deadline) override {
    const std::uint64_t id = next_id_++;
    check(enc_->subscribe(out_, {next_sid_++, subject, group, id}), "subscribe");
    wait_until([&] { return acked(id); }, deadline,
               "keyway subscribe ack for " + std::string(subject));
  }

  void queue_publish(std::string_view subject, std::span<const std::byte> key,
                     std::span<const std::byte> payload, std::string_view reply_to) override {
    if (batching_ && batch_version_ && reply_to.empty()) {
      if (staged_count_ != 0 && (subject != staged_subject_ || staged_.size() >= max_batch_bytes))
        end_publishes();
      if (staged_count_ == 0) staged_subject_.assign(subject);
      const std::size_t at = staged_.size();
      staged_.resize(at + proto::batch_entry_size(key.size(), payload.size()));
      proto::write_batch_entry(staged_.data() + at, key, payload);
      ++staged_count_;
      return;
    }
    end_publishes();  // keeps the order of what was staged before
    proto::publish_fields f;
    f.subject = subject;
    f.key = key;
    f.payload = payload;
    f.reply_to = reply_to;
    if (!enc_->publish(out_, f)) fail("cannot encode a publish");
  }

  void end_publishes() override {
    if (staged_count_ == 0) return;
    check(enc_->publish_batch(out_, staged_subject_, staged_count_, staged_), "publishBatch");
    staged_.clear();
    staged_count_ = 0;
  }

  std::size_t out_size() const noexcept override { return out_.size(); }

 protected:
  std::span<std::byte> in_space() override { return dec_->prepare(64 * 1024); }

  void in_commit(std::size_t n, std::uint64_t now) override {
    dec_->commit(n);
    for (;;) {
      auto next = dec_->next();
      if (!next) return fail("undecodable stream from keywayd: " + dec_->error().message());
      if (!next->has_value()) return;
      const proto::frame& f = **next;
      if (auto st = proto::validate_server_frame(f, limits_); !st)
        return fail("invalid frame from keywayd: " + st.message());
      if (const proto::delivery_view* d = f.delivery()) {
        if (sink_ != nullptr) sink_->on_delivery(d->payload, d->reply_to, now);
        continue;
      }
      if (const proto::message_batch_view* b = f.message_batch()) {
        if (sink_ != nullptr)
          proto::for_each_delivery(
              *b, [&](const proto::delivery_view& d) { sink_->on_delivery(d.payload, {}, now); });
        continue;
      }
      const wire::Frame::Reader root = f.root();
      switch (root.which()) {
        case wire::Frame::ACK:
          acks_.push_back(root.getAck().getRequestId());
          break;
        case wire::Frame::ERROR: {
          const auto e = root.getError();
          std::string text = std::string(proto::to_string(proto::from_wire(e.getCode()))) + ": " +
                             std::string(proto::as_string_view(e.getMessage()));
          if (e.getRequestId() != 0) refused_.push_back(e.getRequestId());
          if (e.getFatal()) return fail("fatal error from keywayd: " + text);
          server_error(std::move(text));
          break;
        }
        case wire::Frame::WELCOME:
          welcomed_ = true;
          batch_version_ = root.getWelcome().getProtocolVersion() >= proto::batch_version;
          break;
        case wire::Frame::PING:
          check(enc_->pong(out_, root.getPing().getId()), "pong");
          break;
        case wire::Frame::PONG:
          ++pongs_received_;
          break;
        default:
          break;  // a newer server's kind: ignore, as a client must
      }
    }
  }

  std::span<const std::byte> out_front() const noexcept override { return out_.front(); }
  void out_consume(std::size_t n) noexcept override { out_.consume(n); }
  void queue_ping() override {
    end_publishes();
    check(enc_->ping(out_, pings_sent_ + 1), "ping");
  }

 private:
  void check(const result<std::size_t>& r, const char* what) {
    if (!r)
      throw bench_error(std::string("cannot encode a keyway ") + what + ": " + r.error().message());
  }
  bool acked(std::uint64_t id) {
    if (std::find(refused_.begin(), refused_.end(), id) != refused_.end())
      throw bench_error("keywayd refused request " + std::to_string(id) + ": " +
                        last_server_error());
    return std::find(acks_.begin(), acks_.end(), id) != acks_.end();
  }

  proto::limits limits_{};
  // Behind pointers: the decoder's Cap'n Proto reader has a noexcept(false)
  // destructor, which a conn (noexcept destructor) cannot hold by value.
  std::unique_ptr<proto::encoder> enc_ = std::make_unique<proto::encoder>(limits_);
  std::unique_ptr<proto::decoder> dec_ = std::make_unique<proto::decoder>(limits_, 256 * 1024);
  proto::out_buffer out_;
  bool welcomed_ = false;
  bool batch_version_ = false;  // the welcome agreed on a version with publishBatch
  // Publishes gathered for one publishBatch: its subject, entries in wire layout.
  std::string staged_subject_;
  std::vector<std::byte> staged_;
  std::uint32_t staged_count_ = 0;
  static constexpr std::size_t max_batch_bytes = 64 * 1024;  // far inside limits.max_frame
  std::uint32_t next_sid_ = 1;
  std::uint64_t next_id_ = 1;
  std::vector<std::uint64_t> acks_;  // setup only: a handful of entries
  std::vector<std::uint64_t> refused_;
};

}  // namespace

std::unique_ptr<conn> make_keyway_conn(int fd) {
  return std::make_unique<keyway_conn>(fd);
}

}  // namespace keyway::bench::e2e
