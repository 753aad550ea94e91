// `phoenix bench pushpull`: the parameter-server exchange (push + pull per step, W workers,
// S servers) against MPI_Allreduce of the same size over the same worker ranks, with Open
// MPI's default algorithm and with ring, plus this machine's memory-copy bandwidth. Runs
// under mpirun with S + W ranks.
#pragma once

#include <string>
#include <vector>

namespace phx::apps {

struct PushPullBenchOptions {
  int servers = 1;
  std::vector<long long> sizes = {100000, 1000000, 10000000, 100000000};  // floats
  double seconds = 1.0;  // measured time per size and method (at least 3 iterations)
  std::string jsonPath;
};

// Returns the exit code. Initialises and finalises MPI itself.
int runPushPullBench(const PushPullBenchOptions& opt);

}  // namespace phx::apps
