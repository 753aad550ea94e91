// Single-process training: the whole job in one rank (no servers). It is the reference the
// distributed runtime is compared against, and what `phoenix train` runs without mpirun.
#pragma once

#include <functional>

#include "kernels/backend.h"
#include "kernels/model.h"
#include "runtime/core/config.h"
#include "runtime/core/metrics.h"
#include "runtime/data/fashion_mnist.h"

namespace phx::train {

struct TrainResult {
  Summary summary;
  double finalTrainLoss = 0;  // mean over the steps since the previous evaluation
  double finalTestLoss = 0;
};

// Accuracy and mean loss of the model on a whole dataset, in chunks of `chunk` samples.
struct EvalResult {
  double accuracy = 0, loss = 0;
};
// Accuracy and mean loss over the first `limit` samples of ds (0 or more than it has: all).
// `between` (if set) runs after every chunk: a worker answers its peers meanwhile.
EvalResult evaluate(kernels::Model& model, const data::Dataset& ds, int chunk, int limit = 0,
                    const std::function<void()>& between = {});

// "42s", "3m05s", "1h02m" ("?" when unknown).
std::string fmtDuration(double seconds);

// Runs the configured training; writes the metrics CSV and summary JSON when asked to.
TrainResult runLocal(const Config& cfg);
// The same with a dataset already in memory (tests).
TrainResult runLocal(const Config& cfg, const data::FashionMnist& data);

}  // namespace phx::train
