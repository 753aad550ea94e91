// Training-level behaviour on a small in-memory dataset (no files): determinism, learning,
// SGD semantics, config validation.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "runtime/core/config.h"
#include "runtime/core/error.h"
#include "runtime/train/local_trainer.h"
#include "tests/unit/toy_data.h"

namespace phx {
namespace {

Config smallConfig(const std::string& model) {
  Config c;
  c.model = model;
  c.device = "cpu";
  c.threads = 1;
  c.batch = 16;
  c.steps = 40;
  c.evalBatch = 64;
  c.lr = 0.01;
  c.momentum = 0.9;
  c.logLevel = "warn";
  return c;
}

TEST(Training, FixedSeedGivesIdenticalResults) {
  const auto fm = toyData(256);
  Config c = smallConfig("cnn");
  c.seed = 3;
  const auto a = train::runLocal(c, fm);
  const auto b = train::runLocal(c, fm);
  EXPECT_EQ(a.finalTrainLoss, b.finalTrainLoss);  // bit-identical
  EXPECT_EQ(a.finalTestLoss, b.finalTestLoss);
  EXPECT_EQ(a.summary.finalTestAccuracy, b.summary.finalTestAccuracy);
  c.seed = 4;
  const auto d = train::runLocal(c, fm);
  EXPECT_NE(a.finalTestLoss, d.finalTestLoss);
}

TEST(Training, FixedSeedIdenticalOnTwoThreads) {
  const auto fm = toyData(256);
  Config c = smallConfig("cnn");
  c.threads = 2;
  const auto a = train::runLocal(c, fm);
  const auto b = train::runLocal(c, fm);
  EXPECT_EQ(a.finalTrainLoss, b.finalTrainLoss);
  EXPECT_EQ(a.finalTestLoss, b.finalTestLoss);
}

TEST(Training, CnnAndMlpLearnASeparableTask) {
  const auto fm = toyData(512);
  for (const char* m : {"cnn", "mlp", "synthetic:20000"}) {
    const auto r = train::runLocal(smallConfig(m), fm);
    EXPECT_GT(r.summary.finalTestAccuracy, 0.95) << m;
    EXPECT_EQ(r.summary.steps, 40);
    EXPECT_EQ(r.summary.updatesApplied, 40);
  }
}

TEST(Sgd, MatchesPyTorchSemantics) {
  kernels::CpuBackend be(1);
  std::vector<float> w = {1.0f, -2.0f}, g = {0.5f, 0.25f}, v = {0.0f, 0.0f};
  const kernels::SgdParams p{0.1f, 0.9f, 0.01f, false};
  be.sgdStep(w.data(), g.data(), v.data(), 2, p);
  // step 1: d = g + wd w; v = d; w -= lr v
  const float d0 = 0.5f + 0.01f * 1.0f;
  EXPECT_FLOAT_EQ(v[0], d0);
  EXPECT_FLOAT_EQ(w[0], 1.0f - 0.1f * d0);
  const float w0 = w[0];
  be.sgdStep(w.data(), g.data(), v.data(), 2, p);
  const float d1 = 0.5f + 0.01f * w0;
  EXPECT_FLOAT_EQ(v[0], 0.9f * d0 + d1);
  EXPECT_FLOAT_EQ(w[0], w0 - 0.1f * (0.9f * d0 + d1));
}

TEST(Config, CosineScheduleGoesFromLrToZero) {
  Config c;
  c.lr = 0.1;
  c.lrSchedule = "constant";
  EXPECT_DOUBLE_EQ(learningRate(c, 50, 100), 0.1);
  c.lrSchedule = "cosine";
  EXPECT_DOUBLE_EQ(learningRate(c, 0, 100), 0.1);
  EXPECT_NEAR(learningRate(c, 50, 100), 0.05, 1e-12);
  EXPECT_NEAR(learningRate(c, 100, 100), 0.0, 1e-12);
  EXPECT_GT(learningRate(c, 99, 100), 0.0);
}

TEST(Config, StraggleFactorsAreFixedPerRankAndRandomPerIteration) {
  Config c;
  EXPECT_EQ(c.straggleFactor(3, 0), 1.0);
  c.straggle = "3:3,5:1.5";
  EXPECT_EQ(c.straggleFactor(3, 7), 3.0);
  EXPECT_EQ(c.straggleFactor(5, 7), 1.5);
  EXPECT_EQ(c.straggleFactor(4, 7), 1.0);
  EXPECT_EQ(c.straggleRanks(), (std::vector<int>{3, 5}));
  c.straggle.clear();
  c.straggleRandom = "0.25:4";
  int slow = 0;
  const int n = 4000;
  for (int64_t step = 0; step < n; ++step) {
    const double f = c.straggleFactor(2, step);
    EXPECT_TRUE(f == 1.0 || f == 4.0);
    slow += f > 1.0 ? 1 : 0;
    EXPECT_EQ(f, c.straggleFactor(2, step));  // deterministic
  }
  EXPECT_NEAR(static_cast<double>(slow) / n, 0.25, 0.03);
  // Different ranks straggle at different iterations.
  int differ = 0;
  for (int64_t step = 0; step < 400; ++step) differ += c.straggleFactor(2, step) != c.straggleFactor(3, step);
  EXPECT_GT(differ, 50);
}

TEST(Config, RejectsBadValuesWithTheFlagName) {
  auto expectBad = [](auto mutate, const std::string& flag) {
    Config c;
    mutate(c);
    try {
      c.validate();
      FAIL() << "accepted bad " << flag;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  expectBad([](Config& c) { c.batch = -3; }, "--batch");
  expectBad([](Config& c) { c.lr = 0; }, "--lr");
  expectBad([](Config& c) { c.momentum = 1.5; }, "--momentum");
  expectBad([](Config& c) { c.device = "tpu"; }, "--device");
  expectBad([](Config& c) { c.evalEvery = "abc"; }, "--eval-every");
  expectBad([](Config& c) { c.recovery = "chain"; }, "--replicas 1");
  expectBad([](Config& c) { c.recovery = "checkpoint"; c.replicas = 1; }, "--replicas");
  expectBad([](Config& c) { c.chainMode = "lazy"; }, "--chain-mode");
  expectBad([](Config& c) { c.backlogRule = "max"; }, "--backlog-rule");
  expectBad([](Config& c) { c.straggle = "4"; }, "--straggle");
  expectBad([](Config& c) { c.straggle = "4:0.5"; }, "--straggle");
  expectBad([](Config& c) { c.straggleRandom = "1.5:3"; }, "--straggle-random");
  expectBad([](Config& c) { c.lrSchedule = "step"; }, "--lr-schedule");
  expectBad([](Config& c) { c.spawn = "maybe"; }, "--spawn");
  expectBad([](Config& c) { c.spawn = "on"; }, "--spawn on");  // no launch that can spawn
  EXPECT_THROW(kernels::parseModelSpec("resnet"), UserError);
  EXPECT_THROW(kernels::parseModelSpec("synthetic:12x"), UserError);
  EXPECT_EQ(parseSchedule("--eval-every", "30s").seconds, 30.0);
  EXPECT_EQ(parseSchedule("--eval-every", "500").steps, 500);
  expectBad([](Config& c) { c.momentum = -0.5; }, "--momentum");
}

TEST(Config, MomentumDefaultDependsOnSync) {
  Config c;
  EXPECT_DOUBLE_EQ(c.effectiveMomentum(), 0.9);  // bsp and one process
  c.sync = "asp";
  EXPECT_DOUBLE_EQ(c.effectiveMomentum(), 0.8);
  c.sync = "ssp";
  EXPECT_DOUBLE_EQ(c.effectiveMomentum(), 0.8);
  c.momentum = 0.0;  // given explicitly: always wins
  EXPECT_DOUBLE_EQ(c.effectiveMomentum(), 0.0);
  c.momentum = 0.95;
  EXPECT_DOUBLE_EQ(c.effectiveMomentum(), 0.95);
}

}  // namespace
}  // namespace phx
