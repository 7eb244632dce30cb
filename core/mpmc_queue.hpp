// mpmc_queue<T>: bounded multi-producer/multi-consumer queue. See core/bounded_queue.hpp.
#pragma once

#include "core/bounded_queue.hpp"

namespace keyway::core {

template <class T>
using mpmc_queue = bounded_queue<T, consumers::many>;

}  // namespace keyway::core
