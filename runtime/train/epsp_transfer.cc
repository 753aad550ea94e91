// Task transfer between workers (runtime/train/epsp.h, docs/architecture.md "EPSP"): steal
// requests and grants, early requests, the slow worker's hold-back, and the steal round.
#include "runtime/train/epsp.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "runtime/core/error.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

// Enforced EPSP: a worker slower than the others keeps back the own shards that the faster
// workers would finish sooner than it (they ask when their own shards are done): its lanes
// do not start them. Split as in grant(): this worker's K - G shards against the others'
// median iteration plus G / P shards each. The reserve is released when every other worker
// has said it has no own shard left, or after twice the median iteration (a dead or frozen
// worker asks nothing).
void ShardEngine::reserve() {
  reserved_ = 0;
  stepStart_ = std::chrono::steady_clock::now();
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
  if (all || secondsBetween(stepStart_, std::chrono::steady_clock::now()) > releaseAfter_) {
    reserved_ = 0;
    work_.notify_all();
  }
}

int ShardEngine::grantable() const {
  int r = 0;
  for (auto it = queue_.rbegin(); it != queue_.rend() && it->owner == w_ && it->step == curStep_; ++it) ++r;
  return r;
}

double ShardEngine::remainingSeconds() const {
  const double shardS = static_cast<double>(cfg_.batch) / cfg_.shards * perSample_;
  double left = static_cast<double>(queue_.size()) * shardS;
  const auto now = std::chrono::steady_clock::now();
  for (const auto& L : lanes_)
    if (L.busy) left += std::max(0.0, shardS - secondsBetween(L.began, now));
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
    pendingSince_[v] = std::chrono::steady_clock::now();
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
      const auto now = std::chrono::steady_clock::now();
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
          if (secondsBetween(pendingSince_[v], now) > cfg_.peerTimeoutS) overdue = v;
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

}  // namespace phx::train
