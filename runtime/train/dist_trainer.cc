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
    t_.recvPayload(src, MsgType::kEvent, ev, sizeof ev, cfg_.peerTimeoutS);
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

void WorkerLoop::init() {
  if (isLeader() && layout_.groupEnd(group_) - leader_ > 1) recv_.resize(n_);
  projection_ = phx::sync::StragglerProjection(cfg_.stragglerTheta);
  straggle_ = cfg_.straggleSpec();
  if (ft_.det) client_.setRefresh([this] { return onViewChange(); });
  if (ft_.det && isLeader() && (ft_.mode == "stateless" || ft_.mode == "hybrid"))
    client_.setStateless(paramBuf(), cfg_.statelessBuffer, cfg_.backlogRule == "staleness");
}

void WorkerLoop::begin() {
  if (fm_) {
    const Plan p = plan(cfg_, fm_->train, layout_.workers());
    totalSteps_ = p.totalSteps;
    stepsPerEpoch_ = p.stepsPerEpoch;
  } else {
    totalSteps_ = ext_->totalSteps;
    stepsPerEpoch_ = ext_->stepsPerEpoch > 0 ? ext_->stepsPerEpoch : ext_->totalSteps;
  }
  wasChief_ = isChief();
  if (wasChief_)
    log::info("training ", fm_ ? cfg_.model : ext_->name, " (", n_, " parameters) on ", layout_.workers(),
              " worker(s) x ", fm_ ? be_->describe() : std::string("the caller's device"), ": ",
              totalSteps_, " steps", fm_ ? detail::concat(" of batch ", cfg_.batch) : std::string(),
              " per worker, sync ", cfg_.sync, cfg_.sync == "ssp" ? detail::concat(" s=", cfg_.staleness) : "",
              ", ", layout_.servers(), " server shard(s)");
  if (wasChief_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath);
  startUnix_ = ft_.startUnix > 0 ? ft_.startUnix : recovery::unixNow();
  if (!cfg_.metricsPath.empty()) {
    const std::string path = detail::concat(cfg_.metricsPath, ".worker", w_, ".csv");
    projCsv_ = std::fopen(path.c_str(), "w");
    if (!projCsv_) PHX_USER_ERROR("cannot write the projection file ", path, " (next to --metrics)");
    std::fprintf(projCsv_, "time_s,step,lanes,single_lane_ms,median_ms,projected_ms,class,shards_own,"
                           "shards_stolen,shards_given,compute_ms,steal_ms,exchange_ms,cpu_ms\n");
  }
  if (cfg_.shardedSync()) {
    if (!fm_)
      PHX_USER_ERROR("--sync ", cfg_.sync, " moves parts of an iteration between workers, which only "
                     "Phoenix's own models can do; use bsp, ssp, asp or sync-opt with your own model");
    if (layout_.groupSize() > 1)
      PHX_USER_ERROR("--sync ", cfg_.sync, " shards each worker's iteration itself; use --group-size 1 (now ",
                     layout_.groupSize(), ")");
    enforced_ = cfg_.sync == "epsp" && cfg_.epspMode == "enforced";
    epsp_ = std::make_unique<ShardEngine>(cfg_, fm_->train, layout_, t_, w_, stepsPerEpoch_, enforced_,
                                          cfg_.sync == "epsp");
    t_.setService([this] { epsp_->service(); });
    epsp_->setPushBuffer(gradBuf());
  }
  initialWeights();
  if (epsp_) epsp_->publish(paramBuf());
  progress_ = std::make_unique<Progress>(cfg_, totalSteps_, stepsPerEpoch_, layout_.workers());
  if (startStep_ > 0 && isChief())
    log::info("resuming from ", cfg_.resumeDir, " at step ", startStep_, " of ", totalSteps_);
  workerKills_ = cfg_.killWorkerAt();
  killable_ = w_ == layout_.workers() - 1 && w_ != 0 && !workerKills_.empty();
}

void WorkerLoop::beforeStep(int64_t step) {
  if (ft_.changed()) client_.refreshNow();
  if (killable_ && due(workerKills_[0], step, ft_.startUnix))
    killSelf(ft_, detail::concat("--kill-worker ", cfg_.killWorker, " (worker ", w_, " at step ", step, ")"));
}

