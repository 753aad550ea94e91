// The parameter-server protocol and the sync rules, with ranks as threads over the in-process
// transport (no MPI): BSP applies exactly one gradient per worker per step, SSP never lets a
// worker run more than s clocks ahead of the slowest, ASP never blocks a worker on another,
// malformed messages are rejected and never applied, and whole training jobs agree across
// server counts and worker groups.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "kernels/cpu/cpu_backend.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/train/dist_trainer.h"
#include "tests/unit/inproc_test.h"
#include "tests/unit/toy_data.h"

namespace phx {
namespace {

using namespace phx::inproc_test;  // NOLINT(google-build-using-namespace): the inproc test kit

TEST(Layout, RolesInRankOrder) {
  const ps::RoleLayout l(9, 2, 1, 1, 2);  // 2 servers, 2 replicas, 1 spare, 4 workers
  EXPECT_EQ(l.roleOf(0), ps::Role::kServer);
  EXPECT_EQ(l.roleOf(1), ps::Role::kServer);
  EXPECT_EQ(l.roleOf(2), ps::Role::kReplica);
  EXPECT_EQ(l.roleOf(3), ps::Role::kReplica);
  EXPECT_EQ(l.roleOf(4), ps::Role::kSpare);
  EXPECT_EQ(l.roleOf(5), ps::Role::kWorker);
  EXPECT_EQ(l.workers(), 4);
  EXPECT_EQ(l.groups(), 2);
  EXPECT_EQ(l.chiefRank(), 5);
  EXPECT_EQ(l.workerRank(l.leaderOf(1)), 7);
  EXPECT_EQ(l.groupEnd(1), 4);
}

TEST(Layout, ImpossibleCombinationsAreClearErrors) {
  auto msg = [](std::function<void()> f) {
    try {
      f();
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] { ps::RoleLayout(3, 0, 0, 0, 1); }).find("--servers 0"), std::string::npos);
  EXPECT_NE(msg([] { ps::RoleLayout(2, 2, 0, 0, 1); }).find("no worker"), std::string::npos);
  EXPECT_NE(msg([] { ps::RoleLayout(3, 1, 1, 1, 1); }).find("mpirun -n 4"), std::string::npos);
  EXPECT_NE(msg([] { ps::RoleLayout(4, 1, 0, 0, 4); }).find("--group-size"), std::string::npos);
}

TEST(Layout, KeyRangesAreContiguousAndBalanced) {
  const auto r = ps::splitKeys(10, 3);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].lo, 0);
  EXPECT_EQ(r[2].hi, 10);
  for (int i = 0; i < 3; ++i) {
    if (i) {
      EXPECT_EQ(r[i].lo, r[i - 1].hi);
    }
    EXPECT_GE(r[i].size(), 3);
    EXPECT_LE(r[i].size(), 4);
  }
}

// A small job of S server threads and W worker threads running `workerFn` against the servers.
struct Job {
  Job(int servers, int workers, const std::string& sync, int staleness, int64_t keys)
      : layout(servers + workers, servers, 0, 0, 1), fabric(servers + workers),
        policy(sync::makePolicy(sync, staleness)), ranges(ps::splitKeys(keys, servers)) {
    for (int r = 0; r < servers + workers; ++r)
      ts.push_back(std::make_unique<InprocTransport>(fabric, r));
    for (int s = 0; s < servers; ++s) {
      ps::ServerOptions o;
      o.shard = s;
      o.range = ranges[s];
      o.clients = workers;
      o.sgd = kernels::SgdParams{1.0f, 0.0f, 0.0f, false};  // w -= g: updates are countable
      o.timeoutS = kTimeout;
      backends.push_back(std::make_unique<kernels::CpuBackend>(1));
      servers_.push_back(std::make_unique<ps::Server>(*ts[s], layout, o, *policy, *backends.back(),
                                                      std::vector<float>(ranges[s].size(), 0.0f)));
    }
  }
  // Runs every server loop and workerFn(worker, client) on its own thread; rethrows failures.
  void run(const std::function<void(int, ps::PsClient&)>& workerFn) {
    std::vector<std::thread> th;
    std::vector<std::exception_ptr> errs(layout.worldSize());
    for (int s = 0; s < layout.servers(); ++s)
      th.emplace_back([&, s] {
        try {
          servers_[s]->run(-1);
        } catch (...) {
          errs[s] = std::current_exception();
        }
      });
    for (int w = 0; w < layout.workers(); ++w)
      th.emplace_back([&, w] {
        const int rank = layout.workerRank(w);
        try {
          ps::PsClient c(*ts[rank], layout, ranges, w, 0, kTimeout);
          workerFn(w, c);
          c.done();
        } catch (...) {
          errs[rank] = std::current_exception();
        }
      });
    for (auto& t : th) t.join();
    for (auto& e : errs)
      if (e) std::rethrow_exception(e);
  }
  ps::RoleLayout layout;
  InprocFabric fabric;
  std::unique_ptr<sync::SyncPolicy> policy;
  std::vector<ps::KeyRange> ranges;
  std::vector<std::unique_ptr<InprocTransport>> ts;
  std::vector<std::unique_ptr<kernels::Backend>> backends;
  std::vector<std::unique_ptr<ps::Server>> servers_;
};

