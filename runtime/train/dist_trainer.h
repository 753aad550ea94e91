// Parameter-server training: what every rank of `mpirun -n N phoenix train` runs. The rank's
// role comes from the RoleLayout (servers, replicas, spares, workers); servers run the shard
// event loop, workers run the training loop against the servers through a PsClient (group
// leaders) or their group leader (other group members). The chief worker (worker 0) evaluates,
// prints progress, writes the metrics CSV, collects every rank's counters at the end and
// writes the summary JSON. Works over any Transport (MPI in jobs, in-process in tests).
#pragma once

#include "recovery/detector.h"
#include "runtime/ps/job_spec.h"
#include "runtime/ps/layout.h"
#include "runtime/core/config.h"
#include "runtime/data/fashion_mnist.h"
#include "runtime/train/local_trainer.h"
#include "runtime/transport/transport.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace phx::train {

// Runs this rank's part of the job. data may be null for ranks that load it themselves (it is
// loaded only where needed: workers; servers, replicas and spares never read it). Returns the summary on the chief, an empty result elsewhere.
// detectorT: a second transport over the same ranks for the failure detector's thread (null:
// no failure detection, as in the in-process tests of the protocol).
// membership (optional): how replacements are started when no spare is left (null respawn:
// never), and, in a replacement process, the view it joins at (it then takes over like a spare).
struct Membership {
  recovery::Respawner respawn;
  const recovery::View* joinView = nullptr;
  // Called on every surviving rank when its part of the job is done, with the ranks the final
  // view holds failed (main: ends those still there on this host, frozen ones).
  std::function<void(const std::vector<int>& failed)> atEnd;
  // Called once this rank knows the job's spec (runtime/ps/job_spec.h, serialized): a rank that
  // starts a replacement process sends it along. In a replacement: the spec it joined with.
  std::function<void(const std::vector<unsigned char>& spec)> onSpec;
  const std::vector<unsigned char>* joinSpec = nullptr;
};
// A model trained by its caller's own loop (the library API in runtime/api, the Python
// module): a flat vector of `params` floats in host memory. Workers give the same spec; the
// chief's `init` and `totalSteps` are the job's (the servers start from them).
struct ExternalModel {
  int64_t params = 0;
  std::vector<float> init;     // initial parameters (params values)
  int64_t totalSteps = 0;      // steps every worker trains
  int64_t stepsPerEpoch = 0;   // for the metrics' epoch column (0: totalSteps)
  std::string name = "external";
  // Optional: the chief's evaluation of a weight vector (at --eval-every and at the end);
  // without it the summary's accuracy is null.
  std::function<EvalResult(const float* params)> evaluate;
};

// The parts of runDistributed, for callers that train their own model (runtime/api): one
// rank's job. The constructor validates the flags, lays out the roles and starts failure
// detection; then serve() (servers, replicas, spares, replacements: until the job ends) or, on
// a worker, trainBuiltin() or externalWorker() (the caller drives the returned loop: begin(),
// step() per step, end()); finish() at the end (ends frozen failed ranks, leaves detection).
// Throws UserError when `model` cannot be trained with these flags (sizes, a sync mode that
// moves work inside the model, worker groups).
void checkExternalModel(const Config& cfg, const ExternalModel& model);
class WorkerLoop;
struct FtContext;
class DistJob {
 public:
  DistJob(const Config& cfg, transport::Transport& t, transport::Transport* detectorT,
          const Membership* membership);
  ~DistJob();
  bool isWorker() const;
  int rank() const { return t_.rank(); }
  const ps::RoleLayout& layout() const { return layout_; }
  void serve();
  TrainResult trainBuiltin(const data::FashionMnist& data);
  std::unique_ptr<WorkerLoop> externalWorker(const ExternalModel& model);
  void finish();

 private:
  void knowSpec(const ps::JobSpec& spec);
  void sendSetup();
  const Config& cfg_;
  transport::Transport& t_;
  const Membership* membership_;
  bool replacement_;
  ps::RoleLayout layout_;
  ps::Role role_ = ps::Role::kWorker;
  std::unique_ptr<FtContext> ft_;
  std::unique_ptr<recovery::FailureDetector> det_;
  ps::JobSpec spec_;
};

TrainResult runDistributed(const Config& cfg, transport::Transport& t,
                           const data::FashionMnist* data = nullptr,
                           transport::Transport* detectorT = nullptr,
                           const Membership* membership = nullptr);

// CPU threads a worker rank should use when --threads is 0: the cores of this node shared
// among the ranks that compute on it, at least 1.
int workerThreads(int requested, int ranksOnNode);

}  // namespace phx::train
