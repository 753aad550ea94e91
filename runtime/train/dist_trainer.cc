#include "runtime/train/dist_trainer.h"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cmath>
#include <cstdlib>

#include <unistd.h>

#include "kernels/model.h"
#include "recovery/checkpoint.h"
#include "recovery/detector.h"
#include "runtime/core/log.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/train/progress.h"
#include "runtime/train/roles.h"
#include "runtime/train/worker_loop.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

void WorkerLoop::waitFor(MsgType type, Header* h, int* src, const std::string& what) {
  for (;;) {
    try {
      t_.waitHeader(type, h, src, cfg_.peerTimeoutS, what);
      return;
    } catch (const transport::ViewChanged&) {
      client_.refreshNow();
    }
  }
}

void WorkerLoop::noteFailures(const recovery::View& v) {
  for (; failuresSeen_ < v.failures.size(); ++failuresSeen_) {
    const recovery::FailureRecord& f = v.failures[failuresSeen_];
    const double from = f.killUnix > 0 ? f.killUnix : f.lastHeardUnix;
    std::string line = detail::concat(
        "FAILURE rank ", f.rank, " (", ps::roleName(static_cast<ps::Role>(f.role)),
        f.shard >= 0 ? detail::concat(" of shard ", f.shard) : std::string(), ") detected ",
        static_cast<int64_t>((f.detectedUnix - from) * 1000), " ms after ",
        f.killUnix > 0 ? "the kill" : "its last heartbeat",
        f.shard >= 0 ? (f.spawned ? std::string("; a replacement process takes over as rank ") + std::to_string(f.rank)
                        : f.replacedBy >= 0 ? detail::concat("; rank ", f.replacedBy, " takes over")
                                          : std::string("; no spare left"))
                     : std::string("; training goes on without it"));
    if (isChief()) log::warn(line);
    events_.push_back(detail::concat("failure:rank", f.rank));
  }
}

void WorkerLoop::pollEvents() {
  Header h;
  int src = -1;
  while (t_.poll(MsgType::kEvent, &h, &src)) {
    double ev[5] = {0, 0, 0, 0, 0};
    if (h.bytes != sizeof ev) {
      t_.discardPayload(src, MsgType::kEvent, static_cast<size_t>(h.bytes), cfg_.peerTimeoutS);
      continue;
    }
    try {
      t_.recvPayload(src, MsgType::kEvent, ev, sizeof ev, cfg_.peerTimeoutS);
    } catch (const transport::ViewChanged&) {
      continue;  // the report of a server that died before its payload arrived: not kept
    }
    recovered_.push_back({static_cast<int>(ev[0]), static_cast<int>(ev[1]), ev[2], ev[3], ev[4]});
    log::warn("RECOVERED shard ", static_cast<int>(ev[0]), " on rank ", src, ": ",
              ft_.mode == "chain" || ft_.mode == "hybrid" ? "state at version " : "restored version ",
              static_cast<int64_t>(ev[3]),
              ev[4] > 0 ? detail::concat(", ", static_cast<int64_t>(ev[4]), " buffered update(s) applied")
                        : std::string(),
              ", updates applied again");
    events_.push_back(detail::concat("recovered:shard", static_cast<int>(ev[0])));
  }
}

std::string WorkerLoop::eventText(const std::string& base) {
  std::string out = base;
  for (const auto& e : events_) out += (out.empty() ? "" : ";") + e;
  events_.clear();
  return out;
}

ps::Directory WorkerLoop::onViewChange() {
  const recovery::View v = ft_.accept();
  noteFailures(v);
  // A dead member of this worker's own group: not survivable yet (the group would have to
  // shrink); end with a clear message rather than wait.
  for (int m = leader_; m < layout_.groupEnd(group_); ++m)
    if (!v.isAlive(layout_.workerRank(m)))
      throw transport::PeerFailure({layout_.workerRank(m)}, v.epoch,
                                   detail::concat("worker ", m, " of group ", group_,
                                                  " died; a group cannot shrink yet (use --group-size 1 "
                                                  "to survive worker deaths)"));
  if (isChief() && !wasChief_) takeOverAsChief();
  return ft_.directory(v);
}

