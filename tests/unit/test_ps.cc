// The parameter-server protocol and the sync rules, with ranks as threads over the in-process
// transport (no MPI): BSP applies exactly one gradient per worker per step, SSP never lets a
// worker run more than s clocks ahead of the slowest, ASP never blocks a worker on another,
// malformed messages are rejected and never applied, and whole training jobs agree across
// server counts and worker groups.
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
#include "runtime/train/dist_trainer.h"
#include "recovery/detector.h"
#include "recovery/view.h"
#include "runtime/transport/inproc/inproc_transport.h"
#include "tests/unit/toy_data.h"

namespace phx {
namespace {

using transport::Header;
using transport::InprocFabric;
using transport::InprocTransport;
using transport::MsgType;

constexpr double kTimeout = 20.0;

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
  job.run([&](int w, ps::PsClient& c) {
    std::vector<float> params(8), grad(8, 0.01f);
    c.pull(0, params.data());
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

// Whole training jobs over the in-process transport: every rank a thread running
// runDistributed, as mpirun would run them.
train::TrainResult runJob(int ranks, const Config& cfg, const data::FashionMnist& fm) {
  InprocFabric fabric(ranks);
  std::vector<std::thread> th;
  std::vector<std::exception_ptr> errs(ranks);
  std::vector<train::TrainResult> res(ranks);
  for (int r = 0; r < ranks; ++r)
    th.emplace_back([&, r] {
      try {
        InprocTransport t(fabric, r);
        res[r] = train::runDistributed(cfg, t, &fm);
      } catch (...) {
        errs[r] = std::current_exception();
      }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
  return res[cfg.servers * (1 + cfg.replicas) + cfg.spares];  // the chief's
}

Config jobConfig() {
  Config c;
  c.model = "mlp";
  c.device = "cpu";
  c.threads = 1;
  c.batch = 16;
  c.steps = 30;
  c.evalBatch = 64;
  c.lr = 0.01;
  c.momentum = 0.9;
  c.logLevel = "warn";
  c.peerTimeoutS = kTimeout;
  return c;
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


// Chain replication over the in-process transport: a head and one replica, two ASP workers.
// The replica applies every forwarded update itself; at the end its state must be
// bit-identical to the head's, and no pull reply (the push's acknowledgement) may have been
// sent before the tail had that update.
TEST(Chain, SyncReplicaIsBitIdenticalAndAcknowledgesEveryUpdate) {
  const int workers = 2, steps = 40;
  const int64_t keys = 1000;
  ps::RoleLayout layout(2 + workers, 1, 1, 0, 1);
  InprocFabric fabric(layout.worldSize());
  std::vector<std::unique_ptr<InprocTransport>> ts;
  for (int r = 0; r < layout.worldSize(); ++r) ts.push_back(std::make_unique<InprocTransport>(fabric, r));
  auto policy = sync::makePolicy("asp", 0);
  ps::ServerOptions o;
  o.shard = 0;
  o.range = ps::KeyRange{0, keys};
  o.clients = workers;
  o.sgd = kernels::SgdParams{0.05f, 0.9f, 0.0f, false};
  o.timeoutS = kTimeout;
  o.chain = ps::ServerOptions::Chain::kSync;
  kernels::CpuBackend be0(1), be1(1);
  ps::Server head(*ts[0], layout, o, *policy, be0, std::vector<float>(keys, 0.5f));
  ps::Server replica(*ts[1], layout, o, *policy, be1, std::vector<float>(keys, 0.5f));
  replica.setHead(false);
  replica.setHasState(false);
  replica.setChain(0, -1);
  head.setChain(0, 1);  // sends the whole state first
  std::vector<int64_t> ackedSeen;
  std::mutex mu;
  std::thread th([&] { head.run(-1); });
  std::thread tr([&] { replica.run(-1); });
  std::vector<std::thread> ws;
  for (int w = 0; w < workers; ++w)
    ws.emplace_back([&, w] {
      const int rank = layout.workerRank(w);
      ps::PsClient c(*ts[rank], layout, {o.range}, w, 0, kTimeout);
      std::vector<float> params(keys), grads(keys);
      c.pull(0, params.data());
      for (int k = 0; k < steps; ++k) {
        for (int64_t i = 0; i < keys; ++i) grads[i] = 0.01f * static_cast<float>((i * 7 + k * 3 + w) % 11) - 0.05f;
        c.push(k, grads.data(), true);
        c.awaitWeights(k + 1, params.data());
        c.waitPushes();
        std::lock_guard<std::mutex> lock(mu);
        ackedSeen.push_back(c.version(0));
      }
      c.done();
    });
  for (auto& t : ws) t.join();
  th.join();
  // The chief releases the replica.
  Header rel;
  rel.type = MsgType::kDone;
  ts[layout.chiefRank()]->waitSend(ts[layout.chiefRank()]->send(1, rel, nullptr), kTimeout);
  tr.join();
  EXPECT_EQ(head.stats().version, workers * steps);
  EXPECT_EQ(replica.stats().version, head.stats().version);
  EXPECT_EQ(replica.stats().gradients, head.stats().gradients);
  EXPECT_EQ(replica.weights(), head.weights());    // bit-identical, momentum too
  EXPECT_EQ(replica.momentum(), head.momentum());
  EXPECT_EQ(head.chainAcked(), head.stats().version);
  // A reply reports the acknowledged version: never more than the tail had applied.
  for (int64_t v : ackedSeen) EXPECT_LE(v, replica.stats().version);
}

TEST(View, ChainPromotesTheFirstBackupAndASpareJoinsTheTail) {
  ps::RoleLayout layout(8, 1, 2, 1, 1);  // head 0, backups 1 2, spare 3, workers 4..7
  recovery::View v = recovery::initialView(layout);
  ASSERT_EQ(v.backups[0], (std::vector<int>{1, 2}));
  EXPECT_EQ(v.successorOf(0, 0), 1);
  EXPECT_EQ(v.successorOf(0, 2), -1);
  const std::vector<double> none(8, 0.0);
  recovery::View n = recovery::nextView(v, layout, {0}, 1, 1.0, none, none);
  EXPECT_EQ(n.shardRank[0], 1);                      // promoted
  EXPECT_EQ(n.backups[0], (std::vector<int>{2, 3}));  // the spare joins at the tail
  EXPECT_TRUE(n.spares.empty());
  ASSERT_EQ(n.failures.size(), 1u);
  EXPECT_EQ(n.failures[0].replacedBy, 1);
  EXPECT_EQ(n.failures[0].promoted, 1);
  // A middle member dies: its predecessor now forwards to the tail.
  recovery::View m = recovery::nextView(n, layout, {2}, 1, 2.0, none, none);
  EXPECT_EQ(m.shardRank[0], 1);
  EXPECT_EQ(m.backups[0], (std::vector<int>{3}));
  EXPECT_EQ(m.successorOf(0, 1), 3);
  EXPECT_EQ(m.failures.back().backupOf, 0);
  // Head and its only backup die at once (a failure during the rebuild): the shard is lost.
  recovery::View z = recovery::nextView(m, layout, {1, 3}, 4, 3.0, none, none);
  EXPECT_EQ(z.shardRank[0], -1);
  // Views survive serialisation.
  const auto bytes = m.serialize();
  const recovery::View p = recovery::View::parse(bytes.data(), bytes.size());
  EXPECT_EQ(p.backups, m.backups);
  EXPECT_EQ(p.shardRank, m.shardRank);
}

// A transport that passes everything through and lets a test play the MPI library reporting a
// failed process (ULFM's MPIX_ERR_PROC_FAILED), the detector's second source.
class ReportingTransport final : public transport::Transport {
 public:
  explicit ReportingTransport(transport::Transport& inner) : in_(inner) {}
  int rank() const override { return in_.rank(); }
  int size() const override { return in_.size(); }
  transport::SendId send(int dst, const Header& h, const void* p) override { return in_.send(dst, h, p); }
  bool sendDone(transport::SendId id) override { return in_.sendDone(id); }
  bool poll(MsgType type, Header* h, int* src) override { return in_.poll(type, h, src); }
  void recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) override {
    in_.recvPayload(src, type, dst, bytes, timeoutS);
  }
  void markDead(int r) override { in_.markDead(r); }
  std::vector<int> reportedFailures() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int> out;
    out.swap(reported_);
    return out;
  }
  void report(int r) {
    std::lock_guard<std::mutex> lock(mu_);
    reported_.push_back(r);
  }

 private:
  transport::Transport& in_;
  std::mutex mu_;
  std::vector<int> reported_;
};

// Waits up to `seconds` for pred; returns the seconds it took (or a negative number).
template <class P>
double waitUntil(double seconds, P pred) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (pred()) return el;
    if (el > seconds) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST(Detector, HeartbeatsCatchASilentRankAndEveryoneInstallsTheSameView) {
  ps::RoleLayout layout(4, 1, 0, 1, 1);  // server 0, spare 1, workers 2-3
  InprocFabric fabric(4);
  std::vector<std::unique_ptr<InprocTransport>> ts;
  std::vector<std::unique_ptr<recovery::FailureDetector>> det;
  for (int r = 0; r < 4; ++r) {
    ts.push_back(std::make_unique<InprocTransport>(fabric, r));
    det.push_back(std::make_unique<recovery::FailureDetector>(*ts[r], layout,
                                                               recovery::DetectorOptions{0.01, 0.3}));
  }
  for (auto& d : det) d->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  det[0]->haltForTest();  // the server (and coordinator) dies without a word
  const double took = waitUntil(5.0, [&] {
    for (int r = 1; r < 4; ++r)
      if (det[r]->view().isAlive(0)) return false;
    return true;
  });
  ASSERT_GT(took, 0.0) << "the dead coordinator was not declared";
  EXPECT_GE(took, 0.2);  // not before the timeout
  const recovery::View v = det[1]->view();
  EXPECT_EQ(v.shardRank[0], 1);  // the spare takes the shard
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0].rank, 0);
  for (int r = 2; r < 4; ++r) {
    EXPECT_EQ(det[r]->view().epoch, v.epoch);
    EXPECT_EQ(det[r]->view().shardRank, v.shardRank);
  }
  for (int r = 1; r < 4; ++r) det[r]->leave();
}

TEST(Detector, AFailureTheLibraryReportsIsDeclaredWithoutWaitingForTheTimeout) {
  ps::RoleLayout layout(4, 1, 0, 0, 1);
  InprocFabric fabric(4);
  std::vector<std::unique_ptr<InprocTransport>> ts;
  for (int r = 0; r < 4; ++r) ts.push_back(std::make_unique<InprocTransport>(fabric, r));
  ReportingTransport reporting(*ts[0]);
  std::vector<std::unique_ptr<recovery::FailureDetector>> det;
  const recovery::DetectorOptions opt{0.01, 5.0};  // heartbeats alone would take 5 s
  det.push_back(std::make_unique<recovery::FailureDetector>(reporting, layout, opt));
  for (int r = 1; r < 4; ++r) det.push_back(std::make_unique<recovery::FailureDetector>(*ts[r], layout, opt));
  for (auto& d : det) d->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  det[3]->haltForTest();
  reporting.report(3);  // the coordinator's MPI says rank 3 failed
  const double took = waitUntil(2.0, [&] { return !det[1]->view().isAlive(3); });
  ASSERT_GT(took, 0.0) << "the reported failure was not declared within 2 s";
  EXPECT_LT(took, 1.0);
  for (int r = 0; r < 3; ++r) det[r]->leave();
}

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
  for (int w = 0; w < 4; ++w)
    ws.emplace_back([&, w] {
      ps::PsClient c(*job.ts[1 + w], job.layout, {job.range}, w, 0, kTimeout);
      std::vector<float> p(keys), g(keys, 1.0f);
      c.pull(0, p.data());
      for (int k = 0; k < 5; ++k) {
        c.push(k, g.data(), true);
        c.awaitWeights(k + 1, p.data());
        c.waitPushes();
      }
      c.done();
    });
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
      ps::PsClient c(*job.ts[1 + w], job.layout, {job.range}, w, 0, kTimeout);
      std::vector<float> p(keys), g(keys, 1.0f);
      c.pull(0, p.data());
      for (int k = 0; k < steps; ++k) {
        if (w == 2) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // the straggler
        c.push(k, g.data(), true);
        c.awaitWeights(k + 1, p.data());
        c.waitPushes();
      }
      c.done();
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

}  // namespace
}  // namespace phx
