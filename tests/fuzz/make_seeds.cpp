// make_seeds: writes the binary seed corpora of fuzz_decoder and fuzz_flat,
// encoded by proto::encoder so that they follow the schema as it is:
//   OUT/decoder/*: a control byte (see fuzz_decoder.cpp) and a stream of frames
//                  (client sessions: hello, publishes with and without key,
//                  headers, replyTo and ackId, publishBatch, subscribe,
//                  unsubscribe, ping, pong; server streams: welcome, message,
//                  messageBatch, ack, error), each under a few control bytes;
//   OUT/flat/*:    single frames' one segment, without the segment table.
// Usage: make_seeds OUT. Run by scripts/fuzz before fuzzing.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/encoder.hpp"
#include "proto/fields.hpp"
#include "proto/out_buffer.hpp"

namespace {

using namespace keyway;
using bytes = std::vector<std::byte>;

std::span<const std::byte> b(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

bytes drain(proto::out_buffer& out) {
  bytes all;
  out.drain_to(all);
  return all;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "make_seeds: encoding %s failed\n", what);
    std::exit(1);
  }
}

void write(const std::filesystem::path& file, std::uint8_t* ctl, const bytes& content) {
  std::ofstream f(file, std::ios::binary);
  if (ctl != nullptr) f.put(static_cast<char>(*ctl));
  f.write(reinterpret_cast<const char*>(content.data()),
          static_cast<std::streamsize>(content.size()));
  if (!f) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", file.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT\n");
    return 2;
  }
  const std::filesystem::path out_dir = argv[1];
  std::filesystem::create_directories(out_dir / "decoder");
  std::filesystem::create_directories(out_dir / "flat");

  proto::encoder enc(proto::limits{}, 64);  // a low reference threshold: two-segment messages too
  const proto::header hs[] = {{"trace-id", b("abc123")}, {"content-type", b("text/plain")}};

  // Single frames, each kept apart for fuzz_flat and the session seeds.
  auto one = [&](const char* what, auto&& encode) {
    proto::out_buffer out;
    check(encode(out).has_value(), what);
    return drain(out);
  };
  const bytes hello =
      one("hello", [&](auto& o) { return enc.hello(o, {.client_name = "fuzz-seed"}); });
  const bytes hello_token = one("hello with token", [&](auto& o) {
    return enc.hello(o, {.protocol_version = 1, .client_name = "v1", .auth_token = "s3cret-token"});
  });
  const bytes pub_plain = one("publish", [&](auto& o) {
    return enc.publish(o, {.subject = "orders.eu", .payload = b("order 1")});
  });
  const bytes pub_full = one("publish with key, replyTo, ackId", [&](auto& o) {
    return enc.publish(o, {.subject = "orders.eu.de",
                           .key = b("customer-42"),
                           .payload = b("order 42 payload"),
                           .reply_to = "_INBOX.abc.1",
                           .ack_id = 7});
  });
  const bytes pub_headers = one("publish with headers", [&](auto& o) {
    return enc.publish(
        o, {.subject = "time.now", .key = b("k"), .payload = b("p"), .headers = hs, .ack_id = 9});
  });
  bytes entries;
  for (const auto& [k, p] :
       {std::pair{"k1", "first"}, std::pair{"", "second"}, std::pair{"key-3", ""}}) {
    const std::size_t at = entries.size();
    entries.resize(at + proto::batch_entry_size(std::strlen(k), std::strlen(p)));
    proto::write_batch_entry(entries.data() + at, b(k), b(p));
  }
  const bytes batch = one(
      "publishBatch", [&](auto& o) { return enc.publish_batch(o, "batch.subject", 3, entries); });
  const bytes sub = one("subscribe", [&](auto& o) {
    return enc.subscribe(o, {.sid = 1, .pattern = "orders.*.>", .request_id = 11});
  });
  const bytes sub_group = one("subscribe to a queue group", [&](auto& o) {
    return enc.subscribe(o, {.sid = 2, .pattern = "jobs.>", .queue_group = "workers"});
  });
  const bytes unsub = one("unsubscribe", [&](auto& o) { return enc.unsubscribe(o, 1, 12); });
  const bytes ping = one("ping", [&](auto& o) { return enc.ping(o, 5); });
  const bytes pong = one("pong", [&](auto& o) { return enc.pong(o, 5); });

  const bytes welcome = one("welcome", [&](auto& o) {
    return enc.welcome(o, {.server_id = "0123456789abcdef",
                           .server_version = "0.1.0",
                           .worker_count = 2,
                           .max_subscriptions = 65536,
                           .max_pending_bytes = 1 << 26});
  });
  proto::delivery_fields d{.sid = 1,
                           .subject = "orders.eu",
                           .key = b("customer-1"),
                           .payload = b("order 1"),
                           .owner_core = 1,
                           .seq = 100};
  const bytes msg = one("message", [&](auto& o) { return enc.message(o, d); });
  proto::delivery_fields dh = d;
  dh.headers = hs;
  dh.reply_to = "_INBOX.x.2";
  const bytes msg_headers =
      one("message with headers", [&](auto& o) { return enc.message(o, dh); });
  static const std::string big(128, 'B');  // 8-byte aligned in a std::string's heap buffer
  proto::delivery_fields dr = d;
  dr.payload = b(big);
  const bytes msg_ref =
      one("message by reference", [&](auto& o) { return enc.message_ref(o, dr); });
  bytes msg_batch;
  {
    proto::out_buffer o;
    proto::message_batch_writer w(64 * 1024);
    w.start(o, d);
    proto::delivery_fields d2 = d;
    d2.key = b("customer-2");
    d2.seq = 101;
    w.add(o, d2);
    w.finish(o);
    msg_batch = drain(o);
  }
  const bytes ack = one("ack", [&](auto& o) { return enc.ack(o, 11, 3); });
  const bytes err = one("error", [&](auto& o) {
    return enc.error(o, proto::error_fields{.code = proto::errc::invalid_subject,
                                            .message = "pattern \"a..b\" has an empty token",
                                            .request_id = 11});
  });

  auto cat = [](std::initializer_list<const bytes*> parts) {
    bytes all;
    for (const bytes* p : parts) all.insert(all.end(), p->begin(), p->end());
    return all;
  };
  struct session {
    const char* name;
    bytes stream;
    bool client_mode;
  };
  const std::vector<session> sessions{
      {"hello", hello, false},
      {"publishes", cat({&hello, &pub_plain, &pub_full, &pub_headers, &ping, &pong}), false},
      {"subscribe", cat({&hello, &sub, &sub_group, &unsub, &ping}), false},
      {"batch", cat({&hello, &batch, &pub_plain}), false},
      {"batch-v1", cat({&hello_token, &batch}), false},
      {"no-hello", cat({&pub_full, &hello}), false},
      {"hello-twice", cat({&hello, &hello}), false},
      {"server",
       cat({&welcome, &msg, &msg_headers, &msg_ref, &msg_batch, &ack, &err, &ping, &pong}), true},
      {"server-error", cat({&err}), true},
  };
  // Control bytes: all at once, reads of up to 1, 8 and 512 bytes, small
  // limits, a 64-byte first buffer (see fuzz_decoder.cpp).
  const std::uint8_t ctls[] = {0x00, 0x01, 0x03, 0x05, 0x08, 0x12, 0x44};
  int files = 0;
  for (const session& s : sessions) {
    for (std::uint8_t ctl : ctls) {
      if (s.client_mode) ctl |= 0x20;
      char name[64];
      std::snprintf(name, sizeof name, "%s-%02x", s.name, ctl);
      write(out_dir / "decoder" / name, &ctl, s.stream);
      ++files;
    }
  }

  // fuzz_flat: the segment after a one-segment frame's 8-byte table.
  const std::pair<const char*, const bytes*> flat_frames[] = {{"publish", &pub_plain},
                                                              {"publish-full", &pub_full},
                                                              {"publish-headers", &pub_headers},
                                                              {"message", &msg},
                                                              {"message-headers", &msg_headers},
                                                              {"hello", &hello},
                                                              {"ping", &ping},
                                                              {"batch", &batch}};
  for (const auto& [name, frame] : flat_frames) {
    std::uint32_t segments_minus_one = 0;
    std::memcpy(&segments_minus_one, frame->data(), 4);
    if (segments_minus_one != 0 || frame->size() < 8) continue;
    write(out_dir / "flat" / name, nullptr, bytes(frame->begin() + 8, frame->end()));
    ++files;
  }
  std::printf("make_seeds: wrote %d seeds under %s\n", files, out_dir.c_str());
  return 0;
}
