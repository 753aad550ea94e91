#include "runtime/train/dist_trainer.h"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/model.h"
#include "runtime/core/log.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/train/progress.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

namespace {

// Every rank's end-of-run counters, sent to the chief as raw doubles.
struct RankStats {
  double isServer = 0, index = 0, rank = 0;
  double samples = 0, seconds = 0, cpuSeconds = 0, steps = 0;
  double version = 0, gradients = 0, pulls = 0, rejected = 0;
  double maxLead = 0, maxStaleness = 0, meanStaleness = 0, bytesIn = 0, bytesOut = 0;
};

double cpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void sendStats(transport::Transport& t, int to, const RankStats& s, double timeoutS) {
  Header h;
  h.type = MsgType::kStats;
  h.bytes = sizeof(RankStats);
  t.waitSend(t.send(to, h, &s), timeoutS);
}

struct Plan {
  int64_t stepsPerEpoch = 0, totalSteps = 0;
};
Plan plan(const Config& cfg, const data::Dataset& train, int workers) {
  const data::EpochSharder sharder(train.count, workers, cfg.seed);
  Plan p;
  p.stepsPerEpoch = (static_cast<int64_t>(sharder.shardSize(0)) + cfg.batch - 1) / cfg.batch;
  p.totalSteps = cfg.steps > 0 ? cfg.steps : p.stepsPerEpoch * cfg.epochs;
  return p;
}

kernels::SgdParams sgdOf(const Config& cfg) {
  return kernels::SgdParams{static_cast<float>(cfg.lr), static_cast<float>(cfg.effectiveMomentum()),
                            static_cast<float>(cfg.weightDecay), cfg.nesterov};
}

int ranksOnNode(const transport::Transport& t) {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v)) {
      const int n = std::atoi(s);
      if (n > 0) return n;
    }
  return t.size();
}

// ---------------------------------------------------------------- server role
void runServer(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
               const data::FashionMnist& fm) {
  const int shard = t.rank();
  auto be = kernels::makeBackend("cpu", 1);
  kernels::Model init(*be, kernels::parseModelSpec(cfg.model), 1);
  init.initParams(cfg.seed);
  std::vector<float> all;
  init.getParams(all);
  const auto ranges = ps::splitKeys(static_cast<int64_t>(all.size()), layout.servers());
  const ps::KeyRange r = ranges[shard];
  std::vector<float> slice(all.begin() + r.lo, all.begin() + r.hi);

  const auto policy = sync::makePolicy(cfg.sync, cfg.staleness);
  const Plan p = plan(cfg, fm.train, layout.workers());
  // Updates the server will apply over the run: one per round (BSP) or one per push.
  const int64_t totalUpdates = policy->roundBased() ? p.totalSteps : p.totalSteps * layout.groups();
  ps::ServerOptions opt;
  opt.shard = shard;
  opt.range = r;
  opt.clients = layout.groups();
  opt.aggregate = sync::parseAggregate(cfg.aggregate);
  opt.sgd = sgdOf(cfg);
  opt.lrAt = [&cfg, totalUpdates](int64_t v) { return learningRate(cfg, v, totalUpdates); };
  opt.timeoutS = cfg.peerTimeoutS;
  log::info("shard ", shard, " owns keys [", r.lo, ", ", r.hi, ") of ", all.size(), ", sync ",
            policy->name(), ", ", layout.groups(), " client(s)");
  ps::Server server(t, layout, opt, *policy, *be, std::move(slice));
  const double cpu0 = cpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  server.run(layout.chiefRank());
  const ps::ServerStats& s = server.stats();
  RankStats rs;
  rs.isServer = 1;
  rs.index = shard;
  rs.rank = t.rank();
  rs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rs.cpuSeconds = cpuSeconds() - cpu0;
  rs.version = static_cast<double>(s.version);
  rs.gradients = static_cast<double>(s.gradients);
  rs.pulls = static_cast<double>(s.pullsServed);
  rs.rejected = static_cast<double>(s.rejected);
  rs.maxLead = static_cast<double>(s.maxLead);
  rs.maxStaleness = static_cast<double>(s.maxStaleness);
  rs.meanStaleness = s.version ? s.stalenessSum / static_cast<double>(s.version) : 0;
  rs.bytesIn = s.bytesIn;
  rs.bytesOut = s.bytesOut;
  sendStats(t, layout.chiefRank(), rs, cfg.peerTimeoutS);
}

