#include "proto/encoder.hpp"

#include "proto/flat.hpp"

#include <kj/exception.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstring>
#include <new>

namespace keyway::proto {
namespace {

const kj::byte* kj_bytes(std::span<const std::byte> s) noexcept {
  return reinterpret_cast<const kj::byte*>(s.data());
}

// Text fields are set with init + memcpy: capnp's Text::Reader would want a
// NUL after the string_view's last byte. Empty values stay null pointers.
template <class Init>
void set_text(std::string_view s, Init&& init) {
  if (s.empty()) return;
  auto b = init(static_cast<unsigned>(s.size()));
  std::memcpy(b.begin(), s.data(), s.size());
}

capnp::Data::Reader data(std::span<const std::byte> s) noexcept {
  return {kj_bytes(s), s.size()};
}

void set_headers(capnp::List<wire::Header>::Builder list, std::span<const header> headers) {
  for (std::size_t i = 0; i < headers.size(); ++i) {
    auto h = list[static_cast<unsigned>(i)];
    set_text(headers[i].name, [&](unsigned n) { return h.initName(n); });
    if (!headers[i].value.empty()) h.setValue(data(headers[i].value));
  }
}

// Everything of a delivery but the payload.
void fill_delivery(wire::Message::Builder m, const delivery_fields& f) {
  m.setSid(f.sid);
  set_text(f.subject, [&](unsigned n) { return m.initSubject(n); });
  if (!f.key.empty()) m.setKey(data(f.key));
  if (!f.headers.empty())
    set_headers(m.initHeaders(static_cast<unsigned>(f.headers.size())), f.headers);
  set_text(f.reply_to, [&](unsigned n) { return m.initReplyTo(n); });
  m.setOwnerCore(f.owner_core);
  m.setSeq(f.seq);
}

}  // namespace

encoder::encoder(const limits& lim, std::size_t ref_threshold)
    : max_frame_(lim.max_frame),
      ref_threshold_(std::max<std::size_t>(ref_threshold, 8)),
      scratch_words_(lim.max_frame / sizeof(capnp::word) + 16),
      scratch_(static_cast<capnp::word*>(std::calloc(scratch_words_, sizeof(capnp::word)))) {
  if (!scratch_) throw std::bad_alloc();
}

result<std::size_t> encoder::emit(out_buffer& out, capnp::MessageBuilder& msg,
                                  std::span<const std::byte> external) {
  const auto segments = msg.getSegmentsForOutput();
  const std::size_t count = segments.size();
  const std::size_t table_bytes = (4 + 4 * count + 7) & ~std::size_t{7};
  std::size_t total = table_bytes;
  for (auto s : segments) total += s.size() * sizeof(capnp::word);
  if (total > max_frame_) return unexpected(errc::frame_too_large);

  const std::size_t owned = total - external.size();
  out.reserve(owned, count + 2);  // from here on nothing allocates or throws

  auto table = out.prepare(table_bytes);
  std::memset(table.data(), 0, table_bytes);
  const auto put = [&](std::size_t i, std::size_t v) {
    const auto u = static_cast<std::uint32_t>(v);
    std::memcpy(table.data() + 4 * i, &u, 4);
  };
  static_assert(std::endian::native == std::endian::little);
  put(0, count - 1);
  for (std::size_t i = 0; i < count; ++i) put(i + 1, segments[i].size());
  out.commit(table_bytes);

  for (auto s : segments) {
    const auto* p = reinterpret_cast<const std::byte*>(s.begin());
    const std::size_t bytes = s.size() * sizeof(capnp::word);
    if (!external.empty() && p == external.data()) {
      // The referenced payload: its own bytes, then our zeros instead of
      // whatever follows it in the caller's memory.
      out.append_external(external);
      out.append_zeros(bytes - external.size());
    } else {
      out.append({p, bytes});
    }
  }
  return total;
}

result<std::size_t> encoder::hello(out_buffer& out, const hello_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto h = fr.initHello();
    h.setProtocolVersion(f.protocol_version);
    set_text(f.client_name, [&](unsigned n) { return h.initClientName(n); });
    set_text(f.auth_token, [&](unsigned n) { return h.initAuthToken(n); });
  });
}

