#include "bench/report.hpp"

namespace keyway::bench {
void run_queue_benches(const options&, report&) {}
}  // namespace keyway::bench