// ---------------------------------------------------------------- worker role
class WorkerLoop {
 public:
  WorkerLoop(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
             const data::FashionMnist& fm)
      : cfg_(cfg), t_(t), layout_(layout), fm_(fm), w_(layout.workerIndex(t.rank())),
        group_(layout.groupOf(w_)), leader_(layout.leaderOf(group_)), chief_(w_ == 0),
        be_(kernels::makeBackend(cfg.device, workerThreads(cfg.threads, ranksOnNode(t)))),
        model_(*be_, kernels::parseModelSpec(cfg.model),
               std::max(cfg.batch, chief_ ? cfg.evalBatch : 1)),
        n_(model_.paramCount()),
        client_(t, layout, ps::splitKeys(static_cast<int64_t>(n_), layout.servers()), group_, 0,
                cfg.peerTimeoutS) {
    // CPU workers exchange straight from the model's buffers; GPU workers stage through host.
    if (be_->kind() != kernels::DeviceKind::kCpu) {
      hostParams_.resize(n_);
      hostGrads_.resize(n_);
    }
    if (isLeader() && layout_.groupEnd(group_) - leader_ > 1) recv_.resize(n_);
  }

  TrainResult run();

 private:
  bool isLeader() const { return w_ == leader_; }
  float* paramBuf() { return hostParams_.empty() ? model_.params() : hostParams_.data(); }
  float* gradBuf() { return hostGrads_.empty() ? model_.grads() : hostGrads_.data(); }
  void uploadParams() {
    if (!hostParams_.empty()) be_->copyToDevice(model_.params(), hostParams_.data(), n_ * 4);
  }
  void exchange(int64_t clock, double loss);  // push gradient of clock, get weights of clock+1
  void initialWeights();
  void shareWeights(int64_t clock);
  TrainResult finishChief(double trainSeconds, int64_t samples, double lastTrainLoss);

  const Config& cfg_;
  transport::Transport& t_;
  const ps::RoleLayout& layout_;
  const data::FashionMnist& fm_;
  int w_, group_, leader_;
  bool chief_;
  std::unique_ptr<kernels::Backend> be_;
  kernels::Model model_;
  size_t n_;
  ps::PsClient client_;
  std::vector<float> hostParams_, hostGrads_, recv_;
};

void WorkerLoop::shareWeights(int64_t clock) {
  std::vector<transport::SendId> ids;
  for (int m = leader_ + 1; m < layout_.groupEnd(group_); ++m) {
    Header h;
    h.type = MsgType::kGroupWeights;
    h.client = m;
    h.clock = clock;
    h.version = client_.minVersion();
    h.bytes = static_cast<int64_t>(n_ * sizeof(float));
    ids.push_back(t_.send(layout_.workerRank(m), h, paramBuf()));
  }
  for (auto id : ids) t_.waitSend(id, cfg_.peerTimeoutS);
}

void WorkerLoop::initialWeights() {
  if (isLeader()) {
    client_.pull(0, paramBuf());
    shareWeights(0);
  } else {
    Header h;
    int src = -1;
    t_.waitHeader(MsgType::kGroupWeights, &h, &src, cfg_.peerTimeoutS, "the initial weights");
    t_.recvPayload(src, MsgType::kGroupWeights, paramBuf(), n_ * sizeof(float), cfg_.peerTimeoutS);
  }
  uploadParams();
}

