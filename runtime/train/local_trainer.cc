#include "runtime/train/local_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "recovery/checkpoint.h"
#include "recovery/view.h"
#include "runtime/core/log.h"
#include "runtime/core/signals.h"
#include "runtime/train/progress.h"

namespace phx::train {

namespace {
using Clock = std::chrono::steady_clock;
double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

std::string fmtDuration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int t = static_cast<int>(s + 0.5);
  char b[32];
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%dh%02dm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(b, sizeof b, "%dm%02ds", t / 60, t % 60);
  else
    std::snprintf(b, sizeof b, "%ds", t);
  return b;
}

EvalResult evaluate(kernels::Model& model, const data::Dataset& ds, int chunk, int limit,
                    const std::function<void()>& between) {
  const int count = limit > 0 ? std::min(limit, ds.count) : ds.count;
  chunk = std::min(chunk, model.maxBatch());
  std::vector<float> x(static_cast<size_t>(chunk) * ds.sampleSize());
  std::vector<int32_t> y(chunk);
  std::vector<uint32_t> idx(chunk);
  double lossSum = 0;
  int64_t correct = 0;
  for (int start = 0; start < count; start += chunk) {
    const int n = std::min(chunk, count - start);
    for (int i = 0; i < n; ++i) idx[i] = static_cast<uint32_t>(start + i);
    data::gatherBatch(ds, idx.data(), n, x.data(), y.data());
    const kernels::LossResult r = model.evaluate(x.data(), y.data(), n);
    lossSum += r.lossSum;
    correct += r.correct;
    if (between) between();
  }
  return EvalResult{static_cast<double>(correct) / count, lossSum / count};
}

TrainResult runLocal(const Config& cfg) {
  const auto t0 = Clock::now();
  const data::FashionMnist fm = data::loadFashionMnist(cfg.dataDir);
  log::debug("loaded Fashion-MNIST from ", cfg.dataDir, " in ", secondsSince(t0), " s");
  return runLocal(cfg, fm);
}

TrainResult runLocal(const Config& cfg, const data::FashionMnist& fm) {
  if (cfg.recovery == "chain" || cfg.recovery == "stateless" || cfg.recovery == "hybrid")
    PHX_USER_ERROR("--recovery ", cfg.recovery, " keeps the state on other ranks (replicas, the workers' "
                   "copies), and one process has none; use --recovery checkpoint here, or run a job "
                   "(mpirun -n N ... --servers S)");
  cfg.validate();
  cfg.checkFlagsTakeEffect(true);
  if (!cfg.straggle.empty() || !cfg.straggleRandom.empty())
    PHX_USER_ERROR("--straggle and --straggle-random slow down workers of an mpirun job; this is a "
                   "single-process run (start it with mpirun -n N ... --servers S)");
  // One process is the simplest case of training through a failure: --recovery checkpoint
  // writes snapshots every --checkpoint-every, --resume continues from the newest valid one,
  // and a stop signal ends the run after the current step with a snapshot.
  const bool ckpt = cfg.localSnapshots();
  const Schedule every = parseSchedule("--checkpoint-every", cfg.checkpointEvery);
  auto backend = kernels::makeBackend(cfg.device, cfg.threads);
  const kernels::ModelSpec spec = kernels::parseModelSpec(cfg.model);
  kernels::Model model(*backend, spec, std::max(cfg.batch, cfg.evalBatch));
  model.initParams(cfg.seed);
  kernels::DeviceArray<float> velocity(*backend, model.paramCount());
  backend->fill(velocity.data(), velocity.size(), 0.0f);
  kernels::SgdParams sgd{static_cast<float>(cfg.lr), static_cast<float>(cfg.effectiveMomentum()),
                               static_cast<float>(cfg.weightDecay), cfg.nesterov};

  const data::Dataset& train = fm.train;
  const data::EpochSharder sharder(train.count, 1, cfg.seed);
  const int64_t stepsPerEpoch = (train.count + cfg.batch - 1) / cfg.batch;
  const int64_t totalSteps = cfg.steps > 0 ? cfg.steps : stepsPerEpoch * cfg.epochs;
  log::info("training ", spec.name, " (", model.paramCount(), " parameters) on ",
            backend->describe(), ": ", totalSteps, " steps of batch ", cfg.batch, ", lr ", cfg.lr,
            ", momentum ", cfg.effectiveMomentum(), ", ", cfg.lrSchedule, " schedule");

  // --resume: weights, momentum and the step of the newest valid snapshot (the data order, the
  // learning rate and dropout follow the step, so the run goes on as if never stopped).
  int64_t startStep = 0;
  const size_t nParams = model.paramCount();
  if (!cfg.resumeDir.empty()) {
    const recovery::LoadResult lr = recovery::loadNewestSnapshot(cfg.resumeDir, 0);
    if (!lr.snap)
      PHX_USER_ERROR("--resume ", cfg.resumeDir, ": no valid snapshot in ", recovery::shardDir(cfg.resumeDir, 0),
                     lr.skipped.empty() ? std::string() : detail::concat(" (skipped: ", lr.skipped.back(), ")"),
                     "; check the directory, or train from scratch without --resume");
    const recovery::ShardSnapshot& sn = *lr.snap;
    if (sn.lo != 0 || sn.hi != static_cast<int64_t>(nParams) || sn.model != spec.name)
      PHX_USER_ERROR(lr.file, " holds keys [", sn.lo, ", ", sn.hi, ") of model '", sn.model, "', but this run trains ",
                     spec.name, " with ", nParams, " parameters in one process: resume with the same "
                     "--model, and a job's snapshots with the same job (mpirun ... --servers S)");
    if (sn.config.find(" workers=1 ") == std::string::npos)
      PHX_USER_ERROR(lr.file, " was written by a job of several workers (", sn.config, "); resume it with "
                     "the same job (mpirun ... --resume ", cfg.resumeDir, ")");
    if (sn.round >= totalSteps)
      PHX_USER_ERROR(lr.file, " is at step ", sn.round, ", and this run has ", totalSteps,
                     " steps: nothing left to train (raise --steps or --epochs)");
    backend->copyToDevice(model.params(), sn.weights.data(), nParams * sizeof(float));
    backend->copyToDevice(velocity.data(), sn.momentum.data(), nParams * sizeof(float));
    startStep = sn.round;
    log::info("resuming from ", cfg.resumeDir, " at step ", startStep, " of ", totalSteps, " (", lr.file, ")");
  }
  const std::string configText = detail::concat(
      "model=", cfg.model, " sync=local staleness=0 servers=0 workers=1 batch=", cfg.batch, " lr=", cfg.lr,
      " momentum=", cfg.effectiveMomentum(), " seed=", cfg.seed, " recovery=", cfg.recovery);
  std::unique_ptr<recovery::AsyncSnapshotWriter> writer;
  if (ckpt && !every.empty() && cfg.checkpointMode == "async")
    writer = std::make_unique<recovery::AsyncSnapshotWriter>(cfg.checkpointDir, cfg.checkpointKeep);
  if (ckpt && !every.empty())
    log::debug("snapshots every ", cfg.checkpointEvery, " into ", cfg.checkpointDir, ", written ",
               writer ? "by a background thread (async)" : "by the training thread (sync)", ", ",
               cfg.checkpointKeep, " kept");
  log::debug("evaluation in chunks of ", std::min(cfg.evalBatch, model.maxBatch()), " samples",
             cfg.evalSamples > 0 ? detail::concat(", the first ", cfg.evalSamples, " test samples during training") : "");
  int64_t snapshots = 0;
  double lastSnapUnix = recovery::unixNow();
  auto snapshot = [&](int64_t step) {
    recovery::ShardSnapshot snap;
    snap.lo = 0;
    snap.hi = static_cast<int64_t>(nParams);
    snap.version = snap.round = snap.gradients = step;
    snap.weights.resize(nParams);
    snap.momentum.resize(nParams);
    backend->copyToHost(snap.weights.data(), model.params(), nParams * sizeof(float));
    backend->copyToHost(snap.momentum.data(), velocity.data(), nParams * sizeof(float));
    snap.model = spec.name;
    snap.config = configText;
    snap.writtenUnix = recovery::unixNow();
    if (writer)
      writer->submit(std::move(snap));
    else
      recovery::writeSnapshot(cfg.checkpointDir, snap, cfg.checkpointKeep);
    ++snapshots;
    lastSnapUnix = recovery::unixNow();
  };

  MetricsCsv metrics(cfg.metricsPath);
  std::vector<float> x(static_cast<size_t>(cfg.batch) * train.sampleSize());
  std::vector<int32_t> y(cfg.batch);
  std::vector<uint32_t> order;
  int currentEpoch = -1;
  Progress progress(cfg, totalSteps, stepsPerEpoch);
  int64_t samples = 0;
  double lastLoss = NAN, lastAcc = -1, lastTestLoss = NAN;

  auto doEval = [&](int64_t step, const char* event) {
    // The row's train_loss is the mean over the steps since the previous row: deterministic
    // for a fixed seed, unlike the progress line's time window.
    lastLoss = progress.takeEvalLoss();
    // (the end of the run always on the whole test set: that is the reported accuracy)
    const bool end = std::string(event) == "end";
    const EvalResult e = evaluate(model, fm.test, cfg.evalBatch, end ? 0 : cfg.evalSamples);
    lastAcc = e.accuracy;
    lastTestLoss = e.loss;
    progress.markEval(e.accuracy);
    metrics.write(MetricsRow{progress.elapsed(), step, static_cast<double>(step) / stepsPerEpoch,
                             lastLoss, e.accuracy, step, event});
    log::info("eval  step ", step, " epoch ", static_cast<double>(step) / stepsPerEpoch,
              "  test accuracy ", e.accuracy * 100.0, " %  test loss ", e.loss);
  };

  int64_t stepsDone = startStep;
  for (int64_t step = startStep; step < totalSteps; ++step) {
    const int epoch = static_cast<int>(step / stepsPerEpoch);
    if (epoch != currentEpoch) {
      order = sharder.shard(epoch, 0);
      currentEpoch = epoch;
    }
    const int64_t first = (step % stepsPerEpoch) * cfg.batch;
    const int n = static_cast<int>(std::min<int64_t>(cfg.batch, train.count - first));
    data::gatherBatch(train, order.data() + first, n, x.data(), y.data());
    const kernels::LossResult r = model.forwardBackward(x.data(), y.data(), n, cfg.seed, step);
    sgd.lr = static_cast<float>(learningRate(cfg, step, totalSteps));
    backend->sgdStep(model.params(), model.grads(), velocity.data(), model.paramCount(), sgd);
    const double loss = r.lossSum / n;
    if (!std::isfinite(loss))
      PHX_USER_ERROR("training diverged at step ", step, " (loss ", loss,
                     "); lower --lr (now ", cfg.lr, ")");
    samples += n;
    const int64_t done = step + 1;
    progress.step(done, n, loss);
    stepsDone = done;
    if (signals::stopRequested()) {
      // SIGTERM, SIGINT, SIGUSR1 or SIGUSR2: end after this step with a snapshot to resume from
      if (writer) writer->flush();
      writer.reset();
      snapshot(done);
      log::warn("stopped on ", signals::stopSignalName(), " after step ", done, " of ", totalSteps,
                "; snapshot in ", recovery::shardDir(cfg.checkpointDir, 0), "; continue with --resume ",
                cfg.checkpointDir);
      break;
    }
    if (progress.evalDue(done)) doEval(done, done % stepsPerEpoch == 0 ? "epoch" : "");
    if (ckpt && !every.empty() && done < totalSteps &&
        (every.isTime() ? recovery::unixNow() - lastSnapUnix >= every.seconds : done % every.steps == 0))
      snapshot(done);
  }
  if (writer) {
    writer->flush();
    if (!writer->lastError().empty())
      PHX_USER_ERROR("a snapshot could not be written: ", writer->lastError(), "; check --checkpoint-dir ",
                     cfg.checkpointDir);
  }
  const double trainSeconds = progress.elapsed();
  doEval(stepsDone, "end");
  std::vector<float> finalWeights(nParams);
  backend->copyToHost(finalWeights.data(), model.params(), nParams * sizeof(float));

  TrainResult res;
  res.finalTrainLoss = lastLoss;
  res.finalTestLoss = lastTestLoss;
  Summary& s = res.summary;
  s.finalTestAccuracy = lastAcc;
  s.steps = totalSteps;
  s.samplesPerS = samples / std::max(1e-9, trainSeconds);
  s.updatesApplied = stepsDone - startStep;
  s.updatesLost = 0;
  s.extra = {{"model", jsonString(spec.name)},
             {"parameters", std::to_string(model.paramCount())},
             {"device", jsonString(backend->describe())},
             {"batch", std::to_string(cfg.batch)},
             {"samples", std::to_string(samples)},
             {"train_seconds", jsonNumber(trainSeconds)},
             {"final_train_loss", jsonNumber(lastLoss)},
             {"final_test_loss", jsonNumber(lastTestLoss)},
             {"workers", "1"},
             {"servers", "0"},
             {"steps_completed", std::to_string(stepsDone)},
             {"stopped_by_signal", stepsDone < totalSteps ? "true" : "false"},
             {"resumed_from_step", std::to_string(startStep)},
             {"snapshots_written", std::to_string(snapshots)},
             {"final_weights_crc32", std::to_string(recovery::crcOf(finalWeights))}};
  if (!cfg.summaryPath.empty()) writeFileAtomic(cfg.summaryPath, s.toJson());
  log::info(stepsDone < totalSteps ? detail::concat("stopped: ", stepsDone, " of ", totalSteps)
                                  : detail::concat("done: ", totalSteps),
            " steps in ", fmtDuration(trainSeconds), ", ",
            static_cast<int64_t>(s.samplesPerS), " samples/s, test accuracy ",
            s.finalTestAccuracy * 100.0, " %");
  return res;
}

}  // namespace phx::train
