// overloaded: a visitor made of lambdas, for std::visit over a variant
// (daemon's route_msg, cluster's peer_frame). Header only.
#pragma once

namespace keyway::core {

template <class... Ts>
struct overloaded : Ts... {
  using Ts::operator()...;
};
// clang 14 lacks C++20's aggregate deduction for this.
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;

}  // namespace keyway::core
