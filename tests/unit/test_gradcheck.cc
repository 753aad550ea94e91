// Every layer's backward pass against central finite differences, on the CPU backend.
// The loss is L = sum(y * r) for a fixed random r, so dL/dy = r.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/layers.h"
#include "kernels/model.h"

namespace phx::kernels {
namespace {

struct Case {
  std::unique_ptr<Layer> layer;
  Dims in;
  int batch;
};

double lossOf(Layer& l, CpuBackend& be, const PassContext& ctx, const std::vector<float>& x,
              const std::vector<float>& r, int batch, std::vector<uint8_t>& state) {
  std::vector<float> y(r.size());
  l.forward(ctx, x.data(), l.aliasesInput() ? const_cast<float*>(x.data()) : y.data(), state.data(),
            batch);
  const std::vector<float>& out = l.aliasesInput() ? x : y;
  double s = 0;
  for (size_t i = 0; i < r.size(); ++i) s += static_cast<double>(out[i]) * r[i];
  return s;
}

// Checks dx and dparams of one layer; tolerance is relative to the gradient's scale.
void gradCheck(Layer& l, Dims in, int batch, bool separated = false) {
  CpuBackend be(1);
  const Dims out = l.configure(in);
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(in.count() * batch), r(out.count() * batch);
  for (auto& v : x) v = u(rng);
  if (separated) {  // distinct values 0.05 apart: no finite-difference step crosses a kink
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.05f * static_cast<float>(i) - 0.975f;
    std::shuffle(x.begin(), x.end(), rng);
  }
  for (auto& v : r) v = u(rng);
  std::vector<float> params(l.paramCount() + 1), grads(l.paramCount() + 1, 0.0f);
  l.initParams(params.data(), rng);
  for (size_t i = 0; i < l.paramCount(); ++i) params[i] += 0.1f * u(rng);  // non-trivial bias
  std::vector<uint8_t> state(l.stateBytesPerSample() * batch + 1);
  PassContext ctx{&be, params.data(), grads.data(), true, 7, 3};

  std::vector<float> y(out.count() * batch), dx(x.size());
  l.forward(ctx, x.data(), y.data(), state.data(), batch);
  l.backward(ctx, x.data(), y.data(), r.data(), dx.data(), state.data(), batch);

  const double eps = 1e-2;
  auto numeric = [&](float& v) {
    const float keep = v;
    v = keep + eps;
    const double lp = lossOf(l, be, ctx, x, r, batch, state);
    v = keep - eps;
    const double lm = lossOf(l, be, ctx, x, r, batch, state);
    v = keep;
    return (lp - lm) / (2 * eps);
  };
  double scale = 1e-3;
  for (float g : grads) scale = std::max(scale, static_cast<double>(std::fabs(g)));
  for (float g : dx) scale = std::max(scale, static_cast<double>(std::fabs(g)));
  const double tol = 2e-2 * scale;

  std::mt19937 pick(1);
  const size_t nParams = l.paramCount();
  for (int t = 0; t < 60 && nParams; ++t) {
    const size_t i = pick() % nParams;
    EXPECT_NEAR(grads[i], numeric(params[i]), tol) << l.name() << " param " << i;
  }
  for (int t = 0; t < 60; ++t) {
    const size_t i = pick() % x.size();
    EXPECT_NEAR(dx[i], numeric(x[i]), tol) << l.name() << " input " << i;
  }
}

TEST(GradCheck, Dense) { gradCheck(*makeDense(7), Dims{1, 1, 13}, 5); }
TEST(GradCheck, DenseSmallBatchWide) { gradCheck(*makeDense(300), Dims{1, 1, 40}, 4); }
TEST(GradCheck, Conv2dSingleChannelDirect) { gradCheck(*makeConv2d(16, 3), Dims{6, 5, 1}, 3); }
TEST(GradCheck, Conv2dMultiChannelIm2col) { gradCheck(*makeConv2d(5, 3), Dims{6, 7, 3}, 2); }
TEST(GradCheck, Conv2dFiveByFive) { gradCheck(*makeConv2d(4, 5), Dims{7, 6, 2}, 2); }
TEST(GradCheck, Relu) { gradCheck(*makeRelu(), Dims{3, 4, 5}, 3, true); }
TEST(GradCheck, MaxPool) { gradCheck(*makeMaxPool2(), Dims{4, 6, 3}, 2, true); }
TEST(GradCheck, Dropout) { gradCheck(*makeDropout(0.25f), Dims{1, 1, 64}, 4); }
TEST(GradCheck, Flatten) {
  auto l = makeFlatten();
  EXPECT_EQ(l->configure(Dims{7, 7, 32}), (Dims{1, 1, 1568}));
  EXPECT_TRUE(l->aliasesInput());
}

TEST(GradCheck, SoftmaxCrossEntropy) {
  CpuBackend be(1);
  const int B = 4, K = 10;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> z(B * K), dz(B * K);
  for (auto& v : z) v = u(rng);
  std::vector<int32_t> y = {0, 3, 9, 5};
  const LossResult r = be.softmaxCrossEntropy(z.data(), y.data(), B, K, dz.data());
  EXPECT_GT(r.lossSum, 0.0);
  const double eps = 1e-3;
  for (int i = 0; i < B * K; ++i) {
    const float keep = z[i];
    z[i] = keep + eps;
    const double lp = be.softmaxCrossEntropy(z.data(), y.data(), B, K, nullptr).lossSum / B;
    z[i] = keep - eps;
    const double lm = be.softmaxCrossEntropy(z.data(), y.data(), B, K, nullptr).lossSum / B;
    z[i] = keep;
    EXPECT_NEAR(dz[i], (lp - lm) / (2 * eps), 1e-4) << "logit " << i;
  }
}

// The whole cnn, end to end: a few parameters of every layer against finite differences of
// the mean cross-entropy (dropout mask fixed by seed and step).
TEST(GradCheck, WholeCnnModel) {
  CpuBackend be(1);
  Model m(be, parseModelSpec("cnn"), 2);
  m.initParams(5);
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(2 * 784);
  for (auto& v : x) v = u(rng);
  std::vector<int32_t> y = {2, 7};
  m.forwardBackward(x.data(), y.data(), 2, 11, 4);
  std::vector<float> g, p;
  m.getGrads(g);
  m.getParams(p);
  auto loss = [&] { return m.forwardBackward(x.data(), y.data(), 2, 11, 4).lossSum / 2; };
  // first conv weight, second conv weight, fc1 weight, fc2 bias
  for (size_t i : {size_t{3}, size_t{200}, size_t{5000}, size_t{300000}, m.paramCount() - 1}) {
    const double eps = 1e-2;
    const float keep = p[i];
    p[i] = keep + eps;
    m.setParams(p);
    const double lp = loss();
    p[i] = keep - eps;
    m.setParams(p);
    const double lm = loss();
    p[i] = keep;
    m.setParams(p);
    EXPECT_NEAR(g[i], (lp - lm) / (2 * eps), 2e-3 + 2e-2 * std::fabs(g[i])) << "param " << i;
  }
}

// n random 28x28 images in [-1, 1).
std::vector<float> randomImages(std::mt19937_64& rng, int n) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * 784);
  for (auto& v : x) v = u(rng);
  return x;
}

