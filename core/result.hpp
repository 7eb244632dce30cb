// result<T>: a value or a std::error_code, the expected-style return type of
// every fallible call on the data path (C++20 has no std::expected). Header only.
#pragma once

#include <cassert>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace keyway {

/// Wraps an error so that `return unexpected(errc::full);` reads naturally.
struct unexpected {
  std::error_code error;
  template <class E>
    requires std::is_error_code_enum_v<E>
  unexpected(E e) : error(make_error_code(e)) {}
  unexpected(std::error_code ec) : error(ec) {}
};

template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  result(unexpected u) : state_(std::in_place_index<1>, u.error) { assert(u.error); }

  bool has_value() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { assert(has_value()); return std::get<0>(state_); }
  const T& value() const& { assert(has_value()); return std::get<0>(state_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  std::error_code error() const noexcept {
    return has_value() ? std::error_code{} : std::get<1>(state_);
  }

 private:
  std::variant<T, std::error_code> state_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(unexpected u) : error_(u.error) { assert(u.error); }
  bool has_value() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return has_value(); }
  std::error_code error() const noexcept { return error_; }

 private:
  std::error_code error_;
};

}  // namespace keyway
