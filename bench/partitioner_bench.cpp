#include "bench/report.hpp"

namespace keyway::bench {
void run_partitioner_benches(const options&, report&) {}
}  // namespace keyway::bench