// EPSP's lanes accumulate several shards' mean gradients in place: the result must be the sum
// of the separate gradients, for every parameter of every layer (conv, dense, biases).
TEST(GradCheck, AccumulateAddsBatchGradients) {
  for (const char* spec : {"cnn", "mlp"}) {
    CpuBackend be(1);
    Model m(be, parseModelSpec(spec), 3);
    m.initParams(7);
    std::mt19937_64 rng(3);
    const std::vector<float> x1 = randomImages(rng, 3), x2 = randomImages(rng, 2);
    std::vector<int32_t> y1 = {1, 4, 9}, y2 = {0, 6};
    std::vector<float> g1, g2, acc;
    m.forwardBackward(x1.data(), y1.data(), 3, 5, 1);
    m.getGrads(g1);
    m.forwardBackward(x2.data(), y2.data(), 2, 5, 2);
    m.getGrads(g2);
    m.forwardBackward(x1.data(), y1.data(), 3, 5, 1);
    m.forwardBackward(x2.data(), y2.data(), 2, 5, 2, /*accumulate=*/true);
    m.getGrads(acc);
    size_t differ = 0;
    for (size_t i = 0; i < acc.size(); ++i) {
      ASSERT_NEAR(acc[i], g1[i] + g2[i], 1e-5f + 1e-5f * std::fabs(g1[i] + g2[i])) << spec << " param " << i;
      differ += g2[i] != 0.0f && std::fabs(acc[i] - g2[i]) > 1e-6f;
    }
    EXPECT_GT(differ, acc.size() / 4) << spec << ": accumulate must not just overwrite";
  }
}

// Deferred dense weight gradients (EPSP's CPU lanes): the shards keep their dense inputs and
// output gradients, flushDeferred writes the weight gradient in one GEMM. The result must be
// the accumulated one, and before the flush the dense weights must not have been touched.
TEST(GradCheck, DeferredDenseWeightsEqualTheAccumulatedGradient) {
  for (const char* spec : {"cnn", "mlp"}) {
    CpuBackend be(1);
    Model m(be, parseModelSpec(spec), 3);
    m.initParams(7);
    std::mt19937_64 rng(3);
    const std::vector<float> x1 = randomImages(rng, 3), x2 = randomImages(rng, 2), x3 = randomImages(rng, 3);
    std::vector<int32_t> y1 = {1, 4, 9}, y2 = {0, 6}, y3 = {3, 3, 8};
    std::vector<float> want, got, before;
    m.forwardBackward(x1.data(), y1.data(), 3, 5, 1, false, 0.25f);
    m.forwardBackward(x2.data(), y2.data(), 2, 5, 2, true, 0.25f);
    m.forwardBackward(x3.data(), y3.data(), 3, 5, 3, true, 0.25f);
    m.getGrads(want);
    std::vector<float> sentinel(want.size(), 123.0f);  // CPU: host memory is the backend's
    m.bindGrads(sentinel.data());
    m.forwardBackward(x1.data(), y1.data(), 3, 5, 1, false, 0.25f, /*deferWeights=*/true);
    m.forwardBackward(x2.data(), y2.data(), 2, 5, 2, true, 0.25f, true);
    m.forwardBackward(x3.data(), y3.data(), 3, 5, 3, true, 0.25f, true);
    m.getGrads(before);
    m.flushDeferred();
    m.getGrads(got);
    size_t untouched = 0, changed = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f + 1e-5f * std::fabs(want[i])) << spec << " param " << i;
      untouched += before[i] == 123.0f;
      changed += before[i] != got[i];
    }
    // the dense weights (most of either model) were written by the flush, not before it
    EXPECT_GT(untouched, got.size() / 2) << spec;
    EXPECT_GT(changed, got.size() / 2) << spec;
    m.flushDeferred();  // nothing kept any more: the gradient stays
    m.getGrads(before);
    EXPECT_EQ(before, got) << spec;
  }
}

}  // namespace
}  // namespace phx::kernels
