#include "runtime/train/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "runtime/core/log.h"
#include "runtime/train/local_trainer.h"

namespace phx::train {

Progress::Progress(const Config& cfg, int64_t totalSteps, int64_t stepsPerEpoch,
                   double samplesScale)
    : cfg_(cfg), evalEvery_(parseSchedule("--eval-every", cfg.evalEvery)), total_(totalSteps),
      perEpoch_(stepsPerEpoch), scale_(samplesScale), start_(Clock::now()),
      windowStart_(start_) {}

double Progress::elapsed() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

void Progress::step(int64_t done, int samples, double loss) {
  windowLoss_ += loss;
  evalLoss_ += loss;
  ++windowSteps_;
  ++evalSteps_;
  windowSamples_ += samples;
  const double window = std::chrono::duration<double>(Clock::now() - windowStart_).count();
  if (window < cfg_.progressSeconds && done != total_) return;
  const double now = elapsed();
  const double rate = scale_ * windowSamples_ / std::max(1e-9, window);
  const double eta = (total_ - done) * (now / done);
  char acc[32] = "";
  if (lastAcc_ >= 0) std::snprintf(acc, sizeof acc, "  acc %.2f %%", lastAcc_ * 100.0);
  char line[256];
  std::snprintf(line, sizeof line, "step %lld/%lld  epoch %.2f  %.0f samples/s  loss %.4f%s  ETA %s",
                static_cast<long long>(done), static_cast<long long>(total_),
                static_cast<double>(done) / perEpoch_, rate, windowLoss_ / windowSteps_, acc,
                fmtDuration(eta).c_str());
  log::info(line);
  windowStart_ = Clock::now();
  windowLoss_ = 0;
  windowSteps_ = 0;
  windowSamples_ = 0;
}

bool Progress::evalDue(int64_t done) {
  if (done >= total_) return false;
  if (evalEvery_.empty()) return done % perEpoch_ == 0;
  if (evalEvery_.isTime()) return elapsed() - lastEvalTime_ >= evalEvery_.seconds;
  return done % evalEvery_.steps == 0;
}

void Progress::markEval(double accuracy) {
  lastAcc_ = accuracy;
  lastEvalTime_ = elapsed();
}

double Progress::takeEvalLoss() {
  if (evalSteps_) lastEvalLoss_ = evalLoss_ / evalSteps_;
  evalLoss_ = 0;
  evalSteps_ = 0;
  return lastEvalLoss_;
}

}  // namespace phx::train
