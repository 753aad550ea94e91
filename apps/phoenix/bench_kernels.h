// `phoenix bench kernels`: training throughput (samples/s) of whole training steps
// (forward, backward, SGD update) per model, batch size and thread count.
#pragma once

#include <string>
#include <vector>

namespace phx::apps {

struct KernelBenchOptions {
  std::vector<std::string> models{"cnn", "mlp"};
  std::vector<int> batches{32, 128};
  std::vector<int> threads{1, 2};
  std::string device = "cpu";
  double seconds = 3.0;  // measured time per configuration (after warm-up)
  std::string jsonPath;  // optional machine-readable results
};

int runKernelBench(const KernelBenchOptions& opt);

}  // namespace phx::apps
