#include "daemon/auth.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace keyway::daemon {

std::vector<std::string> load_tokens(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("auth.tokens_file " + path +
                             ": cannot read it: " + std::strerror(errno));
  std::vector<std::string> tokens;
  std::string line;
  while (std::getline(in, line)) {
    const auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    const auto e = line.find_last_not_of(" \t\r");
    tokens.push_back(line.substr(b, e - b + 1));
  }
  if (tokens.empty())
    throw std::runtime_error(
        "auth.tokens_file " + path +
        ": holds no token (one per line); leave auth.tokens_file empty to turn auth off");
  return tokens;
}

bool token_matches(const std::vector<std::string>& tokens, std::string_view token) noexcept {
  // Every configured token is compared in full, and each comparison runs over
  // the configured token's length whatever the guess: no early exit leaks
  // how much of a guess was right.
  bool any = false;
  for (const std::string& t : tokens) {
    unsigned char diff = t.size() == token.size() ? 0 : 1;
    for (std::size_t i = 0; i < t.size(); ++i) {
      const unsigned char g = i < token.size() ? static_cast<unsigned char>(token[i]) : 0;
      diff |= static_cast<unsigned char>(static_cast<unsigned char>(t[i]) ^ g);
    }
    any |= diff == 0;
  }
  return any;
}

}  // namespace keyway::daemon
