// proto::encoder: plain C++ values in, framed Frame messages appended to an
// out_buffer. The daemon and the client library never touch capnp builders.
//
// Threading: one encoder per thread (a worker, or a client connection); it
// is not thread-safe. Encoding into different out_buffers is fine.
//
// Cost: each frame is built by a capnp::MallocMessageBuilder whose first
// segment is the encoder's reused, zeroed scratch array (sized from
// limits.max_frame), then copied once into the out_buffer behind its segment
// table; the builder zeroes the used scratch on the way out. A frame within
// max_frame therefore does not allocate. message_ref() writes large payloads
// by reference instead (no copy at all); that path allocates Cap'n Proto's
// small multi-segment bookkeeping once per frame, which is why it is only
// used above `ref_threshold` bytes. The two most frequent frames, a publish and
// a delivery without headers, skip the builder: plain_publish(),
// plain_message() and stamped_message() write them word by word, and so do
// the batches of protocol version 2 (publish_batch(), message_batch_writer).
//
// Errors: every function returns the frame's wire size, or errc::frame_too_large
// (the frame would exceed limits.max_frame; nothing is appended) or
// errc::internal (Cap'n Proto refused the input, e.g. a list over 2^29
// entries; nothing is appended). Never throws.
#pragma once

#include <keyway/result.hpp>
#include "proto/errc.hpp"
#include "proto/fields.hpp"
#include "proto/keyway.capnp.h"
#include "proto/limits.hpp"
#include "proto/out_buffer.hpp"

#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace keyway::proto {

struct hello_fields {
  std::uint32_t protocol_version = proto::protocol_version;
  std::string_view client_name{};
  std::string_view auth_token{};  // empty = none
};

struct welcome_fields {
  std::string_view server_id{};
  std::string_view server_version{};
  std::uint32_t protocol_version = proto::protocol_version;
  std::uint32_t worker_count = 0;
  limits server_limits;                 // announced in welcome.limits
  std::uint32_t max_subscriptions = 0;  // 0 = not announced
  std::uint64_t max_pending_bytes = 0;  // 0 = not announced
  /// Welcome.connectUrls: other client URLs of the deployment; empty = none.
  std::span<const std::string> connect_urls{};
};

struct publish_fields {
  std::string_view subject{};
  std::span<const std::byte> key{};
  std::span<const std::byte> payload{};
  std::span<const header> headers{};
  std::string_view reply_to{};  // empty = none
  std::uint64_t ack_id = 0;     // 0 = no ack wanted
};

struct subscribe_fields {
  std::uint32_t sid = 0;
  std::string_view pattern{};
  std::string_view queue_group{};  // empty = none
  std::uint64_t request_id = 0;    // 0 = no ack wanted
};

struct delivery_fields {
  std::uint32_t sid = 0;
  std::string_view subject{};
  std::span<const std::byte> key{};
  std::span<const std::byte> payload{};
  std::span<const header> headers{};
  std::string_view reply_to{};
  std::uint32_t owner_core = 0;
  std::uint64_t seq = 0;
};

struct error_fields {
  errc code = errc::internal;
  std::string_view message{};
  std::uint64_t request_id = 0;
  bool fatal = false;
  std::string_view reply_to{};  // no_responders: the request's reply_to
};

/// A messageBatch (protocol version 2) written in place at the end of an
/// out_buffer, one delivery at a time, so that the deliveries queued for one
/// subscription between two socket writes go out as one frame: start() writes
/// its head and subject and the first entry, add() one more, finish() the
/// final sizes into its head and the padding. While a batch is open, nothing
/// else may be appended to that out_buffer (finish() first) and none of it
/// may be consumed. Deliveries with headers or a replyTo are Message frames;
/// the caller decides (accepts()) and keeps batches under `max_bytes`.
/// Threading: the out_buffer's. start() and add() may throw std::bad_alloc
/// (nothing of the entry is then appended; an open batch stays valid).
class message_batch_writer {
 public:
  explicit message_batch_writer(std::size_t max_bytes) noexcept : max_bytes_(max_bytes) {}

