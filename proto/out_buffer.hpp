// proto::out_buffer: the outbound byte queue of one connection. Encoded frames
// are appended; the socket writer drains it with gather() + consume(). Most
// bytes are owned (copied in); a large payload can be appended by reference
// (append_external) so it is written straight from the caller's memory with
// writev/sendmsg and never copied.
//
// Threading: one owner thread, like the connection it belongs to.
// Cost: appends are a memcpy; the storage and the piece list are reused, so
// the steady state does not allocate. Storage grows (doubling) only when the
// queued bytes outgrow it; consumed bytes are slid out before growing.
//
// External bytes must stay valid and unchanged until consumed_total() has
// passed the appended_total() value read right after appending them.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace keyway::proto {

class out_buffer {
 public:
  static constexpr std::size_t default_initial_capacity = 16 * 1024;

  explicit out_buffer(std::size_t initial_capacity = default_initial_capacity);
  out_buffer(out_buffer&&) noexcept = default;
  out_buffer& operator=(out_buffer&&) noexcept = default;

  // --- appending ---------------------------------------------------------
  /// Writable owned space for at least `n` bytes at the end; then commit().
  /// Inline when the space is there (the usual case on the hot path).
  std::span<std::byte> prepare(std::size_t n) {
    if (capacity_ - end_ < n) make_room(n);
    return {data_.get() + end_, capacity_ - end_};
  }
  void commit(std::size_t n) {
    assert(n <= capacity_ - end_);
    add_owned(n);
  }
  void append(std::span<const std::byte> bytes);
  void append_zeros(std::size_t n);
  /// The last `n` owned bytes appended, to patch a frame written in parts;
  /// they must all have been appended by prepare/commit, append or
  /// append_zeros since the last append_external(), and not consumed. Valid
  /// until the next non-const call.
  std::byte* owned_tail(std::size_t n) noexcept {
    assert(n <= end_);
    return data_.get() + end_ - n;
  }
  /// Queues `bytes` by reference (see the lifetime rule above).
  void append_external(std::span<const std::byte> bytes);
  /// Makes the next `owned_bytes` of owned appends and `pieces` new pieces
  /// not allocate (so a frame is appended whole or not at all).
  void reserve(std::size_t owned_bytes, std::size_t pieces) {
    if (capacity_ - end_ < owned_bytes || pieces_.capacity() - pieces_.size() < pieces)
      grow(owned_bytes, pieces);
  }

  // --- draining ----------------------------------------------------------
  std::size_t size() const noexcept { return static_cast<std::size_t>(appended_ - consumed_); }
  bool empty() const noexcept { return appended_ == consumed_; }
  /// Fills `out` with the first queued pieces, in order, for writev/sendmsg or
  /// asio::buffer; returns how many were filled (0 when empty). The spans from
  /// gather() and front() are valid until the next non-const call.
  std::size_t gather(std::span<std::span<const std::byte>> out) const noexcept;
  /// The first contiguous run of queued bytes (all of them when nothing is external).
  std::span<const std::byte> front() const noexcept;
  /// Drops the first `n` queued bytes (they were written). n <= size().
  void consume(std::size_t n) noexcept;
  /// Appends every queued byte to `to` and consumes them: a copy of what a
  /// writer would send (tests, seed generators, tools; not the data path).
  void drain_to(std::vector<std::byte>& to);
  void clear() noexcept;

  /// Monotonic byte counters since construction.
  std::uint64_t appended_total() const noexcept { return appended_; }
  std::uint64_t consumed_total() const noexcept { return consumed_; }

  /// Bytes of owned storage.
  std::size_t capacity() const noexcept { return capacity_; }
  /// Reallocates owned storage down to max(target, owned bytes queued); true if it did.
  bool shrink(std::size_t target);

 private:
  struct piece {
    const std::byte* external;  // nullptr: owned, at data_ + offset
    std::size_t offset;
    std::size_t size;
  };

  const std::byte* piece_data(const piece& p) const noexcept {
    return p.external != nullptr ? p.external : data_.get() + p.offset;
  }
  void make_room(std::size_t n);
  void grow(std::size_t owned_bytes, std::size_t pieces);
  void compact() noexcept;
  /// Counts `n` owned bytes written at end_: the last piece grows when they
  /// follow it (inline, the usual case), else a new piece starts.
  void add_owned(std::size_t n) {
    if (n == 0) return;
    if (head_ < pieces_.size()) {
      piece& last = pieces_.back();
      if (last.external == nullptr && last.offset + last.size == end_) {
        last.size += n;
        end_ += n;
        appended_ += n;
        return;
      }
    }
    add_piece(n);
  }
  void add_piece(std::size_t n);

  std::unique_ptr<std::byte[]> data_;
  std::size_t capacity_ = 0;
  std::size_t end_ = 0;  // owned bytes used (consumed ones included until compaction)
  std::vector<piece> pieces_;
  std::size_t head_ = 0;         // first piece not fully consumed
  std::size_t head_offset_ = 0;  // bytes consumed of pieces_[head_]
  std::uint64_t appended_ = 0;
  std::uint64_t consumed_ = 0;
};

}  // namespace keyway::proto