// The chief died: the lowest live worker (this one) evaluates, writes the metrics (appending)
// and the summary from now on.
void WorkerLoop::takeOverAsChief() {
  wasChief_ = true;
  log::setIdentity(t_.rank(), "worker", true);
  log::warn("worker ", w_, " (rank ", t_.rank(), ") takes over as chief: evaluation, metrics, summary");
  events_.push_back(detail::concat("chief:rank", t_.rank()));
}

bool WorkerLoop::reportAndIdle(const RankStats& rs) {
  int reportedTo = ft_.chief;
  // The counters go to the chief; a view change while they are sent (the chief died at that
  // moment: the soak found this escape) sends them to the next chief, or this worker is it.
  auto report = [&]() -> bool {
    for (;;) {
      try {
        reportedTo = ft_.chief;
        sendStats(t_, reportedTo, rs, cfg_.peerTimeoutS);
        return true;
      } catch (const transport::ViewChanged&) {
        client_.refreshNow();
        if (isChief()) return false;
      }
    }
  };
  if (!ft_.det) {
    sendStats(t_, reportedTo, rs, cfg_.peerTimeoutS);
    return false;
  }
  if (!report()) return true;  // became the chief while reporting
  // Stay until released: a server that dies now is replaced, and its replacement must hear this
  // client's "done" again; a chief that dies is replaced, and the new one needs these counters.
  bool becameChief = false;
  idleUntilReleased(t_, ft_, [&] {
    client_.refreshNow();
    if (isChief()) {
      becameChief = true;
      return false;
    }
    if (ft_.chief != reportedTo && !report()) {
      becameChief = true;
      return false;
    }
    return true;
  });
  return becameChief;
}

// Straggler projection: this step's compute time goes into the moving average the next push
// carries; the median the servers sent back with the last weights classifies this worker.
phx::sync::WorkerClass WorkerLoop::project(double stepSeconds) {
  client_.setStepSeconds(projection_.observe(stepSeconds));
  const phx::sync::WorkerClass c = projection_.classify(client_.medianStepSeconds());
  if (c == phx::sync::WorkerClass::kStraggler && projection_.warnNow())
    log::warn("STRAGGLER worker ", w_, " (rank ", t_.rank(), "): ", projection_.streak(),
              " steps in a row at ", projection_.average() * 1e3, " ms per step against a median of ",
              client_.medianStepSeconds() * 1e3, " ms (",
              projection_.average() / client_.medianStepSeconds(), "x)");
  return c;
}

WorkerLoop::~WorkerLoop() {
  if (epsp_) t_.setService(nullptr);
  if (projCsv_) std::fclose(projCsv_);
}

// One row per iteration and worker: what the projection saw when the iteration started.
void WorkerLoop::writeProjection(int64_t step, phx::sync::WorkerClass c, double projected) {
  if (!projCsv_) return;
  pendingRow_ = detail::concat(
      std::to_string(recovery::unixNow() - startUnix_), ",", static_cast<long long>(step), ",",
      epsp_ ? epsp_->lanes() : 1, ",", (epsp_ ? epsp_->singleLaneSeconds() : projection_.average()) * 1e3, ",",
      client_.medianStepSeconds() * 1e3, ",", projected * 1e3, ",", phx::sync::className(c));
}

void WorkerLoop::finishRow(double computeS, double stealS, double exchangeS, double cpuS) {
  if (!projCsv_ || pendingRow_.empty()) return;
  std::fprintf(projCsv_, "%s,%lld,%lld,%lld,%.3f,%.3f,%.3f,%.3f\n", pendingRow_.c_str(),
               static_cast<long long>(epsp_ ? epsp_->counters().own : 0),
               static_cast<long long>(epsp_ ? epsp_->counters().stolen : 0),
               static_cast<long long>(epsp_ ? epsp_->counters().given : 0), computeS * 1e3, stealS * 1e3,
               exchangeS * 1e3, cpuS * 1e3);
  pendingRow_.clear();
}

