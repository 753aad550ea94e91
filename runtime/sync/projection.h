// Straggler projection (Falcon's first guideline, docs/architecture.md): each worker keeps a
// moving average of its step time; the servers send back the median over the workers; a worker
// is a straggler when its average exceeds (1 + theta) x the median, a pioneer when it is below
// the median, normal otherwise. A straggler for `warnAfter` steps in a row prints a warning
// (like Horovod's stall inspector), repeated every `warnEvery` further steps.
#pragma once

#include <cstdint>
#include <vector>

namespace phx::sync {

enum class WorkerClass { kUnknown, kPioneer, kNormal, kStraggler };
// The median of the clients' reported step times (the upper one of an even count; 0 if none).
int32_t medianOf(std::vector<int32_t> v);
const char* className(WorkerClass c);

class StragglerProjection {
 public:
  explicit StragglerProjection(double theta, double alpha = 0.3) : theta_(theta), alpha_(alpha) {}
  // One step took `seconds`; returns the updated moving average (what the worker reports).
  double observe(double seconds);
  // Classifies against the median the servers sent (<= 0: not known yet), counting classes.
  WorkerClass classify(double medianSeconds);
  // Classifies a given projection (EPSP: the projected iteration time on p lanes) against the
  // median, counting it like classify().
  WorkerClass classifyValue(double projectedSeconds, double medianSeconds);
  double average() const { return ema_; }
  int64_t count(WorkerClass c) const { return counts_[static_cast<int>(c)]; }
  int64_t streak() const { return streak_; }  // consecutive straggler classifications
  int64_t firstStraggler() const { return firstStraggler_; }  // classification index, -1: never
  // True when the caller should print the stall warning now.
  bool warnNow(int64_t warnAfter = 20, int64_t warnEvery = 200) const {
    return streak_ == warnAfter || (streak_ > warnAfter && (streak_ - warnAfter) % warnEvery == 0);
  }

 private:
  double theta_, alpha_;
  double ema_ = 0;
  int64_t counts_[4] = {0, 0, 0, 0};
  int64_t streak_ = 0, classified_ = 0, firstStraggler_ = -1;
};

}  // namespace phx::sync