void WorkerLoop::exchange(int64_t clock, double loss) {
  if (!hostGrads_.empty()) be_->copyToHost(hostGrads_.data(), model_.grads(), n_ * 4);
  const size_t bytes = n_ * sizeof(float);
  if (isLeader()) {
    // Reduce the group's gradients into ours (point-to-point: a dead member cannot hang a
    // collective), then one push/pull for the whole group.
    const int members = layout_.groupEnd(group_) - leader_;
    for (int i = 1; i < members; ++i) {
      Header h;
      int src = -1;
      t_.waitHeader(MsgType::kGroupGrad, &h, &src, cfg_.peerTimeoutS,
                    detail::concat("group gradients of clock ", clock));
      PHX_ENFORCE(h.clock == clock && h.bytes == static_cast<int64_t>(bytes),
                  "group gradient for clock ", h.clock, " of ", h.bytes, " bytes, expected clock ",
                  clock);
      t_.recvPayload(src, MsgType::kGroupGrad, recv_.data(), bytes, cfg_.peerTimeoutS);
      // gradBuf() is host memory on every backend (GPU workers stage through it), so the sum
      // is a host loop, not a backend kernel.
      float* g = gradBuf();
      const float* r = recv_.data();
#pragma omp simd
      for (size_t k = 0; k < n_; ++k) g[k] += r[k];
      loss += h.value;
    }
    if (members > 1 && cfg_.aggregate == "mean") {
      float* g = gradBuf();
      const float inv = 1.0f / static_cast<float>(members);
      for (size_t k = 0; k < n_; ++k) g[k] *= inv;
    }
    client_.push(clock, gradBuf(), true, loss / members);
    client_.awaitWeights(clock + 1, paramBuf());
    client_.waitPushes();
    shareWeights(clock + 1);
  } else {
    Header g;
    g.type = MsgType::kGroupGrad;
    g.client = w_;
    g.clock = clock;
    g.bytes = static_cast<int64_t>(bytes);
    g.value = loss;
    const auto id = t_.send(layout_.workerRank(leader_), g, gradBuf());
    Header h;
    int src = -1;
    t_.waitHeader(MsgType::kGroupWeights, &h, &src, cfg_.peerTimeoutS,
                  detail::concat("the group's weights of clock ", clock + 1));
    t_.recvPayload(src, MsgType::kGroupWeights, paramBuf(), bytes, cfg_.peerTimeoutS);
    t_.waitSend(id, cfg_.peerTimeoutS);
  }
  uploadParams();
}

TrainResult WorkerLoop::run() {
  const data::Dataset& train = fm_.train;
  const data::EpochSharder sharder(train.count, layout_.workers(), cfg_.seed);
  const Plan p = plan(cfg_, train, layout_.workers());
  const size_t shardSize = sharder.shardSize(w_);
  if (chief_)
    log::info("training ", cfg_.model, " (", n_, " parameters) on ", layout_.workers(),
              " worker(s) x ", be_->describe(), ": ", p.totalSteps, " steps of batch ", cfg_.batch,
              " per worker, sync ", cfg_.sync, cfg_.sync == "ssp" ? detail::concat(" s=", cfg_.staleness) : "",
              ", ", layout_.servers(), " server shard(s)");
  MetricsCsv metrics(chief_ ? cfg_.metricsPath : "");
  std::vector<float> x(static_cast<size_t>(cfg_.batch) * train.sampleSize());
  std::vector<int32_t> y(cfg_.batch);
  std::vector<uint32_t> order;
  int currentEpoch = -1;
  initialWeights();
  Progress progress(cfg_, p.totalSteps, p.stepsPerEpoch, layout_.workers());
  int64_t samples = 0;
  double lastTrainLoss = NAN;
  const uint64_t dropoutSeed = cfg_.seed + 1000003ull * static_cast<uint64_t>(w_);
  for (int64_t step = 0; step < p.totalSteps; ++step) {
    const int epoch = static_cast<int>(step / p.stepsPerEpoch);
    if (epoch != currentEpoch) {
      order = sharder.shard(epoch, w_);
      currentEpoch = epoch;
    }
    int64_t first = (step % p.stepsPerEpoch) * cfg_.batch;
    if (first >= static_cast<int64_t>(shardSize)) first = 0;  // a shard one sample shorter
    const int n = static_cast<int>(std::min<int64_t>(cfg_.batch, shardSize - first));
    data::gatherBatch(train, order.data() + first, n, x.data(), y.data());
    const kernels::LossResult r = model_.forwardBackward(x.data(), y.data(), n, dropoutSeed, step);
    const double loss = r.lossSum / n;
    if (!std::isfinite(loss))
      PHX_USER_ERROR("training diverged at step ", step, " on worker ", w_, " (loss ", loss,
                     "); lower --lr (now ", cfg_.lr, ")");
    exchange(step, loss);
    samples += n;
    if (!chief_) continue;
    const int64_t done = step + 1;
    progress.step(done, n, loss);
    if (progress.evalDue(done)) {
      lastTrainLoss = progress.takeEvalLoss();
      const EvalResult e = evaluate(model_, fm_.test, cfg_.evalBatch);
      progress.markEval(e.accuracy);
      const bool epochEnd = done % p.stepsPerEpoch == 0;
      metrics.write(MetricsRow{progress.elapsed(), done,
                               static_cast<double>(done) / p.stepsPerEpoch, lastTrainLoss,
                               e.accuracy, client_.minVersion(), epochEnd ? "epoch" : ""});
      log::info("eval  step ", done, " epoch ", static_cast<double>(done) / p.stepsPerEpoch,
                "  test accuracy ", e.accuracy * 100.0, " %  test loss ", e.loss,
                "  (server version ", client_.minVersion(), ")");
    }
  }
  const double trainSeconds = progress.elapsed();
  if (isLeader()) client_.done();
  if (!chief_) {
    RankStats rs;
    rs.index = w_;
    rs.rank = t_.rank();
    rs.samples = static_cast<double>(samples);
    rs.seconds = trainSeconds;
    rs.cpuSeconds = cpuSeconds();
    rs.steps = static_cast<double>(p.totalSteps);
    rs.bytesIn = client_.bytesReceived();
    rs.bytesOut = client_.bytesSent();
    sendStats(t_, layout_.chiefRank(), rs, cfg_.peerTimeoutS);
    return {};
  }
  lastTrainLoss = progress.takeEvalLoss();
  TrainResult res = finishChief(trainSeconds, samples, lastTrainLoss);
  metrics.write(MetricsRow{progress.elapsed(), p.totalSteps,
                           static_cast<double>(p.totalSteps) / p.stepsPerEpoch, lastTrainLoss,
                           res.summary.finalTestAccuracy, res.summary.updatesApplied, "end"});
  return res;
}

