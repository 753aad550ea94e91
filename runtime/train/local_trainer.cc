#include "runtime/train/local_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "runtime/core/log.h"
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
  cfg.validate();
  if (!cfg.straggle.empty() || !cfg.straggleRandom.empty())
    PHX_USER_ERROR("--straggle and --straggle-random slow down workers of an mpirun job; this is a "
                   "single-process run (start it with mpirun -n N ... --servers S)");
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

  for (int64_t step = 0; step < totalSteps; ++step) {
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
    if (progress.evalDue(done)) doEval(done, done % stepsPerEpoch == 0 ? "epoch" : "");
  }
  const double trainSeconds = progress.elapsed();
  doEval(totalSteps, "end");

  TrainResult res;
  res.finalTrainLoss = lastLoss;
  res.finalTestLoss = lastTestLoss;
  Summary& s = res.summary;
  s.finalTestAccuracy = lastAcc;
  s.steps = totalSteps;
  s.samplesPerS = samples / std::max(1e-9, trainSeconds);
  s.updatesApplied = totalSteps;
  s.updatesLost = 0;
  s.extra = {{"model", jsonString(spec.name)},
             {"parameters", std::to_string(model.paramCount())},
             {"device", jsonString(backend->describe())},
             {"batch", std::to_string(cfg.batch)},
             {"samples", std::to_string(samples)},
             {"train_seconds", std::to_string(trainSeconds)},
             {"final_train_loss", std::to_string(lastLoss)},
             {"final_test_loss", std::to_string(lastTestLoss)},
             {"workers", "1"},
             {"servers", "0"}};
  if (!cfg.summaryPath.empty()) writeFileAtomic(cfg.summaryPath, s.toJson());
  log::info("done: ", totalSteps, " steps in ", fmtDuration(trainSeconds), ", ",
            static_cast<int64_t>(s.samplesPerS), " samples/s, test accuracy ",
            s.finalTestAccuracy * 100.0, " %");
  return res;
}

}  // namespace phx::train
