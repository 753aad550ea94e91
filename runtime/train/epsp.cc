#include "runtime/train/epsp.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>

#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/train/dist_trainer.h"
#include "runtime/train/roles.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

ShardEngine::ShardEngine(const Config& cfg, const data::Dataset& train, const ps::RoleLayout& layout,
                         transport::Transport& t, int worker, int64_t stepsPerEpoch, bool enforced,
                         bool elastic)
    : cfg_(cfg), train_(train), layout_(layout), t_(t), w_(worker), stepsPerEpoch_(stepsPerEpoch),
      enforced_(enforced), elastic_(elastic), straggle_(cfg.straggleSpec()),
      spec_(kernels::parseModelSpec(cfg.model)), sharder_(train.count, layout.workers(), cfg.seed),
      finished_(static_cast<size_t>(layout.workers()), 0),
      pending_(static_cast<size_t>(layout.workers()), 0),
      pendingSince_(static_cast<size_t>(layout.workers())),
      answeredAt_(static_cast<size_t>(layout.workers()), -1),
      doneAt_(static_cast<size_t>(layout.workers()), -1),
      noneLeftAt_(static_cast<size_t>(layout.workers()), -1),
      grantedStep_(static_cast<size_t>(layout.workers()), -1),
      grantedCount_(static_cast<size_t>(layout.workers()), 0),
      reask_(static_cast<size_t>(layout.workers()), 0) {
  shardMax_ = (cfg.batch + cfg.shards - 1) / cfg.shards;
  threads_ = workerThreads(cfg.threads, ranksOnNode(t));
  const int lanes = elastic ? cfg.maxParallelism : 1;
  lanes_ = std::vector<Lane>(static_cast<size_t>(lanes));
  for (int i = 0; i < lanes; ++i) lanes_[i].th = std::thread([this, i] { laneMain(i); });
  std::unique_lock<std::mutex> lk(mu_);
  idle_.wait(lk, [&] { return ready_ == lanes || laneError_; });
  if (laneError_) {
    lk.unlock();
    stop_ = true;
    work_.notify_all();
    for (auto& l : lanes_) l.th.join();
    std::rethrow_exception(laneError_);
  }
  n_ = lanes_[0].model->paramCount();
  cpu_ = lanes_[0].be->kind() == kernels::DeviceKind::kCpu;
}

void ShardEngine::setPushBuffer(float* grads) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!enforced_ || !cpu_) return;
  pushBuf_ = grads;
  lanes_[0].model->bindGrads(grads);
}

ShardEngine::~ShardEngine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_.notify_all();
  for (auto& l : lanes_)
    if (l.th.joinable()) l.th.join();
  for (auto id : sends_) (void)t_.sendDone(id);
}

// A lane builds its own backend and model on its own thread (the CPU backend's thread count
// is per thread), then computes shards until stopped.
void ShardEngine::laneMain(int i) {
  Lane& L = lanes_[i];
  try {
    L.be = kernels::makeBackend(cfg_.device, threads_);
    L.model = std::make_unique<kernels::Model>(*L.be, spec_, shardMax_);
    L.x.resize(static_cast<size_t>(shardMax_) * train_.sampleSize());
    L.y.resize(static_cast<size_t>(shardMax_));
    if (L.be->kind() != kernels::DeviceKind::kCpu) L.hostGrads.resize(L.model->paramCount());
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!laneError_) laneError_ = std::current_exception();
    idle_.notify_all();
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++ready_;
  }
  idle_.notify_all();
  for (;;) {
    ShardTask task;
    const float* params = nullptr;
    uint64_t version = 0;
    int64_t step = 0;
    {
      std::unique_lock<std::mutex> lk(mu_);
      // An active lane waits at most 2 ms between checks: the predicate depends on the
      // reserve too, which more than one path lowers; an inactive lane (i >= p_w) is woken by
      // startOwn, which follows every change of p_w.
      while (!(stop_ || (i < active_ && static_cast<int>(queue_.size()) > reserved_))) {
        if (i < active_)
          work_.wait_for(lk, std::chrono::milliseconds(2));
        else
          work_.wait(lk);
      }
      if (stop_) return;
      task = queue_.front();
      queue_.pop_front();
      ++inflight_;
      L.busy = true;
      L.began = std::chrono::steady_clock::now();
      params = params_;
      version = version_;
      step = curStep_;
    }
    try {
      const auto c0 = std::chrono::steady_clock::now();
      if (L.version != version) {
        // CPU lanes compute with the published weights in place; device lanes copy them.
        if (cpu_)
          L.model->bindParams(const_cast<float*>(params));
        else
          L.be->copyToDevice(L.model->params(), params, n_ * sizeof(float));
        L.version = version;
      }
      data::gatherBatch(train_, task.ids, task.n, L.x.data(), L.y.data());
      const uint64_t dropoutSeed = cfg_.seed + 1000003ull * static_cast<uint64_t>(task.owner);
      const kernels::LossResult r = L.model->forwardBackward(
          L.x.data(), L.y.data(), task.n, dropoutSeed,
          static_cast<uint64_t>(task.step) * static_cast<uint64_t>(cfg_.shards) + task.k, !L.fresh,
          1.0f / static_cast<float>(cfg_.shards), /*deferWeights=*/true);
      L.be->synchronize();
      // Injected straggling scales this lane's real compute (this worker's slowness at its
      // current iteration, whoever owns the shard).
      const double slept = straggleAfter(straggle_.factorFor(cfg_.seed, t_.rank(), step), c0);
      const double took = secondsBetween(c0, std::chrono::steady_clock::now());
      if (!cfg_.auditSamples.empty())
        for (int s = 0; s < task.n; ++s) L.audit.emplace_back(task.epoch, task.ids[s]);
      std::lock_guard<std::mutex> lk(mu_);
      L.fresh = false;
      L.lossSum += r.lossSum;
      L.samples += task.n;
      const double per = took / task.n;
      perSample_ = perSample_.load() == 0 ? per : 0.3 * per + 0.7 * perSample_.load();
      straggleSeconds_ += slept;
      if (task.owner == w_) {
        ++counters_.own;
        lastOwnStep_ = task.step;
      } else {
        ++counters_.stolen;
      }
      --inflight_;
      L.busy = false;
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!laneError_) laneError_ = std::current_exception();
      --inflight_;
      L.busy = false;
    }
    idle_.notify_all();
  }
}