  bool open() const noexcept { return bytes_ != 0; }
  /// Whether `f` can be added to the open batch: same sid and subject, room left.
  bool accepts(const delivery_fields& f) const noexcept {
    return open() && f.sid == sid_ && bytes_ + entry_size(f) + 8 <= max_bytes_ &&
           f.subject == subject_;
  }
  /// Whether a batch of `f` alone fits max_bytes.
  bool fits(const delivery_fields& f) const noexcept {
    return start_size(f.subject) + entry_size(f) + 8 <= max_bytes_;
  }
  /// Finishes any open batch and starts one with `f` (no headers, no replyTo).
  void start(out_buffer& out, const delivery_fields& f);
  /// Adds `f` to the open batch (accepts(f) holds).
  void add(out_buffer& out, const delivery_fields& f);
  /// Completes the open batch, if any. Never allocates (start() and add()
  /// left room for the padding).
  void finish(out_buffer& out) noexcept;
  /// Forgets the open batch after its out_buffer was cleared.
  void discard() noexcept { bytes_ = 0; }

 private:
  static std::size_t entry_size(const delivery_fields& f) noexcept;
  static std::size_t start_size(std::string_view subject) noexcept;

  std::size_t max_bytes_;
  std::size_t bytes_ = 0;  // of the open frame so far, without the entries' padding; 0 = none open
  std::size_t entries_ = 0;  // bytes of its entries
  std::uint32_t count_ = 0;
  std::uint32_t sid_ = 0;
  std::string subject_;  // a copy: the delivery's subject does not outlive the call
};

class encoder {
 public:
  static constexpr std::size_t default_ref_threshold = 8 * 1024;

  /// `lim.max_frame` bounds every frame encoded and sizes the scratch segment
  /// (allocated zeroed with calloc, so untouched pages cost no memory).
  explicit encoder(const limits& lim = {}, std::size_t ref_threshold = default_ref_threshold);
  encoder(const encoder&) = delete;
  encoder& operator=(const encoder&) = delete;

