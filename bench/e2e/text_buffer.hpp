// e2e::in_text / out_text: the byte buffers of the two text-protocol adapters
// (NATS, Redis). in_text is a sliding receive buffer that hands out at least
// 64 KiB of space and keeps unparsed bytes; out_text is an append-only
// outbound queue with a read offset. One owner thread; no allocation in the
// steady state (both grow only when one frame or one batch needs it).
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace keyway::bench::e2e {

class in_text {
 public:
  static constexpr std::size_t min_space = 64 * 1024;

  std::span<std::byte> space() {
    if (begin_ == end_) begin_ = end_ = 0;
    if (buf_.size() - end_ < min_space) {
      if (begin_ > 0) {  // slide the unparsed tail to the front
        std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (buf_.size() - end_ < min_space) buf_.resize(std::max(buf_.size() * 2, end_ + min_space));
    }
    return {reinterpret_cast<std::byte*>(buf_.data()) + end_, buf_.size() - end_};
  }
  void commit(std::size_t n) noexcept { end_ += n; }
  std::string_view unparsed() const noexcept { return {buf_.data() + begin_, end_ - begin_}; }
  void consume(std::size_t n) noexcept { begin_ += n; }

 private:
  std::vector<char> buf_ = std::vector<char>(256 * 1024);
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

class out_text {
 public:
  std::size_t size() const noexcept { return buf_.size() - off_; }
  std::span<const std::byte> front() const noexcept {
    return {reinterpret_cast<const std::byte*>(buf_.data()) + off_, buf_.size() - off_};
  }
  void consume(std::size_t n) noexcept {
    off_ += n;
    if (off_ == buf_.size()) {
      buf_.clear();
      off_ = 0;
    }
  }
  void append(std::string_view s) { buf_.insert(buf_.end(), s.begin(), s.end()); }
  void append(std::span<const std::byte> b) {
    const char* p = reinterpret_cast<const char*>(b.data());
    buf_.insert(buf_.end(), p, p + b.size());
  }
  void append_number(std::size_t v) {
    char tmp[24];
    const auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
    buf_.insert(buf_.end(), tmp, r.ptr);
  }

 private:
  std::vector<char> buf_;
  std::size_t off_ = 0;
};

}  // namespace keyway::bench::e2e
