// Internal to runtime/train: the worker role of a parameter-server job (dist_trainer.cc: the
// training loop; worker_exchange.cc: the exchange with the group and the servers;
// chief_summary.cc: the chief's end of run,
// final weights, counters and the summary). Not a public interface: dist_trainer.h is.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/group_reduce.h"
#include "kernels/model.h"
#include "recovery/view.h"
#include "runtime/core/metrics.h"
#include "runtime/sync/projection.h"
#include "runtime/train/dist_trainer.h"
#include "runtime/train/epsp.h"
#include "runtime/train/roles.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

class WorkerLoop {
 public:
  WorkerLoop(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
             const data::FashionMnist& fm, FtContext& ft)
      : cfg_(cfg), t_(t), layout_(layout), fm_(fm), ft_(ft), w_(layout.workerIndex(t.rank())),
        group_(layout.groupOf(w_)), leader_(layout.leaderOf(group_)),
        be_(kernels::makeBackend(cfg.device, workerThreads(cfg.threads, ranksOnNode(t)))),
        model_(*be_, kernels::parseModelSpec(cfg.model),
               // any worker may become the chief (and evaluate) when failures are handled
               std::max(cfg.batch, w_ == 0 || ft.det ? cfg.evalBatch : 1)),
        n_(model_.paramCount()),
        client_(t, layout, ps::splitKeys(static_cast<int64_t>(n_), layout.servers()), group_, 0,
                cfg.peerTimeoutS) {
    // CPU workers exchange straight from the model's buffers; GPU workers stage through host.
    if (be_->kind() != kernels::DeviceKind::kCpu) {
      hostParams_.resize(n_);
      hostGrads_.resize(n_);
    }
    if (isLeader() && layout_.groupEnd(group_) - leader_ > 1) recv_.resize(n_);
    projection_ = phx::sync::StragglerProjection(cfg.stragglerTheta);
    straggle_ = cfg.straggleSpec();
    if (ft_.det)
      client_.setRefresh([this] { return onViewChange(); });
    if (ft_.det && isLeader() && (ft_.mode == "stateless" || ft_.mode == "hybrid"))
      client_.setStateless(paramBuf(), cfg.statelessBuffer, cfg.backlogRule == "staleness");
  }

  TrainResult run();
  ~WorkerLoop();

 private:
  bool isLeader() const { return w_ == leader_; }
  float* paramBuf() { return hostParams_.empty() ? model_.params() : hostParams_.data(); }
  float* gradBuf() { return hostGrads_.empty() ? model_.grads() : hostGrads_.data(); }
  void uploadParams() {
    if (!hostParams_.empty()) be_->copyToDevice(model_.params(), hostParams_.data(), n_ * 4);
  }
  void exchange(int64_t clock, double loss);  // push gradient of clock, get weights of clock+1
  void initialWeights();
  // Worker groups: the leader sends the weights of `clock` to its members (MPI or NCCL); a
  // member receives them (header + payload, or header + NCCL broadcast) onto its device.
  void shareWeights(int64_t clock);
  Header receiveWeights(const std::string& what);
  // GPU groups: agree on NCCL (every member on its own GPU, --group-reduce) or MPI.
  void setupGroupReduce();
  std::unique_ptr<kernels::NcclGroup> nccl_;
  TrainResult finishChief(double trainSeconds, int64_t samples, double lastTrainLoss);
  ps::Directory onViewChange();
  // waitHeader that follows view changes (re-targeting the client) instead of failing.
  void waitFor(MsgType type, Header* h, int* src, const std::string& what);
  std::string eventText(const std::string& base);
  void noteFailures(const recovery::View& v);
  size_t failuresSeen_ = 0;
  struct Recovered {
    int shard, epoch;
    double firstApplyUnix, restoredVersion, bufferedApplied;
  };
  std::vector<Recovered> recovered_;
  void pollEvents();
  int64_t startStep_ = 0;
  bool stopRequested_ = false;  // a stop signal: a server said to end after this step
  int64_t stepsDone_ = -1;      // the steps this run completed (set when the loop ends)
  double straggleSeconds_ = 0;  // injected slowdown slept (--straggle, --straggle-random)
  StraggleSpec straggle_;
  phx::sync::StragglerProjection projection_{0.2};
  phx::sync::WorkerClass project(double stepSeconds);
  // EPSP / FlexRR: the sharded iteration (epsp.h); n and loss of what this worker computed.
  std::unique_ptr<ShardEngine> epsp_;
  bool enforced_ = false;
  void shardedStep(int64_t step, int* n, double* loss, double* stealS);
  void beginShardedStep(int64_t step, bool evaluating = false);
  bool alive(int rank) const { return !ft_.det || ft_.det->view().isAlive(rank); }
  // Per-iteration projection rows (<metrics>.worker<W>.csv; none without --metrics).
  std::FILE* projCsv_ = nullptr;
  // The row is written when the step ends: the projection as the step began, then where the
  // step's time went (wall ms computing own work, computing transferred shards, in the
  // exchange; this process's CPU ms over the step).
  void writeProjection(int64_t step, phx::sync::WorkerClass c, double projected);
  void finishRow(double computeS, double stealS, double exchangeS, double cpuS);
  std::string pendingRow_;
  double startUnix_ = 0;
  RankStats workerStats(int64_t samples, double trainSeconds);
  int64_t totalSteps_ = 0;
  std::vector<std::string> events_;

  const Config& cfg_;
  transport::Transport& t_;
  const ps::RoleLayout& layout_;
  const data::FashionMnist& fm_;
  FtContext& ft_;
  int w_, group_, leader_;
  bool isChief() const { return t_.rank() == ft_.chief; }
  bool wasChief_ = false;
  void takeOverAsChief();
  std::unique_ptr<MetricsCsv> metrics_;
  // After training, a non-chief worker reports and idles until released; true: it became the
  // chief meanwhile and must end the run itself.
  bool reportAndIdle(const RankStats& rs);
  std::unique_ptr<kernels::Backend> be_;
  kernels::Model model_;
  size_t n_;
  ps::PsClient client_;
  std::vector<float> hostParams_, hostGrads_, recv_;
};

}  // namespace phx::train
