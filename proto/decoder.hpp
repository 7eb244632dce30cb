// proto::decoder: bytes from a stream in, validated Frame readers out.
//
// Threading: a decoder belongs to one connection and is used by the thread
// that owns the connection; it is not thread-safe. Frames it returns are views
// into its buffer and must not cross threads.
//
// Cost: the steady state does not allocate. Bytes are read straight into a
// word-aligned buffer (prepare/commit); a frame is read in place with a
// capnp::SegmentArrayMessageReader that lives inside the decoder. The buffer
// grows only when one frame is larger than it, and only after the segment
// table has been checked against the limits: a table announcing 4 GiB is
// refused before a single byte is allocated. What still allocates:
//   - a frame with more than one segment: Cap'n Proto's reader arena allocates
//     a small map the first time a second segment is touched;
//   - errors: the message is a std::string, and kj builds its exception text.
//
// Validation: next() reads every field of the frame's kind once (typed), under
// a traversal limit of limits.traversal_limit_words(frame size) and
// limits.nesting_limit, inside try/catch. A frame that comes out of next()
// can therefore be read without any kj::Exception, as long as each field is
// read only a few times (every read counts against the traversal budget;
// each frame gets limits.traversal_factor times its own size). Unknown frame
// kinds (a newer peer) pass next() unread; validate_client_frame() rejects them.
//
// Hot path: a one-segment publish or delivery without headers (nearly all of
// them) is read by hand instead (proto/flat.hpp: every pointer is checked
// against the segment; anything the hand reader does not accept goes the
// capnp way above), into frame::publish() or frame::delivery(); capnp's reader
// is then built only if frame::root() is called.
//
// Batches (protocol version 2): a publishBatch or messageBatch is read by
// capnp's reader into frame::publish_batch() / frame::message_batch(), one
// reader for many messages; batch_cursor (proto/fields.hpp) walks the entries.
#pragma once

#include <keyway/result.hpp>
#include "proto/capnp_views.hpp"
#include "proto/errc.hpp"
#include "proto/fields.hpp"
#include "proto/keyway.capnp.h"
#include "proto/limits.hpp"

#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace keyway::proto {

/// "publish", "welcome", ... ; "unknown" for a kind this build does not know.
std::string_view kind_name(wire::Frame::Which kind) noexcept;

class decoder;

/// One decoded frame: a view into the decoder that produced it. Valid until
/// the next call to that decoder's next(), prepare(), feed(), shrink() or
/// reset(), or its destruction, whichever comes first. commit() and the
/// const accessors do not invalidate it. Cheap to copy (a few pointers).
class frame {
 public:
  /// The capnp root. For a publish or delivery the decoder read by hand,
  /// capnp's reader is built only when this is first called.
  wire::Frame::Reader root() const noexcept;
  /// May be a value outside the enum (a newer peer's kind); check with a
  /// switch that has a default.
  wire::Frame::Which which() const noexcept { return which_; }
  /// Bytes this frame took on the wire, segment table included.
  std::size_t wire_size() const noexcept { return wire_size_; }
  std::uint32_t segment_count() const noexcept { return segments_; }
  /// A publish's fields, read once by the decoder; null for other kinds.
  const publish_view* publish() const noexcept { return publish_; }
  /// A delivery's (Message frame's) fields, read once; null for other kinds.
  const delivery_view* delivery() const noexcept { return delivery_; }
  /// A publishBatch's subject and entries, read once; null for other kinds.
  const publish_batch_view* publish_batch() const noexcept { return batch_; }
  /// A messageBatch's sid, subject and entries, read once; null for other kinds.
  const message_batch_view* message_batch() const noexcept { return message_batch_; }

 private:
  friend class decoder;
  frame(wire::Frame::Reader root, std::size_t wire_size, std::uint32_t segments,
        const publish_view* publish, const delivery_view* delivery) noexcept
      : root_(root),
        which_(root.which()),
        wire_size_(wire_size),
        segments_(segments),
        publish_(publish),
        delivery_(delivery) {}
  // A hand-read frame: the root comes from `lazy` on demand.
  frame(const decoder* lazy, wire::Frame::Which which, std::size_t wire_size,
        const publish_view* publish, const delivery_view* delivery) noexcept
      : which_(which),
        wire_size_(wire_size),
        segments_(1),
        publish_(publish),
        delivery_(delivery),
        lazy_(lazy) {}

  wire::Frame::Reader root_;
  wire::Frame::Which which_;
  std::size_t wire_size_;
  std::uint32_t segments_;
  const publish_view* publish_;
  const delivery_view* delivery_;
  const publish_batch_view* batch_ = nullptr;
  const message_batch_view* message_batch_ = nullptr;
  const decoder* lazy_ = nullptr;
};

/// Reads a publish into `view` once, header entries into `headers` (reused;
/// left empty when the list is longer than `max_headers`). May throw
/// kj::Exception on a malformed frame.
void read_publish(wire::Publish::Reader p, std::uint32_t max_headers, std::vector<header>& headers,
                  publish_view& view);

/// The same for a delivery (may throw kj::Exception).
void read_delivery(wire::Message::Reader m, std::uint32_t max_headers, std::vector<header>& headers,
                   delivery_view& view);

