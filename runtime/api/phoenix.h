// Phoenix's library API: fault-tolerant parameter-server training of the caller's own model.
//
// Every process of an mpirun job calls phoenix::run with the flags of `phoenix train`
// (--servers, --spares, --replicas, --sync, --recovery, --checkpoint-*, --summary, ...). The
// ranks that serve (servers, replicas, spares, and replacement processes started for dead
// servers) serve inside run() until the job ends; on each worker rank run() calls `train` with
// a Worker. The model is the caller's: a flat vector of float parameters, any forward/backward
// on any device; the exchange is through host memory (weights(), gradient()). The servers never
// see the model or the data: the chief worker tells them the parameter count, the initial
// values and the planned steps. Failures are handled as in `phoenix train`: a dead server is
// replaced (snapshot, chain replica, stateless hand-over), a dead worker is dropped, and the
// chief writes the same summary and metrics files.
//
//   int main(int argc, char** argv) {
//     return phoenix::run(phoenix::flags(argc, argv), [](phoenix::Worker& w) {
//       MyModel m;                       // n parameters
//       w.start(m.size(), m.init(), steps);
//       for (int64_t s = w.firstStep(); s < w.steps(); ++s) {
//         double loss = m.gradient(w.weights(), batch(w.index(), s), w.gradient());
//         if (!w.step(s, loss, batchSize)) break;   // false: the run has ended
//       }
//     });
//   }
//
// Launch: mpirun --enable-recovery (Open MPI 4) / --with-ft ulfm (Open MPI 5) -n N prog FLAGS.
// Linking: find_package(Phoenix) and target_link_libraries(prog PRIVATE Phoenix::phoenix).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace phoenix {

struct Eval {
  double accuracy = 0, loss = 0;
};

class Worker {
 public:
  // This worker's index (0 .. count()-1) and the number of workers; the chief (worker 0 or,
  // after its death, the lowest live worker) evaluates and writes the summary.
  int index() const;
  int count() const;
  bool chief() const;
  // Declares the model: n parameters, their initial values (the chief's are the job's: give
  // the same on every worker), the steps every worker trains, and optionally how the chief
  // evaluates a weight vector (at --eval-every and at the end; the summary's accuracy).
  // Afterwards weights() holds the initial weights.
  void start(int64_t n, const float* init, int64_t steps,
             std::function<Eval(const float* weights)> evaluate = {}, const std::string& name = "external");
  int64_t firstStep() const;  // 0, or where a --resume'd job goes on
  int64_t steps() const;
  int64_t size() const;       // n
  // Host buffers of n floats: the weights to compute the next gradient on, and the gradient
  // of the current step (written by the caller before step()).
  float* weights();
  float* gradient();
  // Pushes gradient() as step `step`'s (mean loss `loss` over `samples` samples) and fills
  // weights() with the next weights under the --sync rule. False: the run has ended: this was
  // the last step, or the job stops after it (a stop signal reached some rank); leave the loop.
  // The last step ends the run: the chief evaluates (while the caller's data still lives) and
  // writes the summary before it returns.
  bool step(int64_t step, double loss, int samples = 1);

  struct Impl;
  explicit Worker(Impl* impl) : impl_(impl) {}

 private:
  Impl* impl_;
};

// The flags in argv after the program name, as strings.
std::vector<std::string> flags(int argc, char** argv);

// Runs this process's part of the job with `flags` (those of `phoenix train`) and returns its
// exit status: 0, or 2 for a bad flag or bad use (one line on stderr says which), 3 when a peer
// failed beyond recovery, 1 otherwise. An exception thrown by `train` ends the job with 1.
int run(const std::vector<std::string>& flags, const std::function<void(Worker&)>& train);

}  // namespace phoenix