result<std::size_t> encoder::welcome(out_buffer& out, const welcome_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto w = fr.initWelcome();
    set_text(f.server_id, [&](unsigned n) { return w.initServerId(n); });
    set_text(f.server_version, [&](unsigned n) { return w.initServerVersion(n); });
    w.setProtocolVersion(f.protocol_version);
    w.setWorkerCount(f.worker_count);
    auto l = w.initLimits();
    const limits& s = f.server_limits;
    l.setMaxPayload(s.max_payload);
    l.setMaxFrame(s.max_frame);
    l.setMaxSubject(s.max_subject);
    l.setMaxKey(s.max_key);
    l.setMaxHeaders(s.max_headers);
    l.setMaxHeaderBytes(s.max_header_bytes);
    l.setMaxSubscriptions(f.max_subscriptions);
    l.setMaxSegments(s.max_segments);
    l.setMaxPendingBytes(f.max_pending_bytes);
    if (!f.connect_urls.empty()) {
      auto urls = w.initConnectUrls(static_cast<unsigned>(f.connect_urls.size()));
      for (unsigned i = 0; i < f.connect_urls.size(); ++i)
        set_text(f.connect_urls[i], [&](unsigned n) { return urls.init(i, n); });
    }
  });
}

result<std::size_t> encoder::publish(out_buffer& out, const publish_fields& f) noexcept {
  if (f.headers.empty()) return plain_publish(out, f);
  return built_publish(out, f);
}

result<std::size_t> encoder::built_publish(out_buffer& out, const publish_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto p = fr.initPublish();
    set_text(f.subject, [&](unsigned n) { return p.initSubject(n); });
    if (!f.key.empty()) p.setKey(data(f.key));
    if (!f.headers.empty())
      set_headers(p.initHeaders(static_cast<unsigned>(f.headers.size())), f.headers);
    set_text(f.reply_to, [&](unsigned n) { return p.initReplyTo(n); });
    if (!f.payload.empty()) p.setPayload(data(f.payload));  // last, as plain_publish() lays it out
    p.setAckId(f.ack_id);
  });
}

result<std::size_t> encoder::subscribe(out_buffer& out, const subscribe_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto s = fr.initSubscribe();
    s.setSid(f.sid);
    set_text(f.pattern, [&](unsigned n) { return s.initPattern(n); });
    set_text(f.queue_group, [&](unsigned n) { return s.initQueueGroup(n); });
    s.setRequestId(f.request_id);
  });
}

result<std::size_t> encoder::unsubscribe(out_buffer& out, std::uint32_t sid,
                                         std::uint64_t request_id) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto u = fr.initUnsubscribe();
    u.setSid(sid);
    u.setRequestId(request_id);
  });
}

