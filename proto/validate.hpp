// Semantic checks of decoded frames against proto::limits: which kinds a peer
// may send, subject and pattern syntax, payload, key and header sizes. The
// decoder already guarantees the frame is well-formed Cap'n Proto; these
// checks decide whether the daemon (or client) accepts what it says.
// Any thread (pure functions of the frame). O(size of the text fields), no
// allocation when the frame is fine; a failure builds its message string.
// Never throw: a kj::Exception from a hand-built or unvalidated reader turns
// into errc::protocol.
#pragma once

#include "proto/decoder.hpp"
#include "proto/errc.hpp"
#include "proto/keyway.capnp.h"
#include "proto/limits.hpp"

#include <cstdint>

namespace keyway::proto {

/// A frame a client sent to the server. Allowed kinds: hello, publish,
/// publishBatch, subscribe, unsubscribe, ping, pong. Checks, in this order, with the code
/// returned:
///   kind not allowed or unknown                   -> protocol
///   hello: client name / auth token over limits   -> protocol
///   publish: subject syntax (no wildcards)        -> invalid_subject
///            key over max_key                     -> invalid_key
///            payload over max_payload             -> payload_too_large
///            header count / bytes, empty name     -> payload_too_large / protocol
///            replyTo not empty and not literal    -> invalid_subject
///   publishBatch: subject syntax                  -> invalid_subject
///            an entry's key over max_key          -> invalid_key
///            an entry's payload over max_payload  -> payload_too_large
///            an entry cut short, count != entries -> protocol
///   subscribe: sid 0                              -> protocol
///              pattern syntax                     -> invalid_subject
///              queueGroup                         -> invalid_subject
///   unsubscribe: sid 0                            -> protocol
/// Every failure is non-fatal except protocol (see fatal_by_default). The
/// handshake order (hello first, once) and protocol version are the
/// connection's business, not checked here, and so is whether the
/// connection's protocol version has publishBatch. A batch is checked whole:
/// one bad entry refuses all of them.
status validate_client_frame(wire::Frame::Reader frame, const limits& lim) noexcept;
/// The same for a frame from decoder::next(); a publish is checked through
/// the view the decoder read (frame::publish()), without reading it again.
status validate_client_frame(const frame& f, const limits& lim) noexcept;

/// A frame a server sent to a client: welcome, message, messageBatch, ack,
/// error, ping, pong, draining. Unknown kinds are ok (a client ignores them); a
/// client-only kind is errc::protocol. Checks the sizes of a message delivery
/// (and of every entry of a messageBatch: whole entries, `count` of them)
/// against `lim` (the client's own idea of the limits, e.g. from welcome).
status validate_server_frame(wire::Frame::Reader frame, const limits& lim) noexcept;
/// The same for a decoded frame: a delivery's view when the decoder read one
/// (no second walk of the frame), else the root.
status validate_server_frame(const frame& f, const limits& lim) noexcept;

/// The ackId or requestId a frame carries (publish, subscribe, unsubscribe),
/// to put in the error frame that rejects it; 0 for other kinds.
std::uint64_t request_id_of(wire::Frame::Reader frame) noexcept;

}  // namespace keyway::proto
