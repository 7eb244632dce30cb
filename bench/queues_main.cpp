// keyway-bench-queues: the runtime's micro-benchmarks (queues, mesh,
// partitioners, block_pool). Usage: keyway-bench-queues [--quick] [--json PATH]
#include <cstdio>
#include <cstring>
#include <string>

#include "bench/report.hpp"

int main(int argc, char** argv) {
  keyway::bench::options opt;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      opt.quick = true;
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--json PATH]\n", argv[0]);
      return 2;
    }
  }
  keyway::bench::report rep;
  keyway::bench::run_queue_benches(opt, rep);
  keyway::bench::run_mesh_benches(opt, rep);
  keyway::bench::run_partitioner_benches(opt, rep);
  keyway::bench::run_pool_benches(opt, rep);
  rep.print_table();
  if (!json_path.empty() && !rep.write_json(json_path)) {
    std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
    return 1;
  }
  return 0;
}