namespace {

// The fast path for the two most frequent frames, a publish and a delivery
// without headers: written word by word in exactly the layout capnp's builder
// produces for them (one segment: root pointer, Frame, the struct, then its
// byte lists in the order the builder sets them). tests/unit/proto/encoder_test.cpp
// checks the bytes against the builder's for many field combinations.
using flat::byte_list_pointer;
using flat::struct_pointer;
using flat::words_for;

constexpr std::uint16_t frame_data_words = wire::Frame::_capnpPrivate::dataWordSize;
constexpr std::uint16_t frame_pointers = wire::Frame::_capnpPrivate::pointerCount;
static_assert(frame_data_words == 1 && frame_pointers == 1);

// Publish and Message share their pointers: subject, key, payload, headers
// (null here), replyTo in 0-4. Their data words differ: a Publish has ackId;
// a Message has sid and ownerCore in word 0, seq in word 1.
constexpr std::uint16_t plain_pointers = 5;
static_assert(wire::Publish::_capnpPrivate::dataWordSize == 1 &&
              wire::Publish::_capnpPrivate::pointerCount == 5);
static_assert(wire::Message::_capnpPrivate::dataWordSize == 2 &&
              wire::Message::_capnpPrivate::pointerCount == 5);

// A list pointer holds 29 bits of element count; every list here is shorter
// than the frame, so bounding the frame bounds them all.
constexpr std::size_t max_list_elems = (std::size_t{1} << 29) - 1;

/// Segment words before the lists: root pointer, Frame, its pointer, the data words, the pointers.
template <std::size_t DataWords>
constexpr std::size_t lists_at = 3 + DataWords + plain_pointers;
/// Bytes before the lists: the one-segment table, then those words.
template <std::size_t DataWords>
constexpr std::size_t head_bytes = 8 * (1 + lists_at<DataWords>);

/// Words of each list: a Text with its NUL (none when empty), a Data as is.
struct list_words {
  std::size_t subject, key, reply_to, payload;
  std::size_t all() const noexcept { return subject + key + reply_to + payload; }
};

/// `Fields` is publish_fields or delivery_fields: only the byte fields are read.
template <class Fields>
list_words words_of(const Fields& f) noexcept {
  const auto text = [](std::string_view s) { return s.empty() ? 0 : words_for(s.size() + 1); };
  return {text(f.subject), words_for(f.key.size()), text(f.reply_to), words_for(f.payload.size())};
}

/// The segment table, root pointer, Frame{tag} and its pointer, the struct's
/// data words and its five pointers, set from `data` and `f`'s sizes. Inlined
/// into every caller (bench/profile: 8 Ir more per delivery when it is not).
template <std::size_t DataWords, class Fields>
[[gnu::always_inline]] inline void write_head(std::byte* dst, wire::Frame::Which tag,
                                              const std::array<std::uint64_t, DataWords>& data,
                                              const list_words& w, const Fields& f) noexcept {
  static_assert(std::endian::native == std::endian::little);
  constexpr std::size_t body = 3, body_ptrs = body + DataWords, first_list = lists_at<DataWords>;
  std::uint64_t head[1 + first_list] = {};  // [0] is the table; segment word i is head[1 + i]
  head[0] = std::uint64_t{static_cast<std::uint32_t>(first_list + w.all())}
            << 32;  // segment count - 1 = 0, its words
  head[1] = struct_pointer(0, 1, frame_data_words, frame_pointers);
  head[2] = static_cast<std::uint16_t>(tag);
  head[3] = struct_pointer(2, body, DataWords, plain_pointers);
  for (std::size_t i = 0; i < DataWords; ++i) head[1 + body + i] = data[i];
  // The lists follow the head in the order the builder sets them: subject,
  // key, replyTo, payload.
  const std::size_t subject_at = first_list, key_at = subject_at + w.subject,
                    reply_at = key_at + w.key, payload_at = reply_at + w.reply_to;
  const auto ptr = [&](std::size_t i, std::size_t at, std::size_t elements) {
    head[1 + body_ptrs + i] = byte_list_pointer(body_ptrs + i, at, elements);  // null when empty
  };
  ptr(0, subject_at, f.subject.empty() ? 0 : f.subject.size() + 1);
  ptr(1, key_at, f.key.size());
  ptr(2, payload_at, f.payload.size());
  ptr(4, reply_at, f.reply_to.empty() ? 0 : f.reply_to.size() + 1);
  std::memcpy(dst, head, sizeof head);
}

/// The four lists as write_head() points at them, at `dst`; where each starts.
template <class Fields>
encoder::plain_message_offsets write_lists(std::byte* dst, const Fields& f) noexcept {
  std::size_t at = 0;  // bytes
  const auto list = [&](const void* bytes, std::size_t size, std::size_t words) {
    const std::size_t start = at;
    if (words != 0) {
      std::memset(dst + start + 8 * (words - 1), 0, 8);  // the padding, and a Text's NUL
      std::memcpy(dst + start, bytes, size);
      at += 8 * words;
    }
    return start;
  };
  const list_words w = words_of(f);
  encoder::plain_message_offsets o;
  o.subject = list(f.subject.data(), f.subject.size(), w.subject);
  o.key = list(f.key.data(), f.key.size(), w.key);
  o.reply_to = list(f.reply_to.data(), f.reply_to.size(), w.reply_to);
  o.payload = list(f.payload.data(), f.payload.size(), w.payload);
  return o;
}

/// The whole frame of `f` without headers: head and lists, or frame_too_large.
template <std::size_t DataWords, class Fields>
result<std::size_t> write_plain(out_buffer& out, std::size_t max_frame, wire::Frame::Which tag,
                                const std::array<std::uint64_t, DataWords>& data,
                                const Fields& f) noexcept {
  const list_words w = words_of(f);
  const std::size_t total = head_bytes<DataWords> + 8 * w.all();
  if (total > max_frame || total > max_list_elems) return unexpected(errc::frame_too_large);
  try {
    out.reserve(total, 1);
  } catch (...) {
    return unexpected(errc::internal);
  }
  std::byte* p = out.prepare(total).data();
  write_head(p, tag, data, w, f);
  write_lists(p + head_bytes<DataWords>, f);
  out.commit(total);
  return total;
}

// PublishBatch and MessageBatch share their shape: one data word (a batch's
// count; a message batch's sid, then count), then two pointers, to the subject
// and to the entries, which follow in that order.
static_assert(wire::PublishBatch::_capnpPrivate::dataWordSize == 1 &&
              wire::PublishBatch::_capnpPrivate::pointerCount == 2);
static_assert(wire::MessageBatch::_capnpPrivate::dataWordSize == 1 &&
              wire::MessageBatch::_capnpPrivate::pointerCount == 2);
constexpr std::size_t batch_lists_at = 6;  // segment words before the lists
constexpr std::size_t batch_head_bytes = 8 * (1 + batch_lists_at);

/// A batch's subject as a list: its bytes, the NUL and the padding.
std::size_t batch_subject_bytes(std::string_view subject) noexcept {
  return subject.empty() ? 0 : 8 * words_for(subject.size() + 1);
}

/// The segment table, root pointer, Frame{tag}, the batch's data word, its
/// two pointers and the subject list, for `entries` bytes of entries.
void write_batch_head(std::byte* dst, wire::Frame::Which tag, std::uint64_t data,
                      std::string_view subject, std::size_t entries) noexcept {
  constexpr std::size_t body = 3;
  const std::size_t subject_words = batch_subject_bytes(subject) / 8;
  const std::size_t words = batch_lists_at + subject_words + words_for(entries);
  const std::uint64_t w[1 + batch_lists_at] = {
      std::uint64_t{static_cast<std::uint32_t>(words)} << 32,  // one segment of `words`
      struct_pointer(0, 1, frame_data_words, frame_pointers),
      static_cast<std::uint16_t>(tag),
      struct_pointer(2, body, 1, 2),
      data,
      byte_list_pointer(body + 1, batch_lists_at, subject.empty() ? 0 : subject.size() + 1),
      byte_list_pointer(body + 2, batch_lists_at + subject_words, entries),
  };
  std::memcpy(dst, w, sizeof w);
  if (subject_words != 0) {
    std::memset(dst + batch_head_bytes + 8 * (subject_words - 1), 0, 8);  // the NUL and padding
    std::memcpy(dst + batch_head_bytes, subject.data(), subject.size());
  }
}

std::array<std::uint64_t, 2> message_data(const delivery_fields& f) noexcept {
  return {std::uint64_t{f.sid} | (std::uint64_t{f.owner_core} << 32), f.seq};
}
constexpr std::size_t message_head_bytes = head_bytes<2>;

}  // namespace

