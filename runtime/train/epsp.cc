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
using Clock = std::chrono::steady_clock;

namespace {
double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

ShardEngine::ShardEngine(const Config& cfg, const data::Dataset& train, const ps::RoleLayout& layout,
                         transport::Transport& t, int worker, int64_t stepsPerEpoch, bool enforced,
                         bool elastic)
    : cfg_(cfg), train_(train), layout_(layout), t_(t), w_(worker), stepsPerEpoch_(stepsPerEpoch),
      enforced_(enforced), elastic_(elastic), straggle_(cfg.straggleSpec()),
      spec_(kernels::parseModelSpec(cfg.model)), sharder_(train.count, layout.workers(), cfg.seed),
      finished_(static_cast<size_t>(layout.workers()), 0),
      lastRemaining_(static_cast<size_t>(layout.workers()), 0.0),
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
      L.began = Clock::now();
      params = params_;
      version = version_;
      step = curStep_;
    }
    try {
      const auto c0 = Clock::now();
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
      const double took = seconds(c0, Clock::now());
      if (!cfg_.auditSamples.empty())
        for (int s = 0; s < task.n; ++s) L.audit.emplace_back(task.epoch, task.ids[s]);
      std::lock_guard<std::mutex> lk(mu_);
      L.fresh = false;
      L.lossSum += r.lossSum;
      L.samples += task.n;
      const double per = took / task.n;
      perSample_ = perSample_ == 0 ? per : 0.3 * per + 0.7 * perSample_;
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

// Enforced EPSP: a worker slower than the others keeps back the own shards that the faster
// workers would finish sooner than it (they ask when their own shards are done): its lanes
// do not start them. Split as in grant(): this worker's K - G shards against the others'
// median iteration plus G / P shards each. The reserve is released when every other worker
// has said it has no own shard left, or after twice the median iteration (a dead or frozen
// worker asks nothing).
void ShardEngine::reserve() {
  reserved_ = 0;
  stepStart_ = Clock::now();
  if (!enforced_ || !cfg_.transfer || perSample_ <= 0 || median_ <= 0) return;
  int others = 0;
  for (int v = 0; v < static_cast<int>(finished_.size()); ++v)
    if (v != w_ && !finished_[v]) ++others;
  const int k = grantable();
  if (others == 0 || k == 0) return;
  const double ourShard = static_cast<double>(cfg_.batch) / cfg_.shards * perSample_ / std::max(1, active_);
  const double theirShard = median_ / cfg_.shards;
  int best = 0;
  double bestT = k * ourShard;
  for (int g = 1; g <= k; ++g) {
    const double t = std::max((k - g) * ourShard, median_ + g * theirShard / others);
    if (t < bestT - 1e-9) {
      bestT = t;
      best = g;
    }
  }
  // Its speed is only known from what it computes: one own shard at least every 8 iterations
  // keeps the estimate current (a worker that gave everything away would never learn that it
  // got faster again).
  if (curStep_ - lastOwnStep_ >= 8) best = std::min(best, k - 1);
  reserved_ = best;
  releaseAfter_ = 2.0 * median_ + 0.02;
}

void ShardEngine::releaseReserve() {
  if (reserved_ == 0) return;
  bool all = true;
  for (int v = 0; v < static_cast<int>(finished_.size()); ++v)
    if (v != w_ && !finished_[v] && doneAt_[v] != curStep_) all = false;
  if (all || seconds(stepStart_, Clock::now()) > releaseAfter_) {
    reserved_ = 0;
    work_.notify_all();
  }
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

int ShardEngine::grantable() const {
  int r = 0;
  for (auto it = queue_.rbegin(); it != queue_.rend() && it->owner == w_ && it->step == curStep_; ++it) ++r;
  return r;
}

double ShardEngine::remainingSeconds() const {
  const double shardS = static_cast<double>(cfg_.batch) / cfg_.shards * perSample_;
  double left = static_cast<double>(queue_.size()) * shardS;
  const auto now = Clock::now();
  for (const auto& L : lanes_)
    if (L.busy) left += std::max(0.0, shardS - seconds(L.began, now));
  return left / std::max(1, active_);
}

Header ShardEngine::grant(const Header& req) {
  Header g;
  g.type = MsgType::kGrant;
  g.client = w_;
  g.clock = curStep_;
  // Enforced: the requester is on this step (its gradients join the same clock). Slack and
  // FlexRR: the requester is ahead of this worker (this worker holds it back).
  const bool eligible = cfg_.transfer && curStep_ >= 0 && (enforced_ ? req.clock == curStep_ : req.clock > curStep_);
  const int r = eligible ? grantable() : 0;
  if (req.client >= 0 && req.client < static_cast<int>(answeredAt_.size())) answeredAt_[req.client] = curStep_;
  int give = 0;
  if (r > 0 && perSample_ <= 0) {
    give = r;  // this worker's speed is not known yet
  } else if (r > 0) {
    // Both should finish together. This worker needs remainingSeconds() minus a shard time
    // per shard given; the requester is busy for b more seconds, then computes at its rate.
    // The requester stands for every other worker that has not asked yet this step (they
    // ask too, soon): the shards that pool should take are split evenly, this one gets its
    // part (rounded up), so that the first pioneer does not take what three would share.
    const double S = static_cast<double>(cfg_.batch) / cfg_.shards;
    const double ourShard = S * perSample_ / std::max(1, active_);
    const double theirShard = req.value > 0 ? S / req.value : S * perSample_;
    const double busy = (req.flags & transport::kEarly) ? 1e-6 * std::max(0, req.aux) : 0.0;
    int pool = 1;
    if (enforced_)
      for (int u = 0; u < static_cast<int>(finished_.size()); ++u)
        if (u != w_ && u != req.client && !finished_[u] && answeredAt_[u] != curStep_) ++pool;
    const double ours = remainingSeconds();
    int best = 0;
    double bestT = ours;
    for (int G = 1; G <= r; ++G) {
      const double t = std::max(ours - G * ourShard, busy + G * theirShard / pool);
      if (t < bestT - 1e-9) {
        bestT = t;
        best = G;
      }
    }
    give = std::min(r, (best + pool - 1) / pool);
  }
  int lo = cfg_.shards, hi = -1;
  for (int i = 0; i < give; ++i) {
    lo = std::min(lo, queue_.back().k);
    hi = std::max(hi, queue_.back().k + 1);
    queue_.pop_back();
  }
  if (give > 0) {
    g.offset = lo;
    g.version = hi;
    counters_.given += give;
  }
  g.value = remainingSeconds();
  // Own shards it still holds back for others (0: the rest it computes itself; do not ask
  // again this step).
  reserved_ = std::min(reserved_, grantable());
  g.aux = reserved_;
  return g;
}

void ShardEngine::service() {
  Header h;
  int src = -1;
  const int workers = static_cast<int>(finished_.size());
  while (t_.poll(MsgType::kSteal, &h, &src)) {
    Header g;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (h.client >= 0 && h.client < workers && !(h.flags & transport::kEarly)) doneAt_[h.client] = h.clock;
      // Enforced: a request for the next step, which this worker has not begun yet (its
      // weights came later): answered when it begins (startOwn), not refused now. finish()
      // ends that (no next step).
      if (enforced_ && !finishing_ && h.clock == curStep_ + 1) {
        deferred_.emplace_back(src, h);
        continue;
      }
      g = grant(h);
    }
    reapSends();
    sends_.push_back(t_.send(src, g, nullptr));
  }
  while (t_.poll(MsgType::kGrant, &h, &src)) {
    const int v = h.client;
    if (v < 0 || v >= workers || layout_.workerRank(v) != src) continue;
    std::lock_guard<std::mutex> lk(mu_);
    if (pending_[v]) takeGrant(h, v);
  }
  if (wake_) work_.notify_all();
  wake_ = false;
  while (t_.poll(MsgType::kFinished, &h, &src))
    if (h.client >= 0 && h.client < workers) finished_[h.client] = 1;
}

void ShardEngine::takeGrant(const Header& g, int v) {
  pending_[v] = 0;
  lastRemaining_[v] = g.value;
  if (g.aux == 0) noneLeftAt_[v] = g.clock;
  if (g.version <= g.offset) return;  // nothing (left) to give
  PHX_ENFORCE(g.offset >= 0 && g.version <= cfg_.shards, "grant of shards [", g.offset, ", ", g.version,
              ") from worker ", v, " (K = ", cfg_.shards, ")");
  if (grantedStep_[v] != g.clock) grantedCount_[v] = 0;
  grantedStep_[v] = g.clock;
  grantedCount_[v] += g.version - g.offset;
  for (int64_t k = g.offset; k < g.version; ++k) {
    ShardTask task = taskOf(v, g.clock, static_cast<int>(k));
    if (task.n > 0) {
      queue_.push_back(task);
      ++granted_;
    }
  }
  reask_[v] = 1;  // it had some: it may have more
  wake_ = true;
}

void ShardEngine::sendSteal(int v, int64_t clock, bool early) {
  Header q;
  q.type = MsgType::kSteal;
  q.client = w_;
  q.clock = clock;
  {
    std::lock_guard<std::mutex> lk(mu_);
    q.value = perSample_ > 0 ? active_ / perSample_ : 1.0;
    if (early) {
      q.flags |= transport::kEarly;
      q.aux = static_cast<int32_t>(std::min(2e9, 1e6 * remainingSeconds()));
    }
    pending_[v] = 1;
    pendingSince_[v] = Clock::now();
    ++counters_.stealRequests;
  }
  reapSends();
  sends_.push_back(t_.send(layout_.workerRank(v), q, nullptr));
}

void ShardEngine::askEarly(int64_t step, const std::function<bool(int rank)>& alive) {
  if (!enforced_ || !cfg_.transfer || perSample_ <= 0) return;
  // The worker that granted this one the most shards in the last iteration: a straggler.
  int target = -1;
  int64_t most = 0;
  for (int v = 0; v < static_cast<int>(finished_.size()); ++v)
    if (v != w_ && !finished_[v] && !pending_[v] && grantedStep_[v] == step - 1 && grantedCount_[v] > most &&
        alive(layout_.workerRank(v))) {
      most = grantedCount_[v];
      target = v;
    }
  if (target >= 0) sendSteal(target, step, true);
}

int64_t ShardEngine::stealRound(int64_t clock, const std::function<bool()>& stop,
                                const std::function<bool(int rank)>& alive) {
  if (!cfg_.transfer) return 0;
  const int workers = static_cast<int>(finished_.size());
  granted_ = 0;
  {
    // Its own shards are done: nothing is held back any more (stolen shards queue behind).
    std::lock_guard<std::mutex> lk(mu_);
    if (enforced_ && reserved_ > 0) {
      reserved_ = 0;
      work_.notify_all();
    }
  }
  // Every other worker is asked at once; one that grants shards is asked again (with this
  // worker's new backlog) as soon as its answer is in; one that has none is not asked again.
  std::vector<char> want(static_cast<size_t>(workers), 1);
  std::fill(reask_.begin(), reask_.end(), 0);
  want[static_cast<size_t>(w_)] = 0;
  bool stopping = false;
  for (;;) {
    service();
    if (!stopping && stop && stop()) stopping = true;
    std::vector<char> live(static_cast<size_t>(workers), 0);
    for (int v = 0; v < workers; ++v) live[v] = v != w_ && !finished_[v] && alive(layout_.workerRank(v));
    std::vector<int> ask;
    bool waiting = false;
    int overdue = -1;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (laneError_) std::rethrow_exception(laneError_);
      const auto now = Clock::now();
      for (int v = 0; v < workers; ++v) {
        if (v == w_) continue;
        if (!live[v]) {
          pending_[v] = 0;  // it can no longer answer
          want[v] = reask_[v] = 0;
          continue;
        }
        if (reask_[v]) want[v] = 1, reask_[v] = 0;
        // It said it has no own shard left to give (or to compute) this step.
        if (enforced_ && (doneAt_[v] == clock || noneLeftAt_[v] == clock)) want[v] = 0;
        if (want[v] && !pending_[v] && !stopping) {
          ask.push_back(v);
          want[v] = 0;
        }
        if (pending_[v]) {
          waiting = true;
          if (seconds(pendingSince_[v], now) > cfg_.peerTimeoutS) overdue = v;
        }
      }
      if (ask.empty() && !waiting && queue_.empty() && inflight_ == 0) return granted_;
    }
    if (overdue >= 0)
      throw transport::PeerFailure({layout_.workerRank(overdue)}, 0,
                                   detail::concat("worker ", overdue, " (rank ", layout_.workerRank(overdue),
                                                  ") did not answer a steal request within ", cfg_.peerTimeoutS,
                                                  " s"));
    for (int v : ask) sendSteal(v, clock, false);
    if (!ask.empty()) continue;
    std::unique_lock<std::mutex> lk(mu_);
    idle_.wait_for(lk, std::chrono::microseconds(500));
  }
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
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeoutS);
  transport::Backoff b;
  for (;;) {
    service();
    bool all = true;
    for (int v = 0; v < layout_.workers(); ++v)
      if (!finished_[v] && alive(layout_.workerRank(v))) all = false;
    if (all) break;
    if (Clock::now() > deadline)
      throw transport::PeerFailure({}, 0,
                                   detail::concat("worker ", w_, " waited ", timeoutS,
                                                  " s for the other workers to finish their shards"));
    b.pause();
  }
  for (auto id : sends_) {
    const auto until = Clock::now() + std::chrono::duration<double>(timeoutS);
    while (!t_.sendDone(id) && Clock::now() < until) b.pause();
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