// EPSP / FlexRR: plan p_w and classify from the projection, queue the K own shards.
void WorkerLoop::beginShardedStep(int64_t step, bool evaluating) {
  const double median = client_.medianStepSeconds();
  epsp_->plan(median);
  const double projected = epsp_->projectedSeconds();
  const phx::sync::WorkerClass c = projection_.classifyValue(projected, median);
  if (c == phx::sync::WorkerClass::kStraggler && projection_.warnNow())
    log::warn("STRAGGLER worker ", w_, " (rank ", t_.rank(), "): ", projection_.streak(),
              " iterations in a row projected at ", projected * 1e3, " ms on ", epsp_->lanes(),
              " lane(s) against a median of ", median * 1e3, " ms",
              cfg_.transfer ? "; its unstarted shards go to pioneers" : "");
  writeProjection(step, c, projected);
  epsp_->startOwn(step);
  // (A chief about to evaluate takes no one's shards early: it is busy, and the others take
  // its own unstarted shards meanwhile.)
  if (!evaluating) epsp_->askEarly(step, [this](int r) { return alive(r); });
}

// Run the own shards to the end, in enforced mode take shards from slower workers before
// pushing, and sum the lanes' gradients.
void WorkerLoop::shardedStep(int64_t step, int* n, double* loss, double* stealS) {
  if (!epsp_->started(step)) beginShardedStep(step);
  epsp_->runOwn(step);
  const auto s0 = std::chrono::steady_clock::now();
  if (enforced_) epsp_->stealRound(step, nullptr, [this](int r) { return alive(r); });
  *stealS = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
  double lossSum = 0;
  int64_t samples = 0;
  epsp_->collect(gradBuf(), &lossSum, &samples);
  client_.setStepSeconds(epsp_->singleLaneSeconds());
  *n = static_cast<int>(samples);
  *loss = samples > 0 ? lossSum / static_cast<double>(samples) : 0.0;
}

RankStats WorkerLoop::workerStats(int64_t samples, double trainSeconds) {
  RankStats rs;
  rs.index = w_;
  rs.rank = t_.rank();
  rs.samples = static_cast<double>(samples);
  rs.seconds = trainSeconds;
  rs.cpuSeconds = cpuSeconds();
  rs.steps = static_cast<double>(totalSteps_);
  rs.bytesIn = client_.bytesReceived();
  rs.bytesOut = client_.bytesSent();
  rs.straggleSeconds = straggleSeconds_ + (epsp_ ? epsp_->straggleSeconds() : 0.0);
  rs.stragglerSteps = static_cast<double>(projection_.count(phx::sync::WorkerClass::kStraggler));
  rs.pioneerSteps = static_cast<double>(projection_.count(phx::sync::WorkerClass::kPioneer));
  rs.firstStraggler = static_cast<double>(projection_.firstStraggler());
  if (isLeader()) {
    rs.pushesAcked = static_cast<double>(client_.acknowledged());
    rs.pushesDropped = static_cast<double>(client_.droppedPushes());
    rs.buffered = static_cast<double>(client_.buffered());
    rs.overflow = static_cast<double>(client_.overflow());
  }
  if (epsp_) {
    const ShardCounters& k = epsp_->counters();
    rs.shardsOwn = static_cast<double>(k.own);
    rs.shardsStolen = static_cast<double>(k.stolen);
    rs.shardsGiven = static_cast<double>(k.given);
    rs.stealRequests = static_cast<double>(k.stealRequests);
    rs.meanLanes = k.iterations ? k.laneSum / static_cast<double>(k.iterations) : 0.0;
    rs.maxLanes = k.maxLanes;
  }
  return rs;
}