std::size_t encoder::plain_message_lists_size(const delivery_fields& f) noexcept {
  return 8 * words_of(f).all();
}

encoder::plain_message_offsets encoder::write_plain_message_lists(
    std::byte* dst, const delivery_fields& f) noexcept {
  return write_lists(dst, f);
}

result<std::size_t> encoder::plain_message(out_buffer& out, const delivery_fields& f) noexcept {
  return write_plain(out, max_frame_, wire::Frame::MESSAGE, message_data(f), f);
}

result<std::size_t> encoder::stamped_message(out_buffer& out, const delivery_fields& f,
                                             std::span<const std::byte> lists) noexcept {
  const list_words w = words_of(f);
  assert(lists.size() == 8 * w.all());
  const std::size_t total = message_head_bytes + lists.size();
  if (total > max_frame_ || total > max_list_elems) return unexpected(errc::frame_too_large);
  // Copied: the head and the lists up to the payload, and the payload too
  // unless it is large; then its words (padding included) go by reference.
  const bool by_ref = f.payload.size() >= ref_threshold_;
  const std::size_t copied = by_ref ? 8 * (w.subject + w.key + w.reply_to) : lists.size();
  try {
    out.reserve(message_head_bytes + copied, 2);
  } catch (...) {
    return unexpected(errc::internal);
  }
  std::byte* p = out.prepare(message_head_bytes + copied).data();
  write_head(p, wire::Frame::MESSAGE, message_data(f), w, f);
  if (copied != 0)
    std::memcpy(p + message_head_bytes, lists.data(), copied);  // no lists: data() may be null
  out.commit(message_head_bytes + copied);
  if (by_ref) out.append_external(lists.subspan(copied));
  return total;
}

result<std::size_t> encoder::plain_publish(out_buffer& out, const publish_fields& f) noexcept {
  return write_plain<1>(out, max_frame_, wire::Frame::PUBLISH, {f.ack_id}, f);
}

result<std::size_t> encoder::publish_batch(out_buffer& out, std::string_view subject,
                                           std::uint32_t count,
                                           std::span<const std::byte> entries) noexcept {
  const std::size_t head = batch_head_bytes + batch_subject_bytes(subject);
  const std::size_t total = head + 8 * words_for(entries.size());
  if (total > max_frame_ || total > max_list_elems) return unexpected(errc::frame_too_large);
  try {
    out.reserve(total, 1);
  } catch (...) {
    return unexpected(errc::internal);
  }
  std::byte* p = out.prepare(total).data();
  std::memset(p + total - 8, 0,
              8);  // the entries' padding (or the head's last word, overwritten next)
  write_batch_head(p, wire::Frame::PUBLISH_BATCH, count, subject, entries.size());
  if (!entries.empty()) std::memcpy(p + head, entries.data(), entries.size());
  out.commit(total);
  return total;
}

