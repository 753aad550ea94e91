// The straggler-aware consistency rules at one shard, workers as threads over the in-process
// transport: DynSGD scales an update of staleness tau by 1/(tau+1), ConSGD by 1/M, Sync-opt
// applies the first N of N+b pushes per round and counts the dropped ones.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>

#include "kernels/cpu/cpu_backend.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/sync/projection.h"
#include "runtime/sync/sync_policy.h"
#include "tests/unit/inproc_test.h"

namespace phx {
namespace {

using namespace phx::inproc_test;  // NOLINT(google-build-using-namespace): the inproc test kit

// One shard of `keys` zero weights, plain SGD with lr 1 (w -= g: every applied gradient is
// visible in the weights), served on its own thread by `policy`.
struct OneShard {
  OneShard(int workers, std::unique_ptr<sync::SyncPolicy> p, int64_t keys)
      : layout(1 + workers, 1, 0, 0, 1), fabric(1 + workers), policy(std::move(p)), range{0, keys} {
    for (int r = 0; r <= workers; ++r) ts.push_back(std::make_unique<InprocTransport>(fabric, r));
    o.shard = 0;
    o.range = range;
    o.clients = workers;
    o.sgd = kernels::SgdParams{1.0f, 0.0f, 0.0f, false};
    o.timeoutS = kTimeout;
    server = std::make_unique<ps::Server>(*ts[0], layout, o, *policy, be, std::vector<float>(keys, 0.0f));
  }
  ps::RoleLayout layout;
  InprocFabric fabric;
  std::unique_ptr<sync::SyncPolicy> policy;
  ps::KeyRange range;
  ps::ServerOptions o;
  kernels::CpuBackend be{1};
  std::vector<std::unique_ptr<InprocTransport>> ts;
  std::unique_ptr<ps::Server> server;
};

// A client that pulls the weights of clock 0, then pushes `grad` and waits for the next
// weights `steps` times (before(k) runs before the k-th push), then says done.
void runClient(OneShard& job, int w, int steps, float grad, const std::function<void(int)>& before = {}) {
  ps::PsClient c(*job.ts[1 + w], job.layout, {job.range}, w, 0, kTimeout);
  std::vector<float> p(static_cast<size_t>(job.range.size())), g(p.size(), grad);
  c.pull(0, p.data());
  for (int k = 0; k < steps; ++k) {
    if (before) before(k);
    c.push(k, g.data(), true);
    c.awaitWeights(k + 1, p.data());
    c.waitPushes();
  }
  c.done();
}

TEST(DynSgd, ScalesAnUpdateOfStalenessTauByOneOverTauPlusOne) {
  const int64_t keys = 64;
  OneShard job(2, sync::makePolicy("dynsgd", 0), keys);
  std::thread th([&] { job.server->run(-1); });
  std::atomic<int> phase{0};
  std::thread a([&] {  // pulls version 0, waits, then pushes ones: staleness 3 by then
    ps::PsClient c(*job.ts[1], job.layout, {job.range}, 0, 0, kTimeout);
    std::vector<float> w(keys), g(keys, 1.0f);
    c.pull(0, w.data());
    phase = 1;
    while (phase.load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    c.push(0, g.data(), true);
    c.awaitWeights(1, w.data());
    c.waitPushes();
    c.done();
  });
  std::thread b([&] {  // three zero gradients first: versions 1, 2, 3
    ps::PsClient c(*job.ts[2], job.layout, {job.range}, 1, 0, kTimeout);
    std::vector<float> w(keys), g(keys, 0.0f);
    while (phase.load() != 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    c.pull(0, w.data());
    for (int k = 0; k < 3; ++k) {
      c.push(k, g.data(), true);
      c.awaitWeights(k + 1, w.data());
      c.waitPushes();
    }
    phase = 2;
    c.done();
  });
  a.join();
  b.join();
  th.join();
  EXPECT_EQ(job.server->stats().version, 4);
  EXPECT_EQ(job.server->stats().maxStaleness, 3);
  for (float x : job.server->weights()) EXPECT_FLOAT_EQ(x, -0.25f);  // 1 / (3 + 1)
}

TEST(ConSgd, ScalesEveryUpdateByOneOverTheNumberOfWorkers) {
  const int64_t keys = 16;
  OneShard job(4, sync::makePolicy("consgd", 0), keys);
  std::thread th([&] { job.server->run(-1); });
  std::vector<std::thread> ws;
  for (int w = 0; w < 4; ++w) ws.emplace_back([&, w] { runClient(job, w, 5, 1.0f); });
  for (auto& t : ws) t.join();
  th.join();
  EXPECT_EQ(job.server->stats().version, 20);
  for (float x : job.server->weights()) EXPECT_FLOAT_EQ(x, -5.0f);  // 20 updates x 1/4
}

// Sync-opt with 3 workers and 1 backup: a round takes the first 2 pushes; a slow worker's late
// pushes are dropped and counted; every push is either applied or dropped.
TEST(SyncOpt, AppliesExactlyNOfNPlusBGradientsPerRoundAndCountsTheDropped) {
  const int64_t keys = 8;
  const int steps = 30;
  OneShard job(3, sync::makePolicy("syncopt", 0, 1), keys);
  std::vector<int64_t> perUpdate;  // gradients in each applied update while all 3 were active
  int64_t lastGradients = 0;
  job.o.afterApply = [&] {
    const int64_t g = job.server->stats().gradients;
    if (job.server->activeClients() == 3) perUpdate.push_back(g - lastGradients);
    lastGradients = g;
  };
  job.server = std::make_unique<ps::Server>(*job.ts[0], job.layout, job.o, *job.policy, job.be,
                                            std::vector<float>(keys, 0.0f));
  std::thread th([&] { job.server->run(-1); });
  std::vector<std::thread> ws;
  for (int w = 0; w < 3; ++w)
    ws.emplace_back([&, w] {
      runClient(job, w, steps, 1.0f, [w](int) {
        if (w == 2) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // the straggler
      });
    });
  for (auto& t : ws) t.join();
  th.join();
  const ps::ServerStats& s = job.server->stats();
  EXPECT_EQ(s.gradients + s.dropped, 3 * steps);  // none lost, none twice
  EXPECT_GT(s.dropped, 0);
  ASSERT_FALSE(perUpdate.empty());
  for (int64_t n : perUpdate) EXPECT_EQ(n, 2);  // N = 3 - 1 per round
  // The weights saw exactly the applied gradients (lr 1, ones).
  for (float x : job.server->weights()) EXPECT_FLOAT_EQ(x, -static_cast<float>(s.gradients));
}


TEST(Projection, AWorkerSlowedThreeTimesIsAStragglerWithinAFewIterations) {
  sync::StragglerProjection slow(0.2), fast(0.2);
  const double median = 0.010;  // what the servers report: the other workers' step time
  int firstSlow = -1;
  for (int k = 0; k < 30; ++k) {
    slow.observe(0.030 * (1.0 + 0.05 * ((k % 3) - 1)));  // 3x, with some noise
    fast.observe(0.0095);
    if (slow.classify(median) == sync::WorkerClass::kStraggler && firstSlow < 0) firstSlow = k;
    EXPECT_NE(fast.classify(median), sync::WorkerClass::kStraggler);
  }
  EXPECT_GE(firstSlow, 0);
  EXPECT_LE(firstSlow, 2);
  EXPECT_EQ(slow.count(sync::WorkerClass::kStraggler), 30 - firstSlow);
  EXPECT_EQ(fast.count(sync::WorkerClass::kPioneer), 30);
  // Unknown until the servers have a median; the stall warning comes at 20 in a row, then
  // every 200.
  sync::StragglerProjection p(0.2);
  p.observe(0.03);
  EXPECT_EQ(p.classify(0), sync::WorkerClass::kUnknown);
  int warnings = 0;
  for (int k = 0; k < 420; ++k) {
    p.observe(0.03);
    p.classify(0.01);
    warnings += p.warnNow() ? 1 : 0;
  }
  EXPECT_EQ(warnings, 3);  // at 20, 220, 420
}

}  // namespace
}  // namespace phx