EvalResult WorkerLoop::evaluateNow(bool final) {
  if (!fm_) return ext_->evaluate ? ext_->evaluate(paramBuf()) : EvalResult{NAN, NAN};
  if (final) return evaluate(*model_, fm_->test, cfg_.evalBatch);
  // EPSP: steal requests are answered between chunks of 100 (the peers wait for them).
  return epsp_ ? evaluate(*model_, fm_->test, std::min(cfg_.evalBatch, 100), cfg_.evalSamples,
                          [this] { epsp_->service(); })
               : evaluate(*model_, fm_->test, cfg_.evalBatch, cfg_.evalSamples);
}

bool WorkerLoop::afterStep(int64_t step, int n, double loss) {
  samples_ += n;
  if (stopRequested_) {
    // A stop signal: every worker ends after this step (the servers chose it); the servers write
    // the snapshot that --resume continues from.
    stepsDone_ = step + 1;
    if (isChief())
      log::warn("stopped on a stop signal after step ", stepsDone_, " of ", totalSteps_, "; continue with --resume ",
                cfg_.checkpointDir);
    return false;
  }
  if (!isChief()) return true;
  if (!metrics_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath, true);  // took over
  if (ft_.det) pollEvents();
  const int64_t done = step + 1;
  progress_->step(done, n, loss);
  if (progress_->evalDue(done)) {
    // EPSP: the next iteration's shards start now, on this worker's lanes and (transfer) on
    // the others, instead of waiting for the evaluation.
    if (epsp_ && done < totalSteps_) beginShardedStep(done, true);
    lastTrainLoss_ = progress_->takeEvalLoss();
    const EvalResult e = evaluateNow(false);
    progress_->markEval(e.accuracy);
    const bool epochEnd = done % stepsPerEpoch_ == 0;
    metrics_->write(MetricsRow{progress_->elapsed(), done, static_cast<double>(done) / stepsPerEpoch_,
                               lastTrainLoss_, e.accuracy, client_.minVersion(), eventText(epochEnd ? "epoch" : "")});
    log::info("eval  step ", done, " epoch ", static_cast<double>(done) / stepsPerEpoch_,
              "  test accuracy ", e.accuracy * 100.0, " %  test loss ", e.loss,
              "  (server version ", client_.minVersion(), ")");
  }
  return true;
}

bool WorkerLoop::step(int64_t step, int n, double loss) {
  beforeStep(step);
  exchange(step, loss);
  return afterStep(step, n, loss);
}

TrainResult WorkerLoop::run() {
  const data::Dataset& train = fm_->train;
  const data::EpochSharder sharder(train.count, layout_.workers(), cfg_.seed);
  const size_t shardSize = sharder.shardSize(w_);
  begin();
  std::vector<float> x(static_cast<size_t>(cfg_.batch) * train.sampleSize());
  std::vector<int32_t> y(cfg_.batch);
  std::vector<uint32_t> order;
  int currentEpoch = -1;
  const uint64_t dropoutSeed = cfg_.seed + 1000003ull * static_cast<uint64_t>(w_);
  for (int64_t step = startStep_; step < totalSteps_; ++step) {
    beforeStep(step);
    const int epoch = static_cast<int>(step / stepsPerEpoch_);
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
      const BatchRange b = batchRange(step, stepsPerEpoch_, cfg_.batch, static_cast<int64_t>(shardSize));
      const int64_t first = b.first;
      n = static_cast<int>(b.n);
      const auto c0 = std::chrono::steady_clock::now();
      data::gatherBatch(train, order.data() + first, n, x.data(), y.data());
      const kernels::LossResult r = model_->forwardBackward(x.data(), y.data(), n, dropoutSeed, step);
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
    if (!afterStep(step, n, loss)) break;
  }
  return end();
}