void ShardEngine::rethrowLaneError() {
  std::lock_guard<std::mutex> lk(mu_);
  if (laneError_) std::rethrow_exception(laneError_);
}

void ShardEngine::waitIdle() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (laneError_) std::rethrow_exception(laneError_);
      if (queue_.empty() && inflight_ == 0) return;
      releaseReserve();
      // Short waits: steal requests must be answered while the lanes compute.
      idle_.wait_for(lk, std::chrono::microseconds(500));
    }
    service();
  }
}

void ShardEngine::publish(const float* params) {
  std::lock_guard<std::mutex> lk(mu_);
  if (enforced_) {
    params_ = params;  // nothing writes it while lanes compute (the pull waits for collect)
  } else {
    published_.assign(params, params + n_);
    params_ = published_.data();
  }
  ++version_;
}

void ShardEngine::plan(double median) {
  median_ = median;
  int p = active_;
  if (elastic_ && median > 0 && perSample_ > 0)
    p = static_cast<int>(std::lround(singleLaneSeconds() / median));
  // CPU lanes beyond the cores a CPU quota leaves this rank add nothing but overhead, and they
  // would start the very shards that pioneers could take over (a straggler held to 0.13 core
  // would run all K shards "in parallel" on it, leaving none to transfer).
  if (cpu_) {
    const auto now = std::chrono::steady_clock::now();
    if (now - capacityAt_ > std::chrono::seconds(1)) {
      capacityAt_ = now;
      const double quota = cpuQuotaCores();
      capacity_ = quota > 0 ? std::max(1, static_cast<int>(quota / std::max(1, threads_) + 0.5))
                            : static_cast<int>(lanes_.size());
    }
    p = std::min(p, capacity_);
  }
  p = std::clamp(p, 1, static_cast<int>(lanes_.size()));
  std::lock_guard<std::mutex> lk(mu_);
  active_ = p;
  ++counters_.iterations;
  counters_.laneSum += p;
  counters_.maxLanes = std::max(counters_.maxLanes, p);
}

ShardTask ShardEngine::taskOf(int owner, int64_t step, int k) {
  const int epoch = static_cast<int>(step / stepsPerEpoch_);
  auto key = std::make_pair(owner, epoch);
  auto it = orders_.find(key);
  if (it == orders_.end()) {
    // Keep the orders of this epoch and the one before (a transfer can straddle a boundary).
    for (auto o = orders_.begin(); o != orders_.end();)
      o = o->first.second < epoch - 1 ? orders_.erase(o) : std::next(o);
    it = orders_.emplace(key, sharder_.shard(epoch, owner)).first;
  }
  const BatchRange b = batchRange(step, stepsPerEpoch_, cfg_.batch, static_cast<int64_t>(it->second.size()));
  const int64_t lo = b.first + b.n * k / cfg_.shards, hi = b.first + b.n * (k + 1) / cfg_.shards;
  return ShardTask{owner, step, k, epoch, it->second.data() + lo, static_cast<int>(hi - lo)};
}