TrainResult WorkerLoop::run() {
  const data::Dataset& train = fm_.train;
  const data::EpochSharder sharder(train.count, layout_.workers(), cfg_.seed);
  const Plan p = plan(cfg_, train, layout_.workers());
  totalSteps_ = p.totalSteps;
  const size_t shardSize = sharder.shardSize(w_);
  wasChief_ = isChief();
  if (wasChief_)
    log::info("training ", cfg_.model, " (", n_, " parameters) on ", layout_.workers(),
              " worker(s) x ", be_->describe(), ": ", p.totalSteps, " steps of batch ", cfg_.batch,
              " per worker, sync ", cfg_.sync, cfg_.sync == "ssp" ? detail::concat(" s=", cfg_.staleness) : "",
              ", ", layout_.servers(), " server shard(s)");
  if (wasChief_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath);
  std::vector<float> x(static_cast<size_t>(cfg_.batch) * train.sampleSize());
  std::vector<int32_t> y(cfg_.batch);
  std::vector<uint32_t> order;
  int currentEpoch = -1;
  startUnix_ = ft_.startUnix > 0 ? ft_.startUnix : recovery::unixNow();
  if (!cfg_.metricsPath.empty()) {
    const std::string path = detail::concat(cfg_.metricsPath, ".worker", w_, ".csv");
    projCsv_ = std::fopen(path.c_str(), "w");
    if (!projCsv_) PHX_USER_ERROR("cannot write the projection file ", path, " (next to --metrics)");
    std::fprintf(projCsv_, "time_s,step,lanes,single_lane_ms,median_ms,projected_ms,class,shards_own,"
                           "shards_stolen,shards_given,compute_ms,steal_ms,exchange_ms,cpu_ms\n");
  }
  if (cfg_.shardedSync()) {
    if (layout_.groupSize() > 1)
      PHX_USER_ERROR("--sync ", cfg_.sync, " shards each worker's iteration itself; use --group-size 1 (now ",
                     layout_.groupSize(), ")");
    enforced_ = cfg_.sync == "epsp" && cfg_.epspMode == "enforced";
    epsp_ = std::make_unique<ShardEngine>(cfg_, train, layout_, t_, w_, p.stepsPerEpoch, enforced_,
                                          cfg_.sync == "epsp");
    t_.setService([this] { epsp_->service(); });
    epsp_->setPushBuffer(gradBuf());
  }
  initialWeights();
  if (epsp_) epsp_->publish(paramBuf());
  Progress progress(cfg_, p.totalSteps, p.stepsPerEpoch, layout_.workers());
  int64_t samples = 0;
  double lastTrainLoss = NAN;
  const uint64_t dropoutSeed = cfg_.seed + 1000003ull * static_cast<uint64_t>(w_);
  if (startStep_ > 0 && isChief())
    log::info("resuming from ", cfg_.resumeDir, " at step ", startStep_, " of ", p.totalSteps);
  const std::vector<Schedule> workerKills = cfg_.killWorkerAt();
  const bool killable = w_ == layout_.workers() - 1 && w_ != 0 && !workerKills.empty();
  for (int64_t step = startStep_; step < p.totalSteps; ++step) {
    if (ft_.changed()) client_.refreshNow();
    if (killable && due(workerKills[0], step, ft_.startUnix))
      killSelf(ft_, detail::concat("--kill-worker ", cfg_.killWorker, " (worker ", w_, " at step ", step, ")"));
    const int epoch = static_cast<int>(step / p.stepsPerEpoch);
    if (epoch != currentEpoch) {
      order = sharder.shard(epoch, w_);
      currentEpoch = epoch;
    }
    int n = 0;
    double loss = 0, stealS = 0;
    const auto t0 = std::chrono::steady_clock::now();
    const double cpu0 = projCsv_ ? cpuSeconds() : 0.0;
    if (epsp_) {
      shardedStep(step, &n, &loss, &stealS);
    } else {
      const BatchRange b = batchRange(step, p.stepsPerEpoch, cfg_.batch, static_cast<int64_t>(shardSize));
      const int64_t first = b.first;
      n = static_cast<int>(b.n);
      const auto c0 = std::chrono::steady_clock::now();
      data::gatherBatch(train, order.data() + first, n, x.data(), y.data());
      const kernels::LossResult r = model_.forwardBackward(x.data(), y.data(), n, dropoutSeed, step);
      // Injected straggling: this step takes FACTOR times its real compute time.
      const double factor = straggle_.factorFor(cfg_.seed, t_.rank(), step);
      if (factor > 1.0) {
        be_->synchronize();
        straggleSeconds_ += straggleAfter(factor, c0);
      }
      const phx::sync::WorkerClass c =
          project(std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count());
      writeProjection(step, c, projection_.average());
      loss = r.lossSum / n;
    }
    const auto t1 = std::chrono::steady_clock::now();
    exchange(step, loss);
    if (projCsv_) {
      const double wall = std::chrono::duration<double>(t1 - t0).count();
      finishRow(wall - stealS, stealS, std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(),
                cpuSeconds() - cpu0);
    }
    samples += n;
    if (stopRequested_) {
      // A stop signal: every worker ends after this step (the servers chose it); the servers write
      // the snapshot that --resume continues from.
      stepsDone_ = step + 1;
      if (isChief())
        log::warn("stopped on a stop signal after step ", stepsDone_, " of ", p.totalSteps, "; continue with --resume ",
                  cfg_.checkpointDir);
      break;
    }
    if (!isChief()) continue;
    if (!metrics_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath, true);  // took over
    if (ft_.det) pollEvents();
    const int64_t done = step + 1;
    progress.step(done, n, loss);
    if (progress.evalDue(done)) {
      // EPSP: the next iteration's shards start now, on this worker's lanes and (transfer) on
      // the others, instead of waiting for the evaluation.
      if (epsp_ && done < p.totalSteps) beginShardedStep(done, true);
      lastTrainLoss = progress.takeEvalLoss();
      // EPSP: steal requests are answered between chunks of 100 (the peers wait for them).
      const EvalResult e =
          epsp_ ? evaluate(model_, fm_.test, std::min(cfg_.evalBatch, 100), cfg_.evalSamples, [this] { epsp_->service(); })
                : evaluate(model_, fm_.test, cfg_.evalBatch, cfg_.evalSamples);
      progress.markEval(e.accuracy);
      const bool epochEnd = done % p.stepsPerEpoch == 0;
      metrics_->write(MetricsRow{progress.elapsed(), done,
                               static_cast<double>(done) / p.stepsPerEpoch, lastTrainLoss,
                               e.accuracy, client_.minVersion(), eventText(epochEnd ? "epoch" : "")});
      log::info("eval  step ", done, " epoch ", static_cast<double>(done) / p.stepsPerEpoch,
                "  test accuracy ", e.accuracy * 100.0, " %  test loss ", e.loss,
                "  (server version ", client_.minVersion(), ")");
    }
  }
  const double trainSeconds = progress.elapsed();
  if (stepsDone_ < 0) stepsDone_ = p.totalSteps;
  if (isLeader()) client_.done();
  if (epsp_) {
    // Every steal request in flight is answered before any worker leaves.
    epsp_->finish([this](int r) { return alive(r); }, cfg_.peerTimeoutS);
    epsp_->writeAudit();
  }
  if (projCsv_) std::fflush(projCsv_);
  if (!isChief()) {
    const RankStats rs = workerStats(samples, trainSeconds);
    if (!reportAndIdle(rs)) return {};
  }
  if (!metrics_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath, true);
  lastTrainLoss = progress.takeEvalLoss();
  TrainResult res = finishChief(trainSeconds, samples, lastTrainLoss);
  metrics_->write(MetricsRow{progress.elapsed(), stepsDone_,
                           static_cast<double>(stepsDone_) / p.stepsPerEpoch, lastTrainLoss,
                           res.summary.finalTestAccuracy, res.summary.updatesApplied, "end"});
  return res;
}

