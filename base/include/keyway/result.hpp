// result<T, E>: a value or an error, the expected-style return type of every
// fallible call (C++20 has no std::expected). Header only.
//
// E defaults to std::error_code; the data path uses that, built from an errc
// with `return unexpected(errc::full);`. error() then returns an empty code
// when there is a value. Any other E (the client's error, with a message) is
// taken implicitly: `return error{...};`, and error() may be read only when
// there is no value.
#pragma once

#include <cassert>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace keyway {

/// Wraps an error code so that `return unexpected(errc::full);` reads naturally.
struct unexpected {
  std::error_code error;
  template <class E>
  requires std::is_error_code_enum_v<E> unexpected(E e) : error(make_error_code(e)) {}
  unexpected(std::error_code ec) : error(ec) {}
};

namespace detail {
template <class E>
inline constexpr bool is_code = std::is_same_v<E, std::error_code>;
}

template <class T, class E = std::error_code>
class [[nodiscard]] result {
 public:
  result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  result(unexpected u) requires detail::is_code<E> : state_(std::in_place_index<1>, u.error) {
    assert(u.error);
  }
  result(E e) requires(!detail::is_code<E>) : state_(std::in_place_index<1>, std::move(e)) {}

  bool has_value() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & {
    assert(has_value());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(state_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  std::error_code error() const& noexcept requires detail::is_code<E> {
    return has_value() ? std::error_code{} : std::get<1>(state_);
  }
  const E& error() const& requires(!detail::is_code<E>) {
    assert(!has_value());
    return std::get<1>(state_);
  }

 private:
  std::variant<T, E> state_;
};

template <class E>
class [[nodiscard]] result<void, E> {
 public:
  result() = default;
  result(unexpected u) requires detail::is_code<E> : error_(u.error) { assert(u.error); }
  result(E e) requires(!detail::is_code<E>) : error_(std::move(e)) {}

  bool has_value() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }

  std::error_code error() const& noexcept requires detail::is_code<E> {
    return error_.value_or(std::error_code{});
  }
  const E& error() const& requires(!detail::is_code<E>) {
    assert(error_.has_value());
    return *error_;
  }

 private:
  std::optional<E> error_;
};

}  // namespace keyway