TEST(Bsp, AppliesExactlyOneGradientPerWorkerPerStep) {
  // Worker w's gradient is 1 on the keys j with j % W == w, so each round lowers every key by
  // exactly 1 if and only if it holds exactly one gradient of every worker.
  constexpr int W = 3, kSteps = 25;
  constexpr int64_t kKeys = 12;
  Job job(2, W, "bsp", 0, kKeys);
  job.run([&](int w, ps::PsClient& c) {
    std::vector<float> params(kKeys, -1.0f), grad(kKeys, 0.0f);
    c.pull(0, params.data());
    for (int64_t j = 0; j < kKeys; ++j) grad[j] = j % W == w ? 1.0f : 0.0f;
    for (int step = 0; step < kSteps; ++step) {
      for (float p : params) ASSERT_EQ(p, -static_cast<float>(step)) << "worker " << w;
      if (w == 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a slow one
      c.push(step, grad.data(), true);
      c.awaitWeights(step + 1, params.data());
      c.waitPushes();
      EXPECT_EQ(c.minVersion(), step + 1);
    }
  });
  for (auto& s : job.servers_) {
    EXPECT_EQ(s->stats().version, kSteps);
    EXPECT_EQ(s->stats().gradients, W * kSteps);
    EXPECT_EQ(s->stats().maxLead, 0);
    EXPECT_EQ(s->stats().rejected, 0);
    for (float v : s->weights()) EXPECT_EQ(v, -static_cast<float>(kSteps));
  }
}

TEST(Ssp, NoWorkerRunsMoreThanSClocksAheadOfTheSlowest) {
  constexpr int W = 3, kSteps = 30, kS = 2;
  Job job(1, W, "ssp", kS, 8);
  std::atomic<int64_t> pushed[W] = {};
  std::atomic<int64_t> worstLead{-1000};
  job.run([&](int w, ps::PsClient& c) {
    std::vector<float> params(8), grad(8, 0.001f);
    c.pull(0, params.data());
    for (int64_t k = 0; k < kSteps; ++k) {
      // Starting clock k: every other worker must have pushed at least k - s gradients.
      int64_t slowest = kSteps;
      for (int o = 0; o < W; ++o) slowest = std::min<int64_t>(slowest, pushed[o].load());
      int64_t lead = k - slowest, seen = worstLead.load();
      while (lead > seen && !worstLead.compare_exchange_weak(seen, lead)) {}
      EXPECT_LE(lead, kS) << "worker " << w << " started clock " << k;
      if (w == W - 1) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // straggler
      c.push(k, grad.data(), true);
      ++pushed[w];
      c.awaitWeights(k + 1, params.data());
      c.waitPushes();
    }
  });
  const auto& st = job.servers_[0]->stats();
  EXPECT_EQ(st.version, W * kSteps);  // every gradient applied on its own
  EXPECT_LE(st.maxLead, kS);
  EXPECT_EQ(st.maxLead, kS) << "the fast workers should have reached the bound";
  EXPECT_LE(worstLead.load(), kS);
}

TEST(Asp, NeverBlocksAWorkerOnAnother) {
  // Worker 1 stalls inside its second step until worker 0 has finished all of its steps. Any
  // rule that made worker 0 wait for worker 1 would deadlock here (and time out).
  constexpr int kSteps = 40;
  Job job(1, 2, "asp", 0, 8);
  std::atomic<bool> fastDone{false};
  std::atomic<bool> waitedTooLong{false};
  std::atomic<bool> slowStarted{false};
  job.run([&](int w, ps::PsClient& c) {
    std::vector<float> params(8), grad(8, 0.01f);
    c.pull(0, params.data());
    // both start from the same weights (on a loaded machine worker 0 could otherwise finish
    // before worker 1 even pulled, and nothing would be stale)
    if (w == 1) slowStarted = true;
    const auto start = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (w == 0 && !slowStarted && std::chrono::steady_clock::now() < start)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (int64_t k = 0; k < kSteps; ++k) {
      if (w == 1 && k == 1) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!fastDone && std::chrono::steady_clock::now() < until)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (!fastDone) waitedTooLong = true;
      }
      c.push(k, grad.data(), true);
      c.awaitWeights(k + 1, params.data());
      c.waitPushes();
    }
    if (w == 0) fastDone = true;
  });
  EXPECT_FALSE(waitedTooLong) << "worker 0 could not finish while worker 1 stalled";
  const auto& st = job.servers_[0]->stats();
  EXPECT_EQ(st.version, 2 * kSteps);
  EXPECT_GE(st.maxLead, kSteps - 1);  // worker 0 ran a whole run ahead
  EXPECT_GT(st.maxStaleness, 0);
}

