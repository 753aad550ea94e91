// Internal to runtime/train: the sharded iteration of EPSP and FlexRR (docs/architecture.md,
// "EPSP"). A worker's iteration is K shards (micro-batches) of its batch. Lanes (threads, each
// with its own backend and model copy; streams on a GPU) take shards from the front of the
// worker's queue, p_w of them at once, and accumulate the shards' mean gradients; the push is
// their sum / K. Task transfer: a pioneer asks the other workers for not-yet-started shards
// (kSteal, header only); a worker grants shards from the tail of its own queue (kGrant carries
// the shard range and the step, never data: the pioneer reads those samples itself, from the
// same seeded epoch permutation). Every sample of an epoch is computed exactly once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/model.h"
#include "runtime/core/config.h"
#include "runtime/data/fashion_mnist.h"
#include "runtime/ps/layout.h"
#include "runtime/transport/transport.h"

namespace phx::train {

inline double secondsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Shard k of worker `owner`'s iteration `step`: n samples, ids into the owner's epoch order.
struct ShardTask {
  int owner = -1;
  int64_t step = 0;
  int k = 0;
  int epoch = 0;
  const uint32_t* ids = nullptr;
  int n = 0;
};

struct ShardCounters {
  int64_t own = 0;            // own shards computed here
  int64_t stolen = 0;         // other workers' shards computed here (transfer in)
  int64_t given = 0;          // own shards granted to another worker (transfer out)
  int64_t stealRequests = 0;  // requests sent
  int64_t iterations = 0;
  double laneSum = 0;         // sum of p_w over iterations (mean parallelism = laneSum / iterations)
  int maxLanes = 0;
};

class ShardEngine {
 public:
  // enforced: grants go to a requester on the same step (its gradients join that step's push);
  // otherwise (slack EPSP, FlexRR) to a requester ahead of this worker. elastic: p_w follows
  // the measured throughput (EPSP); off: one lane (FlexRR).
  ShardEngine(const Config& cfg, const data::Dataset& train, const ps::RoleLayout& layout,
              transport::Transport& t, int worker, int64_t stepsPerEpoch, bool enforced, bool elastic);
  ~ShardEngine();
  ShardEngine(const ShardEngine&) = delete;
  ShardEngine& operator=(const ShardEngine&) = delete;

  // The weights the lanes compute with from now on (host memory, paramCount floats, unchanged
  // until the next publish except while a pull writes into it: lanes that have not copied the
  // newest weights yet then stay idle).
  void publish(const float* params);
  // Enforced mode on the CPU: lane 0 accumulates straight into the push buffer (collect then
  // only adds the other lanes). Not in slack mode: its steals run while that buffer is sent.
  void setPushBuffer(float* grads);
  // Elastic parallelism for the next iteration from the servers' median single-lane
  // iteration time (<= 0: unknown, keep p_w).
  void plan(double medianSeconds);
  // This worker's iteration `step`: its K shards on p_w lanes; answers steal requests meanwhile.
  void runOwn(int64_t step);
  // Queues the iteration's shards and returns at once (the chief does so before it evaluates:
  // its lanes and, by transfer, the other workers compute them meanwhile); runOwn then waits.
  void startOwn(int64_t step);
  bool started(int64_t step) const { return curStep_ == step; }
  // Task transfer: asks the other live workers for shards (all at once, again whenever one
  // grants some) until none has any left (or `stop()` says to stop), computing what they
  // grant. Returns when no request is unanswered and the lanes are idle; the shards computed.
  int64_t stealRound(int64_t clock, const std::function<bool()>& stop,
                     const std::function<bool(int rank)>& alive);
  // Enforced mode, right after startOwn: asks the worker that gave it the most shards last
  // iteration for shards now, saying how long this worker's own shards still take (kEarly),
  // so that the grant arrives while this worker computes and the slow worker never starts
  // shards that a faster one would finish first. The answer is taken by service(); stealRound waits for it.
  void askEarly(int64_t step, const std::function<bool(int rank)>& alive);
  // dst = (sum of the lanes' accumulated shard gradients) / K; the lanes start afresh. dst must
  // be the push buffer given to setPushBuffer, if one was.
  void collect(float* dst, double* lossSum, int64_t* samples);
  // Answers steal requests and notes finished workers; never waits. Called from every wait.
  void service();
  // End of training: tells every other worker, then answers requests until each live worker
  // has said the same.
  void finish(const std::function<bool(int rank)>& alive, double timeoutS);
  void writeAudit();

