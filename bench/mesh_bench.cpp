#include "bench/report.hpp"

namespace keyway::bench {
void run_mesh_benches(const options&, report&) {}
}  // namespace keyway::bench
