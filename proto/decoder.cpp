#include "proto/decoder.hpp"

#include "proto/flat.hpp"

#include <kj/exception.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstring>
#include <string>

namespace keyway::proto {

static_assert(std::endian::native == std::endian::little,
              "the segment table is read with memcpy; big-endian hosts need byte swaps");

namespace {

std::size_t round_up8(std::size_t n) noexcept {
  return (n + 7) & ~std::size_t{7};
}

// kj descriptions read "expected <condition> [values]; <what is wrong>": keep
// the part a person can act on.
std::string describe(const kj::Exception& e) {
  std::string d = e.getDescription().cStr();
  if (d.rfind("expected ", 0) == 0) {
    if (auto pos = d.find("; "); pos != std::string::npos) d.erase(0, pos + 2);
  }
  return d;
}

std::uint32_t load_u32(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Reads every field of the known frame kinds once, with its schema type, so
// that bad pointers, missing NUL terminators, nesting and traversal bombs
// throw here (inside next()'s try) rather than later in the consumer.
void read_headers(capnp::List<wire::Header>::Reader headers) {
  for (auto h : headers) {
    (void)h.getName();
    (void)h.getValue();
  }
}

void read_all(wire::Frame::Reader f) {
  using W = wire::Frame;
  switch (f.which()) {
    case W::HELLO: {
      auto h = f.getHello();
      (void)h.getClientName();
      (void)h.getAuthToken();
      break;
    }
    case W::WELCOME: {
      auto w = f.getWelcome();
      (void)w.getServerId();
      (void)w.getServerVersion();
      (void)w.getLimits();
      for (auto url : w.getConnectUrls()) (void)url;
      break;
    }
    case W::PUBLISH: {
      auto p = f.getPublish();
      (void)p.getSubject();
      (void)p.getKey();
      (void)p.getPayload();
      read_headers(p.getHeaders());
      (void)p.getReplyTo();
      break;
    }
    case W::SUBSCRIBE: {
      auto s = f.getSubscribe();
      (void)s.getPattern();
      (void)s.getQueueGroup();
      break;
    }
    case W::UNSUBSCRIBE:
      (void)f.getUnsubscribe();
      break;
    case W::MESSAGE: {
      auto m = f.getMessage();
      (void)m.getSubject();
      (void)m.getKey();
      (void)m.getPayload();
      read_headers(m.getHeaders());
      (void)m.getReplyTo();
      break;
    }
    case W::ACK:
      (void)f.getAck();
      break;
    case W::ERROR: {
      auto e = f.getError();
      (void)e.getMessage();
      (void)e.getReplyTo();
      break;
    }
    case W::PING:
      (void)f.getPing();
      break;
    case W::PONG:
      (void)f.getPong();
      break;
    case W::DRAINING:
      (void)f.getDraining().getReason();
      break;
    default:
      break;  // a newer peer's kind: left unread, validation decides
  }
}

}  // namespace

std::string_view kind_name(wire::Frame::Which kind) noexcept {
  using W = wire::Frame;
  switch (kind) {
    case W::HELLO:
      return "hello";
    case W::WELCOME:
      return "welcome";
    case W::PUBLISH:
      return "publish";
    case W::SUBSCRIBE:
      return "subscribe";
    case W::UNSUBSCRIBE:
      return "unsubscribe";
    case W::MESSAGE:
      return "message";
    case W::ACK:
      return "ack";
    case W::ERROR:
      return "error";
    case W::PING:
      return "ping";
    case W::PONG:
      return "pong";
    case W::PUBLISH_BATCH:
      return "publishBatch";
    case W::MESSAGE_BATCH:
      return "messageBatch";
    case W::DRAINING:
      return "draining";
  }
  return "unknown";
}

decoder::decoder(const limits& lim, std::size_t initial_capacity)
    : limits_(lim),
      frame_cap_(lim.max_frame),
      capacity_(round_up8(std::max<std::size_t>(initial_capacity, 64))),
      segments_(std::max<std::uint32_t>(lim.max_segments, 1)) {
  buffer_ = std::make_unique_for_overwrite<capnp::word[]>(capacity_ / 8);
}

decoder::~decoder() = default;

void decoder::cap_frames(std::uint32_t bytes, std::string what) {
  frame_cap_ = std::min(bytes, limits_.max_frame);
  frame_cap_what_ = std::move(what);
}

void decoder::lift_frame_cap() noexcept {
  frame_cap_ = limits_.max_frame;
  frame_cap_what_.clear();
}

capnp::ReaderOptions decoder::reader_options(std::size_t frame_bytes) const noexcept {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits_.traversal_limit_words(frame_bytes);
  options.nestingLimit = limits_.nesting_limit;
  return options;
}

wire::Frame::Reader decoder::lazy_root() const noexcept {
  try {
    if (!reader_) reader_.emplace(kj::arrayPtr(segments_.data(), 1), reader_options(current_));
    return reader_->getRoot<wire::Frame>();
  } catch (...) {
    return {};
  }
}

wire::Frame::Reader frame::root() const noexcept {
  return lazy_ ? lazy_->lazy_root() : root_;
}

void decoder::release_current() noexcept {
  if (reader_) reader_.reset();
  begin_ += current_;
  current_ = 0;
  if (begin_ == end_) begin_ = end_ = 0;  // everything consumed: restart at the front for free
}

decoder::header_state decoder::parse_header(header_info& out) const noexcept {
  const std::size_t avail = end_ - begin_;
  if (avail < 8) return header_state::need_more;
  const std::byte* p = bytes() + begin_;
  const std::uint64_t count = std::uint64_t{load_u32(p)} + 1;
  out.segments = count > limits_.max_segments ? 0 : static_cast<std::uint32_t>(count);
  if (count > limits_.max_segments) return header_state::bad;
  out.table_bytes = round_up8(4 + 4 * static_cast<std::size_t>(count));
  if (avail < out.table_bytes) return header_state::need_more;
  std::uint64_t words = 0;
  for (std::uint64_t i = 0; i < count; ++i) words += load_u32(p + 4 + 4 * i);
  const std::uint64_t total = out.table_bytes + words * 8;  // at most 2^9 * 2^32 * 8: no overflow
  out.frame_bytes = static_cast<std::size_t>(std::min<std::uint64_t>(total, SIZE_MAX));
  return total > frame_cap_ ? header_state::bad : header_state::ok;
}

std::size_t decoder::wanted() const noexcept {
  header_info h;
  if (parse_header(h) != header_state::ok) return 0;
  const std::size_t avail = end_ - begin_;
  return avail < h.frame_bytes ? h.frame_bytes - avail : 0;
}

void decoder::make_room(std::size_t bytes_needed) {
  if (capacity_ - end_ >= bytes_needed) return;
  if (begin_ > 0) {
    // Slide the unread tail (a partial frame) to the front. begin_ is a
    // multiple of 8, so frames stay word-aligned.
    std::memmove(bytes(), bytes() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    if (capacity_ - end_ >= bytes_needed) return;
  }
  const std::size_t new_capacity = round_up8(std::max(capacity_ * 2, end_ + bytes_needed));
  auto fresh = std::make_unique_for_overwrite<capnp::word[]>(new_capacity / 8);
  std::memcpy(fresh.get(), buffer_.get(), end_);
  buffer_ = std::move(fresh);
  capacity_ = new_capacity;
}

std::span<std::byte> decoder::prepare(std::size_t min_bytes) {
  release_current();
  make_room(std::max({min_bytes, wanted(), std::size_t{1}}));
  return {bytes() + end_, capacity_ - end_};
}

void decoder::commit(std::size_t n) noexcept {
  assert(n <= capacity_ - end_);
  end_ += n;
}

void decoder::feed(std::span<const std::byte> data) {
  release_current();
  if (data.empty()) return;
  auto room = prepare(data.size());
  std::memcpy(room.data(), data.data(), data.size());
  commit(data.size());
}

unexpected decoder::fail(errc code, std::string message) {
  error_ = status(code, std::move(message));
  return unexpected(error_.error_code());
}

namespace {

// Publish and Message (the two frames on the hot path) share their pointer
// layout: subject, key, payload, headers, replyTo in pointers 0-4. Reads either
// without headers, the Frame's root read once: into `publish` or `delivery` by
// its tag, which it returns (0 when the frame is not flat).
unsigned read_flat_fields(std::span<const std::byte> segment, publish_view& publish,
                          delivery_view& delivery) noexcept {
  static_assert(wire::Frame::_capnpPrivate::dataWordSize == 1 &&
                wire::Frame::_capnpPrivate::pointerCount == 1);
  static_assert(wire::Publish::_capnpPrivate::pointerCount == 5 &&
                wire::Message::_capnpPrivate::pointerCount == 5);
  static_assert(wire::Publish::_capnpPrivate::dataWordSize == 1 &&
                wire::Message::_capnpPrivate::dataWordSize == 2);
  static_assert(wire::Frame::PUBLISH != 0 && wire::Frame::MESSAGE != 0);
  const flat::segment seg(segment.data(), segment.size() / 8);
  flat::segment::structure root, p;
  if (seg.size() == 0 || !seg.read_struct(0, root)) return 0;
  // The union tag: bits [0, 16) of the Frame's data section.
  const auto tag = static_cast<unsigned>(seg.data_word(root, 0) & 0xffff);
  if (tag != wire::Frame::PUBLISH && tag != wire::Frame::MESSAGE) return 0;
  if (root.pointers > 0 && !seg.read_struct(root.data + root.data_words, p)) return 0;
  // Headers are rare: a frame with any goes through capnp's reader.
  if (seg.pointer_word(p, 3) != 0) return 0;
  publish_view& view = tag == wire::Frame::PUBLISH ? publish : delivery;
  if (!seg.read_text(p, 0, view.subject) || !seg.read_data(p, 1, view.key) ||
      !seg.read_data(p, 2, view.payload) || !seg.read_text(p, 4, view.reply_to))
    return 0;
  view.header_count = 0;
  view.headers = {};
  view.ack_id = 0;
  if (tag == wire::Frame::PUBLISH) {
    publish.ack_id = seg.data_word(p, 0);
  } else {
    const std::uint64_t ids = seg.data_word(p, 0);
    delivery.sid = static_cast<std::uint32_t>(ids);
    delivery.owner_core = static_cast<std::uint32_t>(ids >> 32);
    delivery.seq = seg.data_word(p, 1);
  }
  return tag;
}

template <class Reader>
void read_common(Reader r, std::uint32_t max_headers, std::vector<header>& headers,
                 publish_view& view) {
  view.subject = as_string_view(r.getSubject());
  view.key = as_bytes(r.getKey());
  view.payload = as_bytes(r.getPayload());
  view.reply_to = as_string_view(r.getReplyTo());
  view.ack_id = 0;
  headers.clear();
  view.headers = {};
  view.header_count = 0;
  if (!r.hasHeaders()) return;
  const auto list = r.getHeaders();
  view.header_count = list.size();
  if (list.size() > max_headers) return;  // refused by validation, unread
  for (auto h : list) headers.push_back({as_string_view(h.getName()), as_bytes(h.getValue())});
  view.headers = headers;
}

}  // namespace

bool read_flat_publish(std::span<const std::byte> segment, publish_view& view) noexcept {
  delivery_view unused;
  return read_flat_fields(segment, view, unused) == wire::Frame::PUBLISH;
}

bool read_flat_delivery(std::span<const std::byte> segment, delivery_view& view) noexcept {
  publish_view unused;
  return read_flat_fields(segment, unused, view) == wire::Frame::MESSAGE;
}

void read_delivery(wire::Message::Reader m, std::uint32_t max_headers, std::vector<header>& headers,
                   delivery_view& view) {
  read_common(m, max_headers, headers, view);
  view.sid = m.getSid();
  view.owner_core = m.getOwnerCore();
  view.seq = m.getSeq();
}

void read_publish(wire::Publish::Reader p, std::uint32_t max_headers, std::vector<header>& headers,
                  publish_view& view) {
  read_common(p, max_headers, headers, view);
  view.ack_id = p.getAckId();
}

result<std::optional<frame>> decoder::next() noexcept {
  release_current();
  if (failed()) return unexpected(error_.error_code());

  header_info h;
  switch (parse_header(h)) {
    case header_state::need_more:
      return std::optional<frame>{};
    case header_state::bad:
      if (h.segments == 0) {
        const std::uint64_t count = std::uint64_t{load_u32(bytes() + begin_)} + 1;
        return fail(errc::frame_too_large,
                    "frame announces " + std::to_string(count) +
                        " segments, over limits.max_segments (" +
                        std::to_string(limits_.max_segments) +
                        "); the peer is not speaking this protocol or builds oversized messages");
      }
      if (frame_cap_ < limits_.max_frame)
        return fail(errc::frame_too_large, "frame of " + format_size(h.frame_bytes) + " exceeds " +
                                               frame_cap_what_ + " (" + format_size(frame_cap_) +
                                               ")");
      return fail(errc::frame_too_large, "frame of " + format_size(h.frame_bytes) +
                                             " exceeds limits.max_frame (" +
                                             format_size(limits_.max_frame) +
                                             "); raise it in keyway.toml or send smaller payloads");
    case header_state::ok:
      break;
  }
  if (end_ - begin_ < h.frame_bytes) return std::optional<frame>{};

  const auto* base = buffer_.get() + begin_ / 8;
  std::size_t offset = h.table_bytes / 8;
  for (std::uint32_t i = 0; i < h.segments; ++i) {
    const std::size_t words = load_u32(bytes() + begin_ + 4 + 4 * std::size_t{i});
    segments_[i] = kj::arrayPtr(base + offset, words);
    offset += words;
  }

  // The usual publish or delivery (one segment, no headers) is read by hand;
  // anything else, or anything the hand reader does not accept, by capnp's reader.
  if (h.segments == 1) {
    const std::span<const std::byte> seg{reinterpret_cast<const std::byte*>(segments_[0].begin()),
                                         segments_[0].size() * sizeof(capnp::word)};
    switch (read_flat_fields(seg, publish_, delivery_)) {
      case wire::Frame::PUBLISH:
        current_ = h.frame_bytes;
        return std::optional<frame>(
            frame(this, wire::Frame::PUBLISH, h.frame_bytes, &publish_, nullptr));
      case wire::Frame::MESSAGE:
        current_ = h.frame_bytes;
        return std::optional<frame>(
            frame(this, wire::Frame::MESSAGE, h.frame_bytes, nullptr, &delivery_));
      default:
        break;
    }
  }
  try {
    reader_.emplace(kj::arrayPtr(segments_.data(), h.segments), reader_options(h.frame_bytes));
    auto root = reader_->getRoot<wire::Frame>();
    const publish_view* publish = nullptr;
    const delivery_view* delivery = nullptr;
    // Read once, here, inside the try: the view is the safety pass too.
    if (root.which() == wire::Frame::PUBLISH) {
      read_publish(root.getPublish(), limits_.max_headers, headers_, publish_);
      publish = &publish_;
    } else if (root.which() == wire::Frame::MESSAGE) {
      read_delivery(root.getMessage(), limits_.max_headers, headers_, delivery_);
      delivery = &delivery_;
    } else if (root.which() == wire::Frame::PUBLISH_BATCH) {
      // Batches are read by capnp: one reader per batch costs little per entry.
      const auto b = root.getPublishBatch();
      batch_ = {as_string_view(b.getSubject()), b.getCount(), as_bytes(b.getEntries())};
    } else if (root.which() == wire::Frame::MESSAGE_BATCH) {
      const auto b = root.getMessageBatch();
      message_batch_.subject = as_string_view(b.getSubject());
      message_batch_.count = b.getCount();
      message_batch_.entries = as_bytes(b.getEntries());
      message_batch_.sid = b.getSid();
    } else {
      read_all(root);
    }
    current_ = h.frame_bytes;
    frame out(root, h.frame_bytes, h.segments, publish, delivery);
    if (root.which() == wire::Frame::PUBLISH_BATCH) out.batch_ = &batch_;
    if (root.which() == wire::Frame::MESSAGE_BATCH) out.message_batch_ = &message_batch_;
    return std::optional<frame>(out);
  } catch (const kj::Exception& e) {
    reader_.reset();
    return fail(errc::protocol, "malformed frame of " + format_size(h.frame_bytes) + ": " +
                                    describe(e) +
                                    " The peer is not sending valid Cap'n Proto Frame messages.");
  } catch (const std::exception& e) {
    reader_.reset();
    return fail(errc::internal, std::string("decoding failed: ") + e.what());
  }
}

bool decoder::shrink(std::size_t target) {
  release_current();
  const std::size_t size = end_ - begin_;
  const std::size_t new_capacity = round_up8(std::max({target, size, std::size_t{64}}));
  if (capacity_ <= new_capacity) return false;
  auto fresh = std::make_unique_for_overwrite<capnp::word[]>(new_capacity / 8);
  std::memcpy(fresh.get(), bytes() + begin_, size);
  buffer_ = std::move(fresh);
  capacity_ = new_capacity;
  begin_ = 0;
  end_ = size;
  return true;
}

void decoder::reset() noexcept {
  reader_.reset();
  begin_ = end_ = current_ = 0;
  error_ = status();
}

}  // namespace keyway::proto