  int lanes() const { return active_; }
  // One lane doing the whole batch: batch x time per sample (what the push reports).
  double singleLaneSeconds() const { return static_cast<double>(cfg_.batch) * perSample_; }
  // Projected finish of an iteration started now: K shards x time per shard / p_w.
  double projectedSeconds() const { return singleLaneSeconds() / active_; }
  const ShardCounters& counters() const { return counters_; }
  double straggleSeconds() const { return straggleSeconds_; }

 private:
  struct Lane {
    std::thread th;
    std::unique_ptr<kernels::Backend> be;
    std::unique_ptr<kernels::Model> model;
    uint64_t version = 0;
    bool fresh = true;
    double lossSum = 0;
    int64_t samples = 0;
    std::vector<float> x, hostGrads;
    std::vector<int32_t> y;
    std::vector<std::pair<int, uint32_t>> audit;
    bool busy = false;           // computing a shard (under mu_)
    std::chrono::steady_clock::time_point began{};
  };
  void laneMain(int i);
  void waitIdle();
  void rethrowLaneError();
  // The samples of shard k of `owner`'s step (epoch order cached per owner).
  ShardTask taskOf(int owner, int64_t step, int k);
  void reapSends();
  // Under mu_: own unstarted shards of the current step at the queue's tail; seconds this
  // worker still needs for its queue and in-flight shards (over its lanes).
  int grantable() const;
  double remainingSeconds() const;
  // Under mu_: how many own shards to keep back for faster workers (startOwn); their release.
  void reserve();
  void releaseReserve();
  // Under mu_: the answer to a steal request (shards taken from the queue's tail).
  transport::Header grant(const transport::Header& req);
  void sendSteal(int v, int64_t clock, bool early);
  void takeGrant(const transport::Header& g, int v);  // under mu_

  const Config& cfg_;
  const data::Dataset& train_;
  const ps::RoleLayout& layout_;
  transport::Transport& t_;
  int w_;
  int64_t stepsPerEpoch_;
  bool enforced_, elastic_;
  StraggleSpec straggle_;
  kernels::ModelSpec spec_;
  size_t n_ = 0;
  int shardMax_ = 1, threads_ = 1;
  data::EpochSharder sharder_;
  std::map<std::pair<int, int>, std::vector<uint32_t>> orders_;  // (owner, epoch) -> ids

  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<ShardTask> queue_;
  int inflight_ = 0, ready_ = 0, active_ = 1;
  int capacity_ = 1;  // lanes a CPU quota leaves room for (cpuQuotaCores(), re-read every second)
  std::chrono::steady_clock::time_point capacityAt_{};
  bool stop_ = false;
  uint64_t version_ = 0;
  const float* params_ = nullptr;
  std::vector<float> published_;  // slack: the lanes' own copy (pulls write the worker's buffer)
  float* pushBuf_ = nullptr;
  bool cpu_ = true;
  int64_t curStep_ = -1;
  double straggleSeconds_ = 0;  // injected slowdown slept by the lanes
  // EMA of one lane's seconds per sample (compute + injected slowdown): written by the lanes
  // under mu_, read by the worker thread without it (TSan found the race with a plain double)
  std::atomic<double> perSample_{0};
  std::exception_ptr laneError_;
  std::vector<Lane> lanes_;

  std::vector<char> finished_;          // by worker index
  // Task transfer state, by worker index: a steal request to it is unanswered (since when);
  // the step at which it was last answered by this worker, at which it said it had no own
  // shard left to compute (its request) and at which it held none back for others (its grant).
  std::vector<char> pending_;
  std::vector<std::chrono::steady_clock::time_point> pendingSince_;
  std::vector<int64_t> answeredAt_, doneAt_, noneLeftAt_;
  std::vector<int64_t> grantedStep_, grantedCount_;  // its last grant of shards to this worker
  std::vector<std::pair<int, transport::Header>> deferred_;  // requests for the step after curStep_
  std::vector<char> reask_;        // it granted shards: ask it again
  bool wake_ = false;              // service() took a grant: wake the lanes
  int64_t granted_ = 0;            // shards granted to this worker in this stealRound
  bool finishing_ = false;
  int reserved_ = 0;  // own shards at the queue's tail the lanes leave for faster workers
  int64_t lastOwnStep_ = -1;  // the last iteration in which a lane computed an own shard
  double median_ = 0, releaseAfter_ = 0;
  std::chrono::steady_clock::time_point stepStart_{};
  std::vector<transport::SendId> sends_;
  ShardCounters counters_;
};

}  // namespace phx::train
