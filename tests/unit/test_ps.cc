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
#include "runtime/ps/job_spec.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/train/dist_trainer.h"
#include "runtime/train/worker_loop.h"
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

TEST(JobSpec, RoundTripsAndRejectsMalformedBytes) {
  ps::JobSpec s;
  s.params = 3;
  s.totalSteps = 40;
  s.init = {0.5f, -1.0f, 2.0f};
  const std::vector<unsigned char> b = s.serialize();
  const ps::JobSpec t = ps::JobSpec::parse(b.data(), b.size());
  EXPECT_EQ(t.params, 3);
  EXPECT_EQ(t.totalSteps, 40);
  EXPECT_EQ(t.init, s.init);
  EXPECT_THROW(ps::JobSpec::parse(b.data(), b.size() - 1), UserError);  // truncated
  EXPECT_THROW(ps::JobSpec::parse(b.data(), 8), UserError);
  std::vector<unsigned char> neg = b;
  neg[0] = 0xff;  // a parameter count that does not match the bytes
  EXPECT_THROW(ps::JobSpec::parse(neg.data(), neg.size()), UserError);
}

TEST(JobSpec, TheServerSideTakesTheSetupOnlyFromTheChief) {
  // 1 server, 2 workers: rank 0 serves, rank 1 is the chief, rank 2 a worker.
  const ps::RoleLayout layout(3, 1, 0, 0, 1);
  InprocFabric fabric(3);
  InprocTransport server(fabric, 0), chief(fabric, 1), other(fabric, 2);
  ps::JobSpec s;
  s.params = 4;
  s.totalSteps = 7;
  s.init = {1, 2, 3, 4};
  ps::sendSpec(chief, layout, s, kTimeout);
  const ps::JobSpec got = ps::receiveSpec(server, layout, kTimeout);
  EXPECT_EQ(got.params, 4);
  EXPECT_EQ(got.totalSteps, 7);
  EXPECT_EQ(got.init, s.init);
  // a setup from a worker that is not the chief is refused with a clear error
  Header h;
  h.type = MsgType::kSetup;
  h.offset = 4;
  h.clock = 7;
  h.bytes = 16;
  other.send(0, h, s.init.data());
  try {
    ps::receiveSpec(server, layout, kTimeout);
    ADD_FAILURE() << "a setup from rank 2 was taken";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("malformed job setup from rank 2"), std::string::npos) << e.what();
  }
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


// A model the servers have never seen: 0.5 |w - w*|^2 over 20 parameters, trained by the
// caller's own loop (the path of the library API and the Python module). Every rank runs as a
// thread; the workers drive WorkerLoop::begin/step/end themselves.
struct ExternalRun {
  train::TrainResult res;
  std::vector<float> finalWeights;
};
ExternalRun runExternal(int ranks, const Config& cfg, const std::vector<float>& target) {
  InprocFabric fabric(ranks);
  std::vector<std::thread> th;
  std::vector<std::exception_ptr> errs(ranks);
  ExternalRun out;
  const int chief = cfg.servers * (1 + cfg.replicas) + cfg.spares;
  train::ExternalModel m;
  m.params = static_cast<int64_t>(target.size());
  m.init.assign(target.size(), 0.0f);
  m.totalSteps = 30;
  m.name = "quadratic";
  m.evaluate = [&target](const float* w) {
    double d = 0;
    for (size_t k = 0; k < target.size(); ++k) d += (w[k] - target[k]) * (w[k] - target[k]);
    return train::EvalResult{d < 1e-2 ? 1.0 : 0.0, d};
  };
  for (int r = 0; r < ranks; ++r)
    th.emplace_back([&, r] {
      try {
        InprocTransport t(fabric, r);
        train::DistJob job(cfg, t, nullptr, nullptr);
        if (!job.isWorker()) {
          job.serve();
        } else {
          auto loop = job.externalWorker(m);
          loop->begin();
          for (int64_t step = loop->startStep(); step < loop->totalSteps(); ++step) {
            const float* w = loop->hostParams();
            float* g = loop->hostGrads();
            double loss = 0;
            for (size_t k = 0; k < target.size(); ++k) {
              g[k] = w[k] - target[k];
              loss += 0.5 * g[k] * g[k];
            }
            if (!loop->step(step, 1, loss)) break;
          }
          auto res = loop->end();
          if (r == chief) {
            out.res = res;
            out.finalWeights.assign(loop->hostParams(), loop->hostParams() + target.size());
          }
        }
        job.finish();
      } catch (...) {
        errs[r] = std::current_exception();
      }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
  return out;
}

TEST(ExternalModel, ServersTrainAModelTheyNeverSaw) {
  std::vector<float> target(20);
  for (size_t k = 0; k < target.size(); ++k) target[k] = 0.1f * static_cast<float>(k) - 1.0f;
  Config c = jobConfig();
  c.model = "mlp";  // (never built: the external model replaces it)
  c.lr = 0.1;
  c.momentum = 0;
  c.servers = 1;
  const ExternalRun one = runExternal(3, c, target);  // 1 server, 2 workers
  c.servers = 2;
  const ExternalRun two = runExternal(4, c, target);  // the same over 2 shards
  ASSERT_EQ(one.finalWeights.size(), target.size());
  EXPECT_EQ(one.finalWeights, two.finalWeights) << "sharding changed the result";
  double d = 0;
  for (size_t k = 0; k < target.size(); ++k) d += (one.finalWeights[k] - target[k]) * (one.finalWeights[k] - target[k]);
  EXPECT_LT(d, 1e-2) << "the servers did not apply the caller's gradients";
  EXPECT_EQ(one.res.summary.updatesApplied, 30);
  EXPECT_EQ(one.res.summary.finalTestAccuracy, 1.0);  // the caller's evaluation of the final weights
  std::string model, params;
  for (const auto& [k, v] : one.res.summary.extra) {
    if (k == "model") model = v;
    if (k == "parameters") params = v;
  }
  EXPECT_EQ(model, "\"quadratic\"");
  EXPECT_EQ(params, "20");
}

TEST(ExternalModel, BadUseIsAClearError) {
  Config c = jobConfig();
  train::ExternalModel m;
  m.params = 4;
  m.init.assign(4, 0.0f);
  m.totalSteps = 2;
  auto why = [&](const Config& cfg, const train::ExternalModel& model) {
    try {
      train::checkExternalModel(cfg, model);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(why(c, m), "accepted");
  c.sync = "epsp";
  EXPECT_NE(why(c, m).find("only Phoenix's own models"), std::string::npos);
  c.sync = "bsp";
  m.init.resize(3);  // fewer initial values than parameters
  EXPECT_NE(why(c, m).find("3 initial values"), std::string::npos);
  m.init.resize(4);
  m.totalSteps = 0;
  EXPECT_NE(why(c, m).find("at least one step"), std::string::npos);
}

}  // namespace
}  // namespace phx