void ShardEngine::startOwn(int64_t step) {
  if (started(step)) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    curStep_ = step;
    for (int k = 0; k < cfg_.shards; ++k) {
      ShardTask task = taskOf(w_, step, k);
      if (task.n > 0) queue_.push_back(task);
    }
    reserve();
  }
  work_.notify_all();
  // Requests that came for this step before it began (the requester got its weights first).
  std::vector<std::pair<int, Header>> due;
  due.swap(deferred_);
  for (auto& [src, h] : due) {
    Header g;
    {
      std::lock_guard<std::mutex> lk(mu_);
      g = grant(h);
    }
    reapSends();
    sends_.push_back(t_.send(src, g, nullptr));
  }
}

void ShardEngine::runOwn(int64_t step) {
  startOwn(step);
  waitIdle();
}

void ShardEngine::reapSends() {
  sends_.erase(std::remove_if(sends_.begin(), sends_.end(), [&](transport::SendId id) { return t_.sendDone(id); }),
               sends_.end());
}

void ShardEngine::collect(float* dst, double* lossSum, int64_t* samples) {
  rethrowLaneError();
  *lossSum = 0;
  *samples = 0;
  std::lock_guard<std::mutex> lk(mu_);
  // The lanes' gradients are already scaled by 1/K: the push is their sum. Lane 0 may have
  // accumulated into dst itself (setPushBuffer).
  bool any = false;
  if (pushBuf_) {
    PHX_ENFORCE(dst == pushBuf_, "collect into a buffer other than the push buffer");
    if (lanes_[0].fresh) std::fill(dst, dst + n_, 0.0f);
    any = true;
  }
  for (auto& L : lanes_) {
    // (CPU lanes keep their dense weight gradients until now: one GEMM over their shards.)
    if (!L.fresh) L.model->flushDeferred();
    if (!L.fresh && !(pushBuf_ && &L == &lanes_[0])) {
      const float* g = L.model->grads();
      if (!L.hostGrads.empty()) {
        L.be->copyToHost(L.hostGrads.data(), g, n_ * sizeof(float));
        g = L.hostGrads.data();
      }
      if (!any)
        std::copy(g, g + n_, dst);
      else
#pragma omp simd
        for (size_t i = 0; i < n_; ++i) dst[i] += g[i];
      any = true;
    }
    *lossSum += L.lossSum;
    *samples += L.samples;
    L.fresh = true;
    L.lossSum = 0;
    L.samples = 0;
  }
  if (!any) std::fill(dst, dst + n_, 0.0f);
}

void ShardEngine::finish(const std::function<bool(int rank)>& alive, double timeoutS) {
  finished_[w_] = 1;
  finishing_ = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    reserved_ = 0;
  }
  work_.notify_all();
  // Requests deferred to a next step that will not come: answered with nothing.
  for (auto& [src, h] : deferred_) {
    Header g;
    {
      std::lock_guard<std::mutex> lk(mu_);
      g = grant(h);
    }
    sends_.push_back(t_.send(src, g, nullptr));
  }
  deferred_.clear();
  for (int v = 0; v < layout_.workers(); ++v) {
    if (v == w_ || !alive(layout_.workerRank(v))) continue;
    Header f;
    f.type = MsgType::kFinished;
    f.client = w_;
    sends_.push_back(t_.send(layout_.workerRank(v), f, nullptr));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutS);
  transport::Backoff b;
  for (;;) {
    service();
    bool all = true;
    for (int v = 0; v < layout_.workers(); ++v)
      if (!finished_[v] && alive(layout_.workerRank(v))) all = false;
    if (all) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw transport::PeerFailure({}, 0,
                                   detail::concat("worker ", w_, " waited ", timeoutS,
                                                  " s for the other workers to finish their shards"));
    b.pause();
  }
  for (auto id : sends_) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutS);
    while (!t_.sendDone(id) && std::chrono::steady_clock::now() < until) b.pause();
  }
  sends_.clear();
}

void ShardEngine::writeAudit() {
  if (cfg_.auditSamples.empty()) return;
  std::ofstream out(cfg_.auditSamples + ".w" + std::to_string(w_), std::ios::app);
  if (!out) PHX_USER_ERROR("cannot write --audit-samples file ", cfg_.auditSamples, ".w", w_);
  for (auto& L : lanes_)
    for (auto& [e, id] : L.audit) out << e << ' ' << id << '\n';
}

}  // namespace phx::train
