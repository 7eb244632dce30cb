// Token authentication ([auth] tokens_file): the file format and the check.
// Any thread; plain functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace keyway::daemon {

/// Reads a tokens file: one token per line; blank lines and lines starting
/// with '#' are skipped, surrounding whitespace is trimmed. Throws
/// std::runtime_error naming the file when it cannot be read or holds no token.
std::vector<std::string> load_tokens(const std::string& path);

/// Whether `token` equals one of `tokens`. The time taken depends only on the
/// lengths of the tokens configured, not on where a guess differs.
bool token_matches(const std::vector<std::string>& tokens, std::string_view token) noexcept;

}  // namespace keyway::daemon
