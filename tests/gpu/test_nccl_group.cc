// NCCL inside a worker group (kernels/group_reduce.h). Skipped (not failed) without a usable
// GPU; the multi-rank sum needs two GPUs (NCCL refuses two ranks on one GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/group_reduce.h"
#include "runtime/core/error.h"

namespace phx::kernels {
namespace {

class NcclGroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ncclBuilt()) GTEST_SKIP() << "this build has no NCCL";
    std::string why;
    if (!cudaAvailable(&why)) GTEST_SKIP() << "no usable GPU: " << why;
  }
};

TEST_F(NcclGroupTest, OneRankGroupKeepsItsData) {
  auto be = makeBackend("cuda", 0);
  NcclGroup g(NcclGroup::newId(), 1, 0, 30);
  std::vector<float> host(1000), back(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  DeviceArray<float> buf(*be, host.size());
  be->copyToDevice(buf.data(), host.data(), host.size() * 4);
  g.reduceSum(buf.data(), host.size());
  g.broadcast(buf.data(), host.size());
  be->copyToHost(back.data(), buf.data(), host.size() * 4);
  EXPECT_EQ(host, back);
  EXPECT_FALSE(gpuIdentity().empty());
}

// A member that never joins: setup fails within the timeout with a clear error, no hang.
TEST_F(NcclGroupTest, MissingMemberIsAnErrorNotAHang) {
  auto be = makeBackend("cuda", 0);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    NcclGroup g(NcclGroup::newId(), 2, 0, 3.0);
    FAIL() << "a 2-rank group with one member came up";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("group member died or hangs"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
}

// Two ranks as threads, one GPU each: the sum reaches rank 0, the broadcast every rank.
TEST_F(NcclGroupTest, TwoGpusSumAndBroadcast) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs (found " << gpus << ")";
  const auto id = NcclGroup::newId();
  const size_t n = 1 << 20;
  std::vector<std::vector<float>> out(2, std::vector<float>(n));
  std::vector<std::string> errors(2);
  auto rank = [&](int r) {
    try {
      auto be = makeCudaBackend(r);  // GPU r; sets this thread's device
      NcclGroup g(id, 2, r, 60);
      std::vector<float> host(n, static_cast<float>(r + 1));
      DeviceArray<float> buf(*be, n);
      be->copyToDevice(buf.data(), host.data(), n * 4);
      g.reduceSum(buf.data(), n);
      be->copyToHost(out[r].data(), buf.data(), n * 4);
      if (r == 0) std::fill(host.begin(), host.end(), 7.0f);
      be->copyToDevice(buf.data(), host.data(), n * 4);
      g.broadcast(buf.data(), n);
      std::vector<float> b(n);
      be->copyToHost(b.data(), buf.data(), n * 4);
      for (float v : b)
        if (v != 7.0f) throw std::runtime_error("broadcast gave " + std::to_string(v));
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread t1(rank, 1);
  rank(0);
  t1.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  EXPECT_EQ(out[0][0], 3.0f);  // 1 + 2 on rank 0
  EXPECT_EQ(out[0][n - 1], 3.0f);
}

}  // namespace
}  // namespace phx::kernels