std::size_t message_batch_writer::entry_size(const delivery_fields& f) noexcept {
  return batch_entry_size(f.key.size(), f.payload.size(), message_entry_head);
}

std::size_t message_batch_writer::start_size(std::string_view subject) noexcept {
  return batch_head_bytes + batch_subject_bytes(subject);
}

void message_batch_writer::start(out_buffer& out, const delivery_fields& f) {
  finish(out);
  const std::size_t head = start_size(f.subject);
  out.reserve(head + entry_size(f) + 8, 1);
  // The head for no entries for now; finish() writes the real sizes.
  write_batch_head(out.prepare(head).data(), wire::Frame::MESSAGE_BATCH, f.sid, f.subject, 0);
  out.commit(head);
  sid_ = f.sid;
  subject_.assign(f.subject);
  bytes_ = head;
  entries_ = 0;
  count_ = 0;
  add(out, f);
}

void message_batch_writer::add(out_buffer& out, const delivery_fields& f) {
  const std::size_t n = entry_size(f);
  std::byte* p = out.prepare(n + 8).data();  // and room for finish()'s padding
  write_message_entry(p, f.key, f.payload, f.owner_core, f.seq);
  out.commit(n);
  bytes_ += n;
  entries_ += n;
  ++count_;
}

void message_batch_writer::finish(out_buffer& out) noexcept {
  if (bytes_ == 0) return;
  const std::size_t pad = 8 * words_for(entries_) - entries_;
  out.append_zeros(pad);
  write_batch_head(out.owned_tail(bytes_ + pad), wire::Frame::MESSAGE_BATCH,
                   std::uint64_t{sid_} | (std::uint64_t{count_} << 32), subject_, entries_);
  bytes_ = 0;
}

result<std::size_t> encoder::message(out_buffer& out, const delivery_fields& f) noexcept {
  if (f.headers.empty()) return plain_message(out, f);
  return built_message(out, f);
}

result<std::size_t> encoder::built_message(out_buffer& out, const delivery_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto m = fr.initMessage();
    fill_delivery(m, f);
    if (!f.payload.empty()) m.setPayload(data(f.payload));
  });
}

result<std::size_t> encoder::message_ref(out_buffer& out, const delivery_fields& f) noexcept {
  const auto address = reinterpret_cast<std::uintptr_t>(f.payload.data());
  if (f.payload.size() < ref_threshold_ || address % sizeof(capnp::word) != 0)
    return message(out, f);
  try {
    capnp::MallocMessageBuilder msg(scratch());
    auto m = msg.initRoot<wire::Frame>().initMessage();
    fill_delivery(m, f);
    m.adoptPayload(msg.getOrphanage().referenceExternalData(data(f.payload)));
    return emit(out, msg, f.payload);
  } catch (...) {
    return unexpected(errc::internal);
  }
}

result<std::size_t> encoder::ack(out_buffer& out, std::uint64_t request_id,
                                 std::uint32_t delivered) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto a = fr.initAck();
    a.setRequestId(request_id);
    a.setDelivered(delivered);
  });
}

result<std::size_t> encoder::error(out_buffer& out, const error_fields& f) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto e = fr.initError();
    e.setCode(to_wire(f.code));
    set_text(f.message, [&](unsigned n) { return e.initMessage(n); });
    e.setRequestId(f.request_id);
    e.setFatal(f.fatal);
    set_text(f.reply_to, [&](unsigned n) { return e.initReplyTo(n); });
  });
}

result<std::size_t> encoder::error(out_buffer& out, const status& st,
                                   std::uint64_t request_id) noexcept {
  return error(out, error_fields{.code = st.code(),
                                 .message = st.message(),
                                 .request_id = request_id,
                                 .fatal = fatal_by_default(st.code()),
                                 .reply_to = {}});
}

result<std::size_t> encoder::ping(out_buffer& out, std::uint64_t id) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) { fr.initPing().setId(id); });
}

result<std::size_t> encoder::pong(out_buffer& out, std::uint64_t id) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) { fr.initPong().setId(id); });
}

result<std::size_t> encoder::draining(out_buffer& out, std::string_view reason,
                                      std::uint32_t grace_ms) noexcept {
  return encode(out, [&](wire::Frame::Builder fr) {
    auto d = fr.initDraining();
    set_text(reason, [&](unsigned n) { return d.initReason(n); });
    d.setGraceMs(grace_ms);
  });
}

}  // namespace keyway::proto