TrainResult WorkerLoop::end() {
  const double trainSeconds = progress_->elapsed();
  if (stepsDone_ < 0) stepsDone_ = totalSteps_;
  if (isLeader()) client_.done();
  if (epsp_) {
    // Every steal request in flight is answered before any worker leaves.
    epsp_->finish([this](int r) { return alive(r); }, cfg_.peerTimeoutS);
    epsp_->writeAudit();
  }
  if (projCsv_) std::fflush(projCsv_);
  if (!isChief()) {
    const RankStats rs = workerStats(samples_, trainSeconds);
    if (!reportAndIdle(rs)) return {};
  }
  if (!metrics_) metrics_ = std::make_unique<MetricsCsv>(cfg_.metricsPath, true);
  lastTrainLoss_ = progress_->takeEvalLoss();
  TrainResult res = finishChief(trainSeconds, samples_, lastTrainLoss_);
  metrics_->write(MetricsRow{progress_->elapsed(), stepsDone_,
                             static_cast<double>(stepsDone_) / stepsPerEpoch_, lastTrainLoss_,
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

namespace {
// A server-side rank waits for the chief's setup. A view change meanwhile (a failure at start)
// is taken; the chief's own death before it sent the setup ends this rank with one line.
ps::JobSpec receiveSetup(transport::Transport& t, const ps::RoleLayout& layout, FtContext& ft,
                         double timeoutS) {
  for (;;) {
    try {
      return ps::receiveSpec(t, layout, timeoutS);
    } catch (const transport::ViewChanged&) {
      // (not accepted here: the role that follows acts on the view, e.g. a spare's takeover)
      if (ft.det && !ft.det->view().isAlive(layout.chiefRank()))
        PHX_USER_ERROR("the chief worker (rank ", layout.chiefRank(), ") died before it sent the job's "
                       "setup (parameter count, initial weights); the job cannot start: launch it again");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}
}  // namespace

DistJob::DistJob(const Config& cfg, transport::Transport& t, transport::Transport* detectorT,
                 const Membership* membership)
    : cfg_(cfg), t_(t), membership_(membership),
      replacement_(membership && membership->joinView),
      layout_(t.size(), cfg.servers, cfg.replicas, cfg.spares, cfg.groupSize) {
  cfg.validate();
  for (int r : cfg.straggleRanks())
    if (r >= layout_.worldSize() || layout_.roleOf(r) != ps::Role::kWorker)
      PHX_USER_ERROR("--straggle ", cfg.straggle, ": rank ", r, " is not a worker (workers are ranks ",
                     layout_.firstWorkerRank(), "-", layout_.worldSize() - 1, ")");
  role_ = layout_.roleOf(t.rank());
  log::setIdentity(t.rank(), replacement_ ? "replacement" : ps::roleName(role_),
                   !replacement_ && t.rank() == layout_.chiefRank());
  if (t.rank() == layout_.chiefRank() && !replacement_) log::info(layout_.describe());
  policyOf(cfg);  // reject a bad --sync on every rank alike
  if (cfg.backupWorkers >= layout_.groups())
    PHX_USER_ERROR("--backup-workers ", cfg.backupWorkers, " must be smaller than the ", layout_.groups(),
                   " worker group(s): a round needs at least one push");
  ft_ = std::make_unique<FtContext>();
  FtContext& ft = *ft_;
  ft.main = &t;
  ft.layout = &layout_;
  ft.mode = cfg.effectiveRecovery();
  ft.survivorFlag = cfg.survivorFlag;
  ft.startUnix = recovery::unixNow();
  ft.chief = layout_.chiefRank();
  if (ft.mode == "checkpoint" && layout_.spares() == 0 && t.rank() == layout_.chiefRank())
    log::warn("--recovery checkpoint without --spares: a dead server cannot be replaced in this "
              "job; it ends, and `--resume ", cfg.checkpointDir, "` restarts it from the snapshots");
  if (detectorT) {
    det_ = std::make_unique<recovery::FailureDetector>(
        *detectorT, layout_,
        recovery::DetectorOptions{cfg.heartbeatMs / 1000.0, cfg.failureTimeoutMs / 1000.0,
                                  cfg.launches > 1, std::max(5.0, 10 * cfg.failureTimeoutMs / 1000.0)});
    if (membership && membership->respawn) det_->setRespawner(membership->respawn);
    if (replacement_) det_->adopt(*membership->joinView);
    det_->start();
    ft.det = det_.get();
    ft.installHook();
  }
  log::info("rank ", t.rank(), " pid ", getpid(), " role ",
            replacement_ ? "replacement" : ps::roleName(role_), ", recovery ", ft.mode);
}

DistJob::~DistJob() = default;

bool DistJob::isWorker() const { return !replacement_ && role_ == ps::Role::kWorker; }

// The chief sends the spec to the server side; a rank that dies meanwhile (a spare killed at
// start) is skipped, not waited for.
void DistJob::sendSetup() {
  if (t_.rank() != layout_.chiefRank()) return;
  recovery::FailureDetector* det = det_.get();
  ps::sendSpec(t_, layout_, spec_, cfg_.peerTimeoutS,
               det ? std::function<bool(int)>([det](int r) { return det->view().isAlive(r); })
                   : std::function<bool(int)>());
}

void DistJob::knowSpec(const ps::JobSpec& spec) {
  spec_ = spec;
  if (membership_ && membership_->onSpec) membership_->onSpec(spec_.serialize());
}

void DistJob::serve() {
  PHX_ENFORCE(!isWorker(), "DistJob::serve on a worker rank");
  // The server side never builds the model or reads the data: the chief sends the job's spec
  // (parameter count, initial parameters, planned steps); a replacement process got it with
  // the view it joined at.
  if (replacement_) {
    if (!membership_->joinSpec || membership_->joinSpec->empty())
      PHX_USER_ERROR("this replacement process was started before the job's setup was known (a "
                     "failure at the very start); restart the job");
    knowSpec(ps::JobSpec::parse(membership_->joinSpec->data(), membership_->joinSpec->size()));
  } else {
    knowSpec(receiveSetup(t_, layout_, *ft_, cfg_.peerTimeoutS));
  }
  FtContext& ft = *ft_;
  if (replacement_) {
    // Started for a dead rank when no spare was left: it takes over like a spare (the view it
    // joined at names its shard, or the chain it is the new tail of).
    runSpare(cfg_, t_, layout_, spec_, ft);
  } else if (role_ == ps::Role::kReplica && (ft.mode == "chain" || ft.mode == "hybrid")) {
    const int shard = (t_.rank() - layout_.servers()) / std::max(1, layout_.replicas());
    serveShard(cfg_, t_, layout_, spec_, ft, shard, Entry::kReplica, 0);
  } else if (role_ == ps::Role::kReplica) {
    idleUntilReleased(t_, ft, [&ft] {
      ft.accept();
      return true;
    });
  } else if (role_ == ps::Role::kSpare) {
    runSpare(cfg_, t_, layout_, spec_, ft);
  } else {
    serveShard(cfg_, t_, layout_, spec_, ft, t_.rank(), Entry::kInitial, 0);
  }
}

TrainResult DistJob::trainBuiltin(const data::FashionMnist& data) {
  knowSpec(workerSpec(cfg_, data.train, layout_.workers()));
  sendSetup();
  WorkerLoop loop(cfg_, t_, layout_, data, *ft_);
  return loop.run();
}

void checkExternalModel(const Config& cfg, const ExternalModel& model) {
  if (model.params <= 0 || static_cast<int64_t>(model.init.size()) != model.params || model.totalSteps <= 0)
    PHX_USER_ERROR("a model of ", model.params, " parameters (", model.init.size(), " initial values) and ",
                   model.totalSteps, " steps cannot be trained: give the flat parameter count, as many "
                   "initial values, and at least one step");
  if (cfg.shardedSync())
    PHX_USER_ERROR("--sync ", cfg.sync, " moves parts of an iteration between workers, which only "
                   "Phoenix's own models can do; use bsp, ssp, asp or sync-opt with your own model");
  if (cfg.groupSize > 1)
    PHX_USER_ERROR("--group-size ", cfg.groupSize, ": worker groups reduce inside Phoenix's own models; "
                   "with your own model use --group-size 1 (reduce inside your framework instead)");
}

std::unique_ptr<WorkerLoop> DistJob::externalWorker(const ExternalModel& model) {
  checkExternalModel(cfg_, model);
  ps::JobSpec spec;
  spec.params = model.params;
  spec.totalSteps = model.totalSteps;
  spec.init = model.init;
  knowSpec(spec);
  sendSetup();
  return std::make_unique<WorkerLoop>(cfg_, t_, layout_, model, *ft_);
}

void DistJob::finish() {
  t_.setInterrupt(nullptr);
  if (det_ && membership_ && membership_->atEnd) {
    const recovery::View v = det_->view();
    std::vector<int> failed;
    for (int r = 0; r < static_cast<int>(v.alive.size()); ++r)
      if (!v.alive[r]) failed.push_back(r);
    if (!failed.empty()) membership_->atEnd(failed);
  }
  if (det_) det_->leave();
  det_.reset();
}

TrainResult runDistributed(const Config& cfg, transport::Transport& t,
                           const data::FashionMnist* data, transport::Transport* detectorT,
                           const Membership* membership) {
  DistJob job(cfg, t, detectorT, membership);
  TrainResult res;
  if (!job.isWorker()) {
    job.serve();
  } else {
    data::FashionMnist loaded;
    if (!data) {
      loaded = data::loadFashionMnist(cfg.dataDir);
      data = &loaded;
    }
    res = job.trainBuiltin(*data);
  }
  job.finish();
  return res;
}

}  // namespace phx::train