TEST(Server, MalformedMessagesAreRejectedAndNeverApplied) {
  Job job(1, 2, "asp", 0, 6);
  ps::Server& srv = *job.servers_[0];
  InprocTransport& w0 = *job.ts[job.layout.workerRank(0)];
  std::vector<float> grad(6, 1.0f);
  auto push = [&](auto mutate) {
    Header h;
    h.type = MsgType::kPush;
    h.shard = 0;
    h.client = 0;
    h.offset = 0;
    h.bytes = 6 * sizeof(float);
    mutate(h);
    w0.send(0, h, grad.data());
    srv.step();
  };
  push([](Header& h) { h.magic = 0xdeadbeef; });
  push([](Header& h) { h.shard = 3; });
  push([](Header& h) { h.epoch = -1; });  // older than the server's epoch (a dead server's era)
  push([](Header& h) { h.client = 1; });  // client 1 speaking from worker 0's rank
  push([](Header& h) { h.offset = 2; });
  push([](Header& h) { h.clock = 5; });   // out of order: client 0 is at clock 0
  std::vector<float> big(60, 1.0f);
  Header h;
  h.type = MsgType::kPush;
  h.shard = 0;
  h.client = 0;
  h.bytes = 60 * sizeof(float);  // wrong size
  w0.send(0, h, big.data());
  srv.step();
  EXPECT_EQ(srv.stats().rejected, 7);
  EXPECT_EQ(srv.stats().version, 0);
  for (float v : srv.weights()) EXPECT_EQ(v, 0.0f);
  // A well-formed push still goes through after all that.
  push([](Header&) {});
  EXPECT_EQ(srv.stats().version, 1);
  for (float v : srv.weights()) EXPECT_EQ(v, -1.0f);
}

TEST(Bsp, ARoundWaitsForTheSurvivorsWhenClientsThatPushedDie) {
  // Three clients; clients 1 and 2 push round 0 and then die (a whole host of workers lost).
  // The round must still wait for client 0, and take its push for round 0, not reject it.
  Job job(1, 3, "bsp", 0, 4);
  ps::Server& srv = *job.servers_[0];
  std::vector<float> grad(4, 1.0f);
  auto push = [&](int client) {
    Header h;
    h.type = MsgType::kPush;
    h.shard = 0;
    h.client = client;
    h.clock = 0;
    h.bytes = 4 * sizeof(float);
    job.ts[job.layout.workerRank(client)]->send(0, h, grad.data());
    srv.step();
  };
  push(1);
  push(2);
  EXPECT_EQ(srv.stats().version, 0);
  srv.dropClient(1);
  EXPECT_EQ(srv.stats().version, 0) << "the round closed on a dead client's push";
  srv.dropClient(2);
  EXPECT_EQ(srv.stats().version, 0) << "the round closed without the surviving client";
  push(0);
  EXPECT_EQ(srv.stats().rejected, 0);
  EXPECT_EQ(srv.stats().version, 1);
  for (float v : srv.weights()) EXPECT_EQ(v, -3.0f);  // the three gradients, summed once
}

TEST(DistributedTraining, BspLearnsAndAgreesAcrossServerCounts) {
  const auto fm = toyData(256);
  Config c = jobConfig();
  c.servers = 1;
  const auto one = runJob(3, c, fm);  // 1 server, 2 workers
  c.servers = 2;
  const auto two = runJob(4, c, fm);  // 2 servers, 2 workers
  EXPECT_GT(one.summary.finalTestAccuracy, 0.9);
  EXPECT_EQ(one.summary.updatesApplied, c.steps);
  // Two gradients sum the same either way and SGD is element-wise: the same weights.
  EXPECT_EQ(one.finalTestLoss, two.finalTestLoss);
  EXPECT_EQ(one.summary.finalTestAccuracy, two.summary.finalTestAccuracy);
}

TEST(DistributedTraining, WorkerGroupReducesLikeSeparateWorkers) {
  const auto fm = toyData(256);
  Config c = jobConfig();
  const auto separate = runJob(3, c, fm);  // 2 clients of one worker each
  c.groupSize = 2;
  const auto grouped = runJob(3, c, fm);  // 1 client: a group of 2
  EXPECT_EQ(separate.finalTestLoss, grouped.finalTestLoss);
  EXPECT_EQ(grouped.summary.updatesApplied, c.steps);
}

TEST(DistributedTraining, AspAndSspLearn) {
  const auto fm = toyData(256);
  for (const char* mode : {"asp", "ssp"}) {
    Config c = jobConfig();
    c.sync = mode;
    c.staleness = 1;
    const auto r = runJob(4, c, fm);  // 1 server, 3 workers
    EXPECT_GT(r.summary.finalTestAccuracy, 0.9) << mode;
    EXPECT_EQ(r.summary.updatesApplied, 3 * c.steps) << mode;
  }
}


}  // namespace
}  // namespace phx