/// The same for a one-segment frame read by hand (proto/flat.hpp), without
/// capnp's reader: true and `view` filled if `segment` is a Frame holding a
/// publish (a delivery) without headers, every pointer checked; false for
/// anything else, which the caller then reads with capnp (and `view` may hold
/// garbage).
bool read_flat_publish(std::span<const std::byte> segment, publish_view& view) noexcept;
bool read_flat_delivery(std::span<const std::byte> segment, delivery_view& view) noexcept;

class decoder {
 public:
  static constexpr std::size_t default_initial_capacity = 16 * 1024;

  explicit decoder(const limits& lim = {}, std::size_t initial_capacity = default_initial_capacity);
  decoder(const decoder&) = delete;
  decoder& operator=(const decoder&) = delete;
  ~decoder();

  /// Writable space at the end of the buffer, at least max(min_bytes, wanted(), 1)
  /// bytes (often more: all free space is offered). Consumes the frame last
  /// returned by next(); may slide unread bytes to the front (alignment kept)
  /// or grow the buffer. Follow with commit(bytes actually written).
  std::span<std::byte> prepare(std::size_t min_bytes);
  /// Marks `n` bytes of the span from the last prepare() as received.
  void commit(std::size_t n) noexcept;
  /// Copies `bytes` in (for tests and fuzzers): prepare + memcpy + commit.
  void feed(std::span<const std::byte> bytes);

  /// The next frame; std::nullopt when more bytes are needed; an error when the
  /// stream is broken (errc::frame_too_large or errc::protocol). After an
  /// error every later call returns the same error: send an error frame with
  /// error().message(), then close the connection. Never throws.
  result<std::optional<frame>> next() noexcept;

  /// The failure next() reported, with a message naming the limit; ok() before.
  const status& error() const noexcept { return error_; }
  bool failed() const noexcept { return !error_.ok(); }

  /// Bytes received and not yet returned as frames (the last returned frame
  /// counts until it is consumed).
  std::size_t buffered() const noexcept { return end_ - begin_; }
  /// Bytes still missing to complete the frame at the front, once its segment
  /// table is in and valid; 0 otherwise.
  std::size_t wanted() const noexcept;
  std::size_t capacity() const noexcept { return capacity_; }
  const limits& get_limits() const noexcept { return limits_; }

  /// Refuses frames larger than `bytes` (below limits.max_frame) until
  /// lift_frame_cap(): a connection's window before its hello, so that an
  /// unauthenticated peer can make the decoder buffer only a hello-sized
  /// frame. `what` names the cap in the error message.
  void cap_frames(std::uint32_t bytes, std::string what);
  void lift_frame_cap() noexcept;

  /// Gives memory back after a burst of big frames: reallocates to
  /// max(buffered(), target) bytes if capacity() is larger. True if it did.
  bool shrink(std::size_t target);
  /// Forgets buffered bytes and any error (a reused decoder for a new stream).
  void reset() noexcept;

 private:
  struct header_info {
    std::uint32_t segments = 0;
    std::size_t table_bytes = 0;
    std::size_t frame_bytes = 0;
  };
  enum class header_state { need_more, ok, bad };

  header_state parse_header(header_info& out) const noexcept;
  void release_current() noexcept;
  void make_room(std::size_t bytes);
  unexpected fail(errc code, std::string message);
  friend class frame;
  /// The current frame's capnp root, building the reader if the frame was
  /// read by hand. A default (empty) root if capnp refuses what the hand
  /// reader accepted, which flat_test checks does not happen.
  wire::Frame::Reader lazy_root() const noexcept;
  capnp::ReaderOptions reader_options(std::size_t frame_bytes) const noexcept;

  const std::byte* bytes() const noexcept {
    return reinterpret_cast<const std::byte*>(buffer_.get());
  }
  std::byte* bytes() noexcept { return reinterpret_cast<std::byte*>(buffer_.get()); }

  limits limits_;
  std::uint32_t frame_cap_;     // limits_.max_frame unless cap_frames() lowered it
  std::string frame_cap_what_;  // names the cap in messages when lowered
  std::unique_ptr<capnp::word[]> buffer_;
  std::size_t capacity_ = 0;  // bytes, a multiple of 8
  std::size_t begin_ = 0;     // first unread byte; always a multiple of 8
  std::size_t end_ = 0;       // one past the last received byte
  std::size_t current_ = 0;   // bytes of the frame last returned, consumed on the next call
  std::vector<kj::ArrayPtr<const capnp::word>> segments_;  // max_segments entries, reused
  // Built for every frame but a hand-read publish, whose root() builds it (so mutable).
  mutable std::optional<capnp::SegmentArrayMessageReader> reader_;
  publish_view publish_;              // the current frame's, when it is a publish
  delivery_view delivery_;            // the current frame's, when it is a delivery
  publish_batch_view batch_;          // the current frame's, when it is a publishBatch
  message_batch_view message_batch_;  // ... a messageBatch
  std::vector<header> headers_;       // its headers, reused
  status error_;
};

}  // namespace keyway::proto
