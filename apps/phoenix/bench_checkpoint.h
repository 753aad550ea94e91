// `phoenix bench checkpoint`: HDF5 snapshot write and read bandwidth, and the step-time cost of
// checkpointing every N steps, synchronous (the training thread writes) against asynchronous
// (the training thread copies, a background thread writes), in one process.
#pragma once

#include <string>

namespace phx::apps {

struct CheckpointBenchOptions {
  std::string model = "cnn";
  int batch = 32;
  int threads = 1;
  int every = 100;        // steps between snapshots
  int steps = 600;        // measured steps per mode and round
  int rounds = 2;         // none/sync/async alternate, this many times
  int ioRepeats = 5;      // snapshots written and read for the bandwidth figures
  std::string dir = "phoenix-bench-checkpoint";
  std::string jsonPath;
};

int runCheckpointBench(const CheckpointBenchOptions& opt);

}  // namespace phx::apps