TrainResult WorkerLoop::finishChief(double trainSeconds, int64_t samples, double lastTrainLoss) {
  // The final weights: every shard sends its slice once all clients are done, so the final
  // evaluation sees every update, also those of workers that finished after the chief.
  const auto ranges = ps::splitKeys(static_cast<int64_t>(n_), layout_.servers());
  int64_t updates = -1;
  for (int i = 0; i < layout_.servers(); ++i) {
    Header h;
    int src = -1;
    t_.waitHeader(MsgType::kFinal, &h, &src, cfg_.peerTimeoutS, "the final weights");
    PHX_ENFORCE(h.shard >= 0 && h.shard < layout_.servers() && h.offset == ranges[h.shard].lo &&
                    h.bytes == ranges[h.shard].size() * 4,
                "bad final-weights message from rank ", src);
    t_.recvPayload(src, MsgType::kFinal, paramBuf() + h.offset, h.bytes, cfg_.peerTimeoutS);
    if (h.shard == 0) updates = h.version;
  }
  uploadParams();
  // Every other rank's counters.
  std::vector<RankStats> all;
  RankStats mine;
  mine.rank = t_.rank();
  mine.samples = static_cast<double>(samples);
  mine.seconds = trainSeconds;
  mine.cpuSeconds = cpuSeconds();
  mine.bytesIn = client_.bytesReceived();
  mine.bytesOut = client_.bytesSent();
  all.push_back(mine);
  const int expect = layout_.servers() + layout_.workers() - 1;
  for (int i = 0; i < expect; ++i) {
    Header h;
    int src = -1;
    t_.waitHeader(MsgType::kStats, &h, &src, cfg_.peerTimeoutS, "end-of-run counters");
    RankStats s;
    PHX_ENFORCE(h.bytes == sizeof s, "stats message of ", h.bytes, " bytes from rank ", src);
    t_.recvPayload(src, MsgType::kStats, &s, sizeof s, cfg_.peerTimeoutS);
    all.push_back(s);
  }
  // Replicas and spares idle in this job (recovery gives them work): release them.
  for (int r = layout_.servers(); r < layout_.firstWorkerRank(); ++r) {
    Header h;
    h.type = MsgType::kDone;
    t_.waitSend(t_.send(r, h, nullptr), cfg_.peerTimeoutS);
  }

  const EvalResult e = evaluate(model_, fm_.test, cfg_.evalBatch);
  TrainResult res;
  res.finalTestLoss = e.loss;
  res.finalTrainLoss = lastTrainLoss;
  Summary& s = res.summary;
  double totalSamples = 0, rejected = 0, maxLead = 0, maxStale = 0;
  std::string ranks = "[";
  for (const RankStats& r : all) {
    if (r.isServer) {
      rejected += r.rejected;
      maxLead = std::max(maxLead, r.maxLead);
      maxStale = std::max(maxStale, r.maxStaleness);
    } else {
      totalSamples += r.samples;
    }
    char row[320];
    std::snprintf(row, sizeof row,
                  "%s{\"rank\": %d, \"role\": \"%s\", \"cpu_seconds\": %.3f, \"wall_seconds\": "
                  "%.3f, \"samples\": %.0f, \"updates\": %.0f, \"bytes_in\": %.0f, \"bytes_out\": %.0f}",
                  ranks.size() > 1 ? ", " : "", static_cast<int>(r.rank),
                  r.isServer ? "server" : "worker", r.cpuSeconds, r.seconds, r.samples,
                  r.version, r.bytesIn, r.bytesOut);
    ranks += row;
  }
  ranks += "]";
  s.finalTestAccuracy = e.accuracy;
  s.steps = plan(cfg_, fm_.train, layout_.workers()).totalSteps;
  s.samplesPerS = totalSamples / std::max(1e-9, trainSeconds);
  s.updatesApplied = updates;
  s.updatesLost = 0;
  s.extra = {{"model", jsonString(cfg_.model)},
             {"parameters", std::to_string(n_)},
             {"device", jsonString(be_->describe())},
             {"batch", std::to_string(cfg_.batch)},
             {"samples", detail::concat(static_cast<int64_t>(totalSamples))},
             {"train_seconds", std::to_string(trainSeconds)},
             {"final_train_loss", std::to_string(lastTrainLoss)},
             {"final_test_loss", std::to_string(e.loss)},
             {"workers", std::to_string(layout_.workers())},
             {"servers", std::to_string(layout_.servers())},
             {"group_size", std::to_string(layout_.groupSize())},
             {"sync", jsonString(cfg_.sync)},
             {"staleness", std::to_string(cfg_.staleness)},
             {"aggregate", jsonString(cfg_.aggregate)},
             {"messages_rejected", detail::concat(static_cast<int64_t>(rejected))},
             {"max_clock_lead", detail::concat(static_cast<int64_t>(maxLead))},
             {"max_staleness", detail::concat(static_cast<int64_t>(maxStale))},
             {"ranks", ranks}};
  if (!cfg_.summaryPath.empty()) writeFileAtomic(cfg_.summaryPath, s.toJson());
  log::info("done: ", s.steps, " steps per worker in ", fmtDuration(trainSeconds), ", ",
            static_cast<int64_t>(s.samplesPerS), " samples/s over ", layout_.workers(),
            " workers, ", updates, " updates, test accuracy ", e.accuracy * 100.0, " %");
  return res;
}

}  // namespace

