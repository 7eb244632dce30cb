// mpsc_queue<T>: bounded multi-producer/single-consumer queue. See core/bounded_queue.hpp.
#pragma once

#include "core/bounded_queue.hpp"

namespace keyway::core {

template <class T>
using mpsc_queue = bounded_queue<T, consumers::one>;

}  // namespace keyway::core
