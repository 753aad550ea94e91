// The progress line and the evaluation schedule shared by the single-process and the
// parameter-server training loops: "step 300/5625  epoch 0.16  8123 samples/s  loss 0.61
// acc 84.10 %  ETA 41s" at most every --progress-every seconds, and whether an evaluation is
// due after a step (--eval-every N steps, Ts seconds, or 0 = at every epoch end).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>

#include "runtime/core/config.h"

namespace phx::train {

class Progress {
 public:
  // samplesScale: how many workers' samples one step of this rank stands for (the chief of a
  // BSP job reports the whole job's rate).
  Progress(const Config& cfg, int64_t totalSteps, int64_t stepsPerEpoch, double samplesScale = 1);

  // Call after each step with its sample count and mean loss; prints when due.
  void step(int64_t done, int samples, double loss);
  // Whether an evaluation is due after step `done` (never after the last: the caller does it).
  bool evalDue(int64_t done);
  void markEval(double accuracy);
  double elapsed() const;
  // Mean training loss since the previous call (the metrics row's train_loss); the previous
  // value again when no step ran in between (NaN before the first step).
  double takeEvalLoss();

 private:
  using Clock = std::chrono::steady_clock;
  const Config& cfg_;
  Schedule evalEvery_;
  int64_t total_, perEpoch_;
  double scale_;
  Clock::time_point start_, windowStart_;
  double lastEvalTime_ = 0, lastAcc_ = -1, lastEvalLoss_ = NAN;
  double windowLoss_ = 0, evalLoss_ = 0;
  int64_t windowSteps_ = 0, windowSamples_ = 0, evalSteps_ = 0;
};

}  // namespace phx::train
