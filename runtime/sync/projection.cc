#include "runtime/sync/projection.h"

#include <algorithm>

namespace phx::sync {

const char* className(WorkerClass c) {
  switch (c) {
    case WorkerClass::kUnknown: return "unknown";
    case WorkerClass::kPioneer: return "pioneer";
    case WorkerClass::kNormal: return "normal";
    case WorkerClass::kStraggler: return "straggler";
  }
  return "?";
}

int32_t medianOf(std::vector<int32_t> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

double StragglerProjection::observe(double seconds) {
  ema_ = ema_ == 0 ? seconds : alpha_ * seconds + (1 - alpha_) * ema_;
  return ema_;
}

WorkerClass StragglerProjection::classify(double median) { return classifyValue(ema_, median); }

WorkerClass StragglerProjection::classifyValue(double value, double median) {
  WorkerClass c = WorkerClass::kUnknown;
  if (median > 0 && value > 0)
    c = value > (1 + theta_) * median ? WorkerClass::kStraggler
        : value < median              ? WorkerClass::kPioneer
                                      : WorkerClass::kNormal;
  ++counts_[static_cast<int>(c)];
  if (c == WorkerClass::kStraggler) {
    ++streak_;
    if (firstStraggler_ < 0) firstStraggler_ = classified_;
  } else {
    streak_ = 0;
  }
  ++classified_;
  return c;
}

}  // namespace phx::sync
