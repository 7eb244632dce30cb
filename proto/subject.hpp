// Subject syntax (DESIGN.md, "Message semantics"): dot-separated non-empty
// tokens of printable bytes, no whitespace or control characters, at most
// limits.max_subject bytes. Subscription patterns may use `*` as a whole token
// (one token) and `>` as the whole last token (one or more tokens); publish
// subjects, reply_to and queue groups may not use wildcards at all.
// Pure functions, any thread; O(length), no allocation unless they fail (the
// failure message is a std::string). Matching is the daemon's job, not here.
#pragma once

#include "proto/errc.hpp"
#include "proto/limits.hpp"

#include <string_view>

namespace keyway::proto {

/// A literal subject: what publish.subject and publish.replyTo must be.
/// `field` names the input in the message, e.g. "publish.replyTo".
status validate_publish_subject(std::string_view subject, const limits& lim,
                                std::string_view field = "subject");

/// validate_publish_subject(subject, lim).ok(), without building a status:
/// one pass over a byte-class table. The hot path asks this first and builds
/// the status that names the problem only when it says no.
bool is_valid_publish_subject(std::string_view subject, const limits& lim) noexcept;

/// A subscription pattern: `*` and a final `>` allowed as whole tokens.
status validate_pattern(std::string_view pattern, const limits& lim,
                        std::string_view field = "pattern");

/// A queue group name: empty (no group) or 1..max_subject printable bytes
/// without whitespace or wildcards. Dots are allowed.
status validate_queue_group(std::string_view group, const limits& lim,
                            std::string_view field = "queueGroup");

/// True when `subject` contains no `*` or `>` token (cheap pre-check).
bool is_literal_subject(std::string_view subject) noexcept;

}  // namespace keyway::proto