int workerThreads(int requested, int ranksOnNode) {
  if (requested > 0) return requested;
  cpu_set_t set;
  int cores = 1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  return std::max(1, cores / std::max(1, ranksOnNode));
}

TrainResult runDistributed(const Config& cfg, transport::Transport& t,
                           const data::FashionMnist* data, transport::Transport* detectorT,
                           const Membership* membership) {
  const bool replacement = membership && membership->joinView;
  cfg.validate();
  const ps::RoleLayout layout(t.size(), cfg.servers, cfg.replicas, cfg.spares, cfg.groupSize);
  for (int r : cfg.straggleRanks())
    if (r >= layout.worldSize() || layout.roleOf(r) != ps::Role::kWorker)
      PHX_USER_ERROR("--straggle ", cfg.straggle, ": rank ", r, " is not a worker (workers are ranks ",
                     layout.firstWorkerRank(), "-", layout.worldSize() - 1, ")");
  const ps::Role role = layout.roleOf(t.rank());
  log::setIdentity(t.rank(), replacement ? "replacement" : ps::roleName(role),
                   !replacement && t.rank() == layout.chiefRank());
  if (t.rank() == layout.chiefRank() && !replacement) log::info(layout.describe());
  policyOf(cfg);  // reject a bad --sync on every rank alike
  if (cfg.backupWorkers >= layout.groups())
    PHX_USER_ERROR("--backup-workers ", cfg.backupWorkers, " must be smaller than the ", layout.groups(),
                   " worker group(s): a round needs at least one push");
  FtContext ft;
  ft.main = &t;
  ft.layout = &layout;
  ft.mode = cfg.effectiveRecovery();
  ft.survivorFlag = cfg.survivorFlag;
  ft.startUnix = recovery::unixNow();
  ft.chief = layout.chiefRank();
  if (ft.mode == "checkpoint" && layout.spares() == 0 && t.rank() == layout.chiefRank())
    log::warn("--recovery checkpoint without --spares: a dead server cannot be replaced in this "
              "job; it ends, and `--resume ", cfg.checkpointDir, "` restarts it from the snapshots");
  std::unique_ptr<recovery::FailureDetector> det;
  if (detectorT) {
    det = std::make_unique<recovery::FailureDetector>(
        *detectorT, layout,
        recovery::DetectorOptions{cfg.heartbeatMs / 1000.0, cfg.failureTimeoutMs / 1000.0,
                                  cfg.launches > 1, std::max(5.0, 10 * cfg.failureTimeoutMs / 1000.0)});
    if (membership && membership->respawn) det->setRespawner(membership->respawn);
    if (replacement) det->adopt(*membership->joinView);
    det->start();
    ft.det = det.get();
    ft.installHook();
  }
  log::info("rank ", t.rank(), " pid ", getpid(), " role ",
            replacement ? "replacement" : ps::roleName(role), ", recovery ", ft.mode);
  TrainResult res;
  if (replacement) {
    // Started for a dead rank when no spare was left: it takes over like a spare (the view it
    // joined at names its shard, or the chain it is the new tail of).
    data::FashionMnist loaded;
    if (!data) {
      loaded = data::loadFashionMnist(cfg.dataDir);
      data = &loaded;
    }
    runSpare(cfg, t, layout, *data, ft);
  } else if (role == ps::Role::kReplica && (ft.mode == "chain" || ft.mode == "hybrid")) {
    data::FashionMnist loaded;
    if (!data) {
      loaded = data::loadFashionMnist(cfg.dataDir);
      data = &loaded;
    }
    const int shard = (t.rank() - layout.servers()) / std::max(1, layout.replicas());
    serveShard(cfg, t, layout, *data, ft, shard, Entry::kReplica, 0);
  } else if (role == ps::Role::kReplica) {
    idleUntilReleased(t, ft, [&ft] {
      ft.accept();
      return true;
    });
  } else if (role == ps::Role::kSpare) {
    // Load the data now, while idle: a takeover must not wait for it.
    data::FashionMnist loaded;
    if (!data) {
      loaded = data::loadFashionMnist(cfg.dataDir);
      data = &loaded;
    }
    runSpare(cfg, t, layout, *data, ft);
  } else {
    data::FashionMnist loaded;
    if (!data) {
      loaded = data::loadFashionMnist(cfg.dataDir);
      data = &loaded;
    }
    if (role == ps::Role::kServer) {
      serveShard(cfg, t, layout, *data, ft, t.rank(), Entry::kInitial, 0);
    } else {
      WorkerLoop loop(cfg, t, layout, *data, ft);
      res = loop.run();
    }
  }
  t.setInterrupt(nullptr);
  if (det && membership && membership->atEnd) {
    const recovery::View v = det->view();
    std::vector<int> failed;
    for (int r = 0; r < static_cast<int>(v.alive.size()); ++r)
      if (!v.alive[r]) failed.push_back(r);
    if (!failed.empty()) membership->atEnd(failed);
  }
  if (det) det->leave();
  return res;
}

}  // namespace phx::train