int workerThreads(int requested, int ranksOnNode) {
  if (requested > 0) return requested;
  cpu_set_t set;
  int cores = 1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  return std::max(1, cores / std::max(1, ranksOnNode));
}

TrainResult runDistributed(const Config& cfg, transport::Transport& t,
                           const data::FashionMnist* data) {
  cfg.validate();
  const ps::RoleLayout layout(t.size(), cfg.servers, cfg.replicas, cfg.spares, cfg.groupSize);
  const ps::Role role = layout.roleOf(t.rank());
  log::setIdentity(t.rank(), ps::roleName(role), t.rank() == layout.chiefRank());
  if (t.rank() == layout.chiefRank()) log::info(layout.describe());
  sync::makePolicy(cfg.sync, cfg.staleness);  // reject a bad --sync on every rank alike
  if (role == ps::Role::kReplica || role == ps::Role::kSpare) {
    if (t.rank() == layout.servers())
      log::warn("replica and spare ranks idle in this build until --recovery gives them a role");
    Header h;
    int src = -1;
    t.waitHeader(MsgType::kDone, &h, &src, 7 * 24 * 3600.0, "the end of the job");
    return {};
  }
  data::FashionMnist loaded;
  if (!data) {
    loaded = data::loadFashionMnist(cfg.dataDir);
    data = &loaded;
  }
  if (role == ps::Role::kServer) {
    runServer(cfg, t, layout, *data);
    return {};
  }
  WorkerLoop loop(cfg, t, layout, *data);
  return loop.run();
}

}  // namespace phx::train