  result<std::size_t> hello(out_buffer& out, const hello_fields& f) noexcept;
  result<std::size_t> welcome(out_buffer& out, const welcome_fields& f) noexcept;
  result<std::size_t> publish(out_buffer& out, const publish_fields& f) noexcept;
  /// publish() without headers, written directly in the builder's layout (the
  /// hot path of clients); built_publish() goes through the builder (the
  /// reference). Public so tests can compare their bytes.
  result<std::size_t> plain_publish(out_buffer& out, const publish_fields& f) noexcept;
  result<std::size_t> built_publish(out_buffer& out, const publish_fields& f) noexcept;
  /// A publishBatch (protocol version 2: send it only when welcome says so)
  /// of `count` entries to `subject`, `entries` already in the wire layout
  /// (write_batch_entry() in proto/fields.hpp), copied once. Written directly
  /// in the builder's layout, like plain_publish().
  result<std::size_t> publish_batch(out_buffer& out, std::string_view subject, std::uint32_t count,
                                    std::span<const std::byte> entries) noexcept;
  result<std::size_t> subscribe(out_buffer& out, const subscribe_fields& f) noexcept;
  result<std::size_t> unsubscribe(out_buffer& out, std::uint32_t sid,
                                  std::uint64_t request_id = 0) noexcept;
  /// One delivery; the payload is copied into `out`.
  result<std::size_t> message(out_buffer& out, const delivery_fields& f) noexcept;
  /// message() without headers, written directly in the builder's layout
  /// (the hot path; message() takes it when there are no headers). Public so
  /// tests can compare its bytes with the builder's.
  result<std::size_t> plain_message(out_buffer& out, const delivery_fields& f) noexcept;
  /// A delivery without headers whose field bytes are kept in the frame's
  /// layout (daemon/shared_message.hpp), so that sending it to a subscriber is
  /// 11 words written from the sizes and one copy. write_plain_message_lists()
  /// writes the four byte lists as plain_message() lays them out (subject,
  /// key, replyTo, payload, each NUL-ended and padded as the frame has them),
  /// plain_message_lists_size() bytes at `dst`, and returns where each field
  /// starts. stamped_message() appends the frame of `f` taking those lists from
  /// `lists` (written for the same sizes; `f`'s byte views are not read), the
  /// same bytes as plain_message() and refused the same way. A payload of
  /// ref_threshold bytes or more is appended by reference, as message_ref()
  /// does: `lists` must then outlive its consumption from `out`.
  struct plain_message_offsets {
    std::size_t subject = 0, key = 0, reply_to = 0, payload = 0;
  };
  static std::size_t plain_message_lists_size(const delivery_fields& f) noexcept;
  static plain_message_offsets write_plain_message_lists(std::byte* dst,
                                                         const delivery_fields& f) noexcept;
  result<std::size_t> stamped_message(out_buffer& out, const delivery_fields& f,
                                      std::span<const std::byte> lists) noexcept;
  /// message() through the capnp builder whatever the fields (the reference).
  result<std::size_t> built_message(out_buffer& out, const delivery_fields& f) noexcept;
  /// One delivery whose payload is appended by reference when it is at least
  /// ref_threshold bytes and 8-byte aligned (else it is copied, as message()).
  /// The payload must outlive its consumption from `out` (see out_buffer).
  /// On the wire it is segment 1 of a two-segment frame, zero padded.
  result<std::size_t> message_ref(out_buffer& out, const delivery_fields& f) noexcept;
  result<std::size_t> ack(out_buffer& out, std::uint64_t request_id,
                          std::uint32_t delivered) noexcept;
  result<std::size_t> error(out_buffer& out, const error_fields& f) noexcept;
  /// An error frame from a failed status, fatal per fatal_by_default(code).
  result<std::size_t> error(out_buffer& out, const status& st,
                            std::uint64_t request_id = 0) noexcept;
  result<std::size_t> ping(out_buffer& out, std::uint64_t id) noexcept;
  result<std::size_t> pong(out_buffer& out, std::uint64_t id) noexcept;
  /// The server is shutting down (lame duck): `reason` for humans, and how
  /// long it keeps reading this connection (Draining.graceMs; 0 = stops now).
  result<std::size_t> draining(out_buffer& out, std::string_view reason,
                               std::uint32_t grace_ms = 0) noexcept;

  /// Any frame, filled in by `build(wire::Frame::Builder)`: for tests and for
  /// kinds added later. Exceptions from `build` become errc::internal.
  template <class Build>
  result<std::size_t> encode(out_buffer& out, Build&& build) noexcept {
    try {
      capnp::MallocMessageBuilder msg(scratch());
      build(msg.initRoot<wire::Frame>());
      return emit(out, msg, {});
    } catch (...) {
      return unexpected(errc::internal);
    }
  }

  std::size_t max_frame() const noexcept { return max_frame_; }

 private:
  struct free_deleter {
    void operator()(capnp::word* p) const noexcept { std::free(p); }
  };

  kj::ArrayPtr<capnp::word> scratch() noexcept { return {scratch_.get(), scratch_words_}; }
  /// Appends the segment table and segments of `msg`; `external` is the
  /// payload segment to append by reference, if any.
  result<std::size_t> emit(out_buffer& out, capnp::MessageBuilder& msg,
                           std::span<const std::byte> external);

  std::size_t max_frame_;
  std::size_t ref_threshold_;
  std::size_t scratch_words_;
  std::unique_ptr<capnp::word[], free_deleter> scratch_;
};

}  // namespace keyway::proto
