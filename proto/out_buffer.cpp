#include "proto/out_buffer.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace keyway::proto {

out_buffer::out_buffer(std::size_t initial_capacity)
    : data_(
          std::make_unique_for_overwrite<std::byte[]>(std::max<std::size_t>(initial_capacity, 64))),
      capacity_(std::max<std::size_t>(initial_capacity, 64)) {
  pieces_.reserve(8);
}

void out_buffer::compact() noexcept {
  // Drop fully consumed pieces and fold the consumed part of the head piece.
  pieces_.erase(pieces_.begin(), pieces_.begin() + static_cast<std::ptrdiff_t>(head_));
  head_ = 0;
  if (!pieces_.empty() && head_offset_ > 0) {
    piece& p = pieces_.front();
    if (p.external != nullptr) {
      p.external += head_offset_;
    } else {
      p.offset += head_offset_;
    }
    p.size -= head_offset_;
    head_offset_ = 0;
  }
  // Slide the owned bytes still queued to the front of the storage.
  std::size_t base = end_;
  for (const piece& p : pieces_) {
    if (p.external == nullptr) {
      base = p.offset;
      break;
    }
  }
  if (base == 0) return;
  std::memmove(data_.get(), data_.get() + base, end_ - base);
  for (piece& p : pieces_) {
    if (p.external == nullptr) p.offset -= base;
  }
  end_ -= base;
}

void out_buffer::make_room(std::size_t n) {
  if (capacity_ - end_ >= n) return;
  compact();
  if (capacity_ - end_ >= n) return;
  const std::size_t new_capacity = std::max(capacity_ * 2, end_ + n);
  auto fresh = std::make_unique_for_overwrite<std::byte[]>(new_capacity);
  if (end_ > 0) std::memcpy(fresh.get(), data_.get(), end_);
  data_ = std::move(fresh);
  capacity_ = new_capacity;
}

void out_buffer::grow(std::size_t owned_bytes, std::size_t pieces) {
  make_room(owned_bytes);
  if (pieces_.capacity() - pieces_.size() < pieces)
    pieces_.reserve(std::max(pieces_.size() + pieces, 2 * pieces_.capacity()));
}

void out_buffer::add_piece(std::size_t n) {
  pieces_.push_back({nullptr, end_, n});
  end_ += n;
  appended_ += n;
}

void out_buffer::append(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  make_room(bytes.size());
  std::memcpy(data_.get() + end_, bytes.data(), bytes.size());
  add_owned(bytes.size());
}

void out_buffer::append_zeros(std::size_t n) {
  if (n == 0) return;
  make_room(n);
  std::memset(data_.get() + end_, 0, n);
  add_owned(n);
}

void out_buffer::append_external(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  pieces_.push_back({bytes.data(), 0, bytes.size()});
  appended_ += bytes.size();
}

std::size_t out_buffer::gather(std::span<std::span<const std::byte>> out) const noexcept {
  std::size_t n = 0;
  for (std::size_t i = head_; i < pieces_.size() && n < out.size(); ++i, ++n) {
    const piece& p = pieces_[i];
    const std::size_t skip = i == head_ ? head_offset_ : 0;
    out[n] = {piece_data(p) + skip, p.size - skip};
  }
  return n;
}

std::span<const std::byte> out_buffer::front() const noexcept {
  if (head_ >= pieces_.size()) return {};
  const piece& p = pieces_[head_];
  return {piece_data(p) + head_offset_, p.size - head_offset_};
}

void out_buffer::drain_to(std::vector<std::byte>& to) {
  to.reserve(to.size() + size());
  std::span<const std::byte> pieces[16];
  while (!empty()) {
    const std::size_t n = gather(pieces);
    std::size_t taken = 0;
    for (std::size_t i = 0; i < n; ++i) {
      to.insert(to.end(), pieces[i].begin(), pieces[i].end());
      taken += pieces[i].size();
    }
    consume(taken);
  }
}

void out_buffer::consume(std::size_t n) noexcept {
  assert(n <= size());
  consumed_ += n;
  while (n > 0 && head_ < pieces_.size()) {
    const std::size_t left = pieces_[head_].size - head_offset_;
    if (n < left) {
      head_offset_ += n;
      return;
    }
    n -= left;
    ++head_;
    head_offset_ = 0;
  }
  if (head_ == pieces_.size()) {
    // Everything written: restart at the front, keeping the storage.
    pieces_.clear();
    head_ = head_offset_ = 0;
    end_ = 0;
  }
}

void out_buffer::clear() noexcept {
  consumed_ = appended_;
  pieces_.clear();
  head_ = head_offset_ = 0;
  end_ = 0;
}

bool out_buffer::shrink(std::size_t target) {
  compact();
  const std::size_t new_capacity = std::max({target, end_, std::size_t{64}});
  if (capacity_ <= new_capacity) return false;
  auto fresh = std::make_unique_for_overwrite<std::byte[]>(new_capacity);
  if (end_ > 0) std::memcpy(fresh.get(), data_.get(), end_);
  data_ = std::move(fresh);
  capacity_ = new_capacity;
  return true;
}

}  // namespace keyway::proto
