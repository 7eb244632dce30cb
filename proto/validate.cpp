#include "proto/validate.hpp"

#include "proto/decoder.hpp"
#include "proto/subject.hpp"

#include <kj/exception.h>

#include <string>
#include <vector>

namespace keyway::proto {
namespace {

using W = wire::Frame;

// The header list of a publish or delivery as the decoder read it, which must
// be the whole list.
status check_headers(const publish_view& p, const limits& lim, std::string_view kind) {
  auto f = [kind] { return std::string(kind) + ".headers"; };  // built only for an error
  if (p.header_count > lim.max_headers) {
    return {errc::payload_too_large, f() + " has " + std::to_string(p.header_count) +
                                         " entries, over limits.max_headers (" +
                                         std::to_string(lim.max_headers) + "); send fewer headers"};
  }
  std::uint64_t bytes = 0;
  std::uint32_t i = 0;
  for (const header& h : p.headers) {
    if (h.name.empty()) {
      return {errc::protocol, f() + "[" + std::to_string(i) +
                                  "] has an empty name; header names must be non-empty"};
    }
    bytes += h.name.size() + h.value.size();
    ++i;
  }
  if (bytes > lim.max_header_bytes) {
    return {errc::payload_too_large,
            f() + " of " + format_size(bytes) + " exceeds limits.max_header_bytes (" +
                format_size(lim.max_header_bytes) + "); send smaller headers"};
  }
  if (p.headers.size() != p.header_count) {
    // The decoder read no headers because the list was over the max_headers it
    // was built with: the connection opened before a reload raised the limit.
    return {errc::payload_too_large,
            f() + " has " + std::to_string(p.header_count) +
                " entries, over the limits.max_headers this connection was opened with; "
                "reconnect to use the reloaded limit (" +
                std::to_string(lim.max_headers) + ")"};
  }
  return {};
}

status check_reply_to(std::string_view reply_to, const limits& lim, std::string_view field) {
  if (reply_to.empty()) return {};
  return validate_publish_subject(reply_to, lim, field);
}

// The usual publish or delivery, with no headers, checked without building
// a status: true only when check_publish / check_delivery would return ok
// (check_headers passes a frame without headers; tests/unit/proto/subject_test.cpp
// compares is_valid_publish_subject with a reference). Anything else goes
// through the checks below, which name the problem.
bool plain_fields_ok(const publish_view& p, const limits& lim) noexcept {
  // header_count == 0 means no headers were read either (the readers fill
  // `headers` only from a list of header_count entries).
  return p.header_count == 0 && p.key.size() <= lim.max_key &&
         p.payload.size() <= lim.max_payload && is_valid_publish_subject(p.subject, lim) &&
         (p.reply_to.empty() || is_valid_publish_subject(p.reply_to, lim));
}

status check_publish(const publish_view& p, const limits& lim) {
  if (plain_fields_ok(p, lim)) return {};
  if (auto st = validate_publish_subject(p.subject, lim, "publish.subject"); !st.ok()) return st;
  if (p.key.size() > lim.max_key) {
    return {errc::invalid_key, "publish.key of " + format_size(p.key.size()) +
                                   " exceeds limits.max_key (" + format_size(lim.max_key) +
                                   "); use a shorter key, e.g. a hash of it"};
  }
  if (p.payload.size() > lim.max_payload) {
    return {errc::payload_too_large, "payload of " + format_size(p.payload.size()) +
                                         " exceeds limits.max_payload (" +
                                         format_size(lim.max_payload) +
                                         "); raise it in keyway.toml or send smaller payloads"};
  }
  if (auto st = check_headers(p, lim, "publish"); !st.ok()) return st;
  return check_reply_to(p.reply_to, lim, "publish.replyTo");
}

status check_delivery(const delivery_view& m, const limits& lim) {
  if (plain_fields_ok(m, lim)) return {};
  if (auto st = validate_publish_subject(m.subject, lim, "message.subject"); !st.ok()) return st;
  if (m.key.size() > lim.max_key) {
    return {errc::invalid_key, "message.key of " + format_size(m.key.size()) +
                                   " exceeds limits.max_key (" + format_size(lim.max_key) + ")"};
  }
  if (m.payload.size() > lim.max_payload) {
    return {errc::payload_too_large, "message.payload of " + format_size(m.payload.size()) +
                                         " exceeds limits.max_payload (" +
                                         format_size(lim.max_payload) + ")"};
  }
  if (auto st = check_headers(m, lim, "message"); !st.ok()) return st;
  return check_reply_to(m.reply_to, lim, "message.replyTo");
}

// A publishBatch (kind "publishBatch", entries of publish_entry_head) or a
// messageBatch ("messageBatch", message_entry_head): the subject once, every
// entry's sizes, and that the entries are exactly `count` whole ones.
// `refused` ends the message of a size error.
status check_batch(const publish_batch_view& b, std::string_view kind, std::size_t head,
                   const limits& lim, std::string_view refused) {
  if (!is_valid_publish_subject(b.subject, lim)) {
    if (auto st = validate_publish_subject(b.subject, lim, std::string(kind) + ".subject");
        !st.ok())
      return st;
  }
  batch_cursor c(b.entries, head);
  batch_entry e;
  std::uint64_t n = 0;
  const auto entry = [&] {
    return std::string(kind) + " entry " + std::to_string(n) + " (counting from 0): ";
  };
  for (; c.next(e); ++n) {
    if (e.key.size() > lim.max_key) {
      return {errc::invalid_key, entry() + "key of " + format_size(e.key.size()) +
                                     " exceeds limits.max_key (" + format_size(lim.max_key) + ")" +
                                     std::string(refused)};
    }
    if (e.payload.size() > lim.max_payload) {
      return {errc::payload_too_large, entry() + "payload of " + format_size(e.payload.size()) +
                                           " exceeds limits.max_payload (" +
                                           format_size(lim.max_payload) + ")" +
                                           std::string(refused)};
    }
  }
  if (c.left() != 0) {
    return {errc::protocol, entry() + "is cut short: " + std::to_string(c.left()) +
                                " bytes are left of " + std::string(kind) +
                                ".entries, less than its " + std::to_string(head) +
                                "-byte head and the key and payload sizes it announces"};
  }
  if (n != b.count) {
    return {errc::protocol, std::string(kind) + ".count is " + std::to_string(b.count) + " but " +
                                std::string(kind) + ".entries holds " + std::to_string(n) +
                                (n == 1 ? " entry" : " entries")};
  }
  return {};
}

status check_publish_batch(const publish_batch_view& b, const limits& lim) {
  return check_batch(b, "publishBatch", publish_entry_head, lim,
                     "; no entry of the batch was published");
}

status check_message_batch(const message_batch_view& b, const limits& lim) {
  return check_batch(b, "messageBatch", message_entry_head, lim, "");
}

status check_publish(wire::Publish::Reader p, const limits& lim) {
  thread_local std::vector<header> headers;  // reused: validation does not allocate once warm
  publish_view view;
  read_publish(p, lim.max_headers, headers, view);
  return check_publish(view, lim);
}

status check_subscribe(wire::Subscribe::Reader s, const limits& lim) {
  if (s.getSid() == 0) {
    return {errc::protocol, "subscribe.sid is 0; choose a non-zero sid, unique on this connection"};
  }
  if (auto st = validate_pattern(as_string_view(s.getPattern()), lim, "subscribe.pattern");
      !st.ok())
    return st;
  return validate_queue_group(as_string_view(s.getQueueGroup()), lim, "subscribe.queueGroup");
}

status check_hello(wire::Hello::Reader h, const limits& lim) {
  if (const auto n = h.getClientName().size(); n > lim.max_client_name) {
    return {errc::protocol, "hello.clientName of " + format_size(n) +
                                " exceeds limits.max_client_name (" +
                                format_size(lim.max_client_name) + "); use a shorter client name"};
  }
  if (const auto n = h.getAuthToken().size(); n > lim.max_auth_token) {
    return {errc::protocol, "hello.authToken of " + format_size(n) +
                                " exceeds limits.max_auth_token (" +
                                format_size(lim.max_auth_token) + ")"};
  }
  return {};
}

status not_allowed(W::Which kind, std::string_view who, std::string_view allowed) {
  const auto name = kind_name(kind);
  if (name == "unknown") {
    return {errc::protocol, "unknown frame kind " + std::to_string(static_cast<unsigned>(kind)) +
                                " (this build speaks protocol version " +
                                std::to_string(protocol_version) + "); a " + std::string(who) +
                                " may send " + std::string(allowed)};
  }
  return {errc::protocol, "a " + std::string(who) + " may not send '" + std::string(name) +
                              "' frames; it may send " + std::string(allowed)};
}

status client_frame(W::Reader f, const limits& lim) {
  switch (f.which()) {
    case W::HELLO:
      return check_hello(f.getHello(), lim);
    case W::PUBLISH:
      return check_publish(f.getPublish(), lim);
    case W::SUBSCRIBE:
      return check_subscribe(f.getSubscribe(), lim);
    case W::UNSUBSCRIBE:
      if (f.getUnsubscribe().getSid() == 0)
        return {errc::protocol, "unsubscribe.sid is 0; sids are non-zero"};
      return {};
    case W::PING:
    case W::PONG:
      return {};
    case W::PUBLISH_BATCH: {
      const auto b = f.getPublishBatch();
      return check_publish_batch(
          {as_string_view(b.getSubject()), b.getCount(), as_bytes(b.getEntries())}, lim);
    }
    default:
      return not_allowed(f.which(), "client",
                         "hello, publish, publishBatch, subscribe, unsubscribe, ping and pong");
  }
}

status server_frame(W::Reader f, const limits& lim) {
  switch (f.which()) {
    case W::WELCOME:
    case W::ACK:
    case W::ERROR:
    case W::PING:
    case W::PONG:
    case W::DRAINING:
      return {};
    case W::MESSAGE_BATCH: {
      const auto b = f.getMessageBatch();
      message_batch_view v;
      v.subject = as_string_view(b.getSubject());
      v.count = b.getCount();
      v.entries = as_bytes(b.getEntries());
      v.sid = b.getSid();
      return check_message_batch(v, lim);
    }
    case W::MESSAGE: {
      thread_local std::vector<header> headers;  // reused: validation does not allocate once warm
      delivery_view view;
      read_delivery(f.getMessage(), lim.max_headers, headers, view);
      return check_delivery(view, lim);
    }
    case W::HELLO:
    case W::PUBLISH:
    case W::PUBLISH_BATCH:
    case W::SUBSCRIBE:
    case W::UNSUBSCRIBE:
      return not_allowed(f.which(), "server",
                         "welcome, message, messageBatch, ack, error, ping, pong and draining");
  }
  return {};  // a newer server's kind: ignore
}

template <class F>
status guarded(F&& check) noexcept {
  try {
    return check();
  } catch (const kj::Exception& e) {
    return {errc::protocol, "malformed frame: " + std::string(e.getDescription().cStr())};
  } catch (const std::exception& e) {
    return {errc::internal, std::string("frame validation failed: ") + e.what()};
  }
}

}  // namespace

status validate_client_frame(wire::Frame::Reader frame, const limits& lim) noexcept {
  return guarded([&] { return client_frame(frame, lim); });
}

status validate_client_frame(const proto::frame& f, const limits& lim) noexcept {
  // A publish was read by the decoder already: check its view, not the frame.
  if (const publish_view* p = f.publish()) return guarded([&] { return check_publish(*p, lim); });
  if (const publish_batch_view* b = f.publish_batch())
    return guarded([&] { return check_publish_batch(*b, lim); });
  return validate_client_frame(f.root(), lim);
}

status validate_server_frame(wire::Frame::Reader frame, const limits& lim) noexcept {
  return guarded([&] { return server_frame(frame, lim); });
}

status validate_server_frame(const proto::frame& f, const limits& lim) noexcept {
  // A delivery was read by the decoder already: check its view, not the frame.
  if (const delivery_view* d = f.delivery())
    return guarded([&] { return check_delivery(*d, lim); });
  if (const message_batch_view* b = f.message_batch())
    return guarded([&] { return check_message_batch(*b, lim); });
  return validate_server_frame(f.root(), lim);
}

std::uint64_t request_id_of(wire::Frame::Reader frame) noexcept {
  try {
    switch (frame.which()) {
      case W::PUBLISH:
        return frame.getPublish().getAckId();
      case W::SUBSCRIBE:
        return frame.getSubscribe().getRequestId();
      case W::UNSUBSCRIBE:
        return frame.getUnsubscribe().getRequestId();
      default:
        return 0;
    }
  } catch (...) {
    return 0;
  }
}

}  // namespace keyway::proto
