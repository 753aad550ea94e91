// CPU and CUDA backends agree on every op and on a whole training step. Skipped (not failed)
// when no GPU can be used. Tolerance: 1e-4 relative to the output's scale (float32 with
// different summation orders; TF32 is disabled in the CUDA backend).
#include <gtest/gtest.h>

#include <random>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/model.h"

namespace phx::kernels {
namespace {

constexpr double kRelTol = 1e-4;

class CudaAgreement : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cudaAvailable(&why)) GTEST_SKIP() << "no usable GPU: " << why;
    gpu_ = makeBackend("cuda", 0);
  }
  static void expectClose(const std::vector<float>& a, const std::vector<float>& b,
                          const char* what) {
    ASSERT_EQ(a.size(), b.size());
    double scale = 1e-6;
    for (float v : a) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_NEAR(a[i], b[i], kRelTol * scale) << what << " at " << i;
  }
  std::unique_ptr<Backend> gpu_;
  CpuBackend cpu_{1};
};

TEST_F(CudaAgreement, WholeCnnTrainingSteps) {
  for (const char* name : {"cnn", "mlp"}) {
    Model a(cpu_, parseModelSpec(name), 32), b(*gpu_, parseModelSpec(name), 32);
    a.initParams(1);
    b.initParams(1);
    std::mt19937 rng(2);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> x(32 * 784);
    std::vector<int32_t> y(32);
    for (auto& v : x) v = u(rng);
    for (auto& v : y) v = static_cast<int32_t>(rng() % 10);
    DeviceArray<float> va(cpu_, a.paramCount()), vb(*gpu_, b.paramCount());
    cpu_.fill(va.data(), va.size(), 0);
    gpu_->fill(vb.data(), vb.size(), 0);
    const SgdParams p{0.01f, 0.9f, 1e-4f, false};
    for (int step = 0; step < 3; ++step) {
      const LossResult la = a.forwardBackward(x.data(), y.data(), 32, 5, step);
      const LossResult lb = b.forwardBackward(x.data(), y.data(), 32, 5, step);
      EXPECT_NEAR(la.lossSum, lb.lossSum, 1e-3 * std::fabs(la.lossSum)) << name;
      std::vector<float> ga, gb;
      a.getGrads(ga);
      b.getGrads(gb);
      expectClose(ga, gb, name);
      cpu_.sgdStep(a.params(), a.grads(), va.data(), a.paramCount(), p);
      gpu_->sgdStep(b.params(), b.grads(), vb.data(), b.paramCount(), p);
    }
    std::vector<float> pa, pb;
    a.getParams(pa);
    b.getParams(pb);
    expectClose(pa, pb, name);
  }
}

TEST_F(CudaAgreement, DropoutMaskIsIdentical) {
  const size_t n = 10000;
  std::vector<float> x(n, 1.0f), ya(n), yb(n);
  DeviceArray<float> dx(*gpu_, n), dy(*gpu_, n);
  gpu_->copyToDevice(dx.data(), x.data(), n * 4);
  cpu_.dropoutForward(x.data(), ya.data(), n, 0.25f, 9, 4);
  gpu_->dropoutForward(dx.data(), dy.data(), n, 0.25f, 9, 4);
  gpu_->copyToHost(yb.data(), dy.data(), n * 4);
  EXPECT_EQ(ya, yb);
}

}  // namespace
}  // namespace phx::kernels
