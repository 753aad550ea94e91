// Recovery at the protocol level, ranks as threads over the in-process transport: chain
// replication (bit-identical replica, acknowledgement only once the tail has the update), the
// membership views (promotion, tail join, serialisation) and the failure detector (heartbeats,
// a failure the MPI library reports).
#include <gtest/gtest.h>

#include <set>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>

#include "kernels/cpu/cpu_backend.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "recovery/detector.h"
#include "recovery/view.h"
#include "tests/unit/inproc_test.h"

namespace phx {
namespace {

using namespace phx::inproc_test;  // NOLINT(google-build-using-namespace): the inproc test kit

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

TEST(View, NoSpareLeftAsksForAReplacementUnderTheDeadRanksNumber) {
  const std::vector<double> none(6, 0.0);
  {  // checkpoint/stateless layout: server 0, workers 1..5, no spare
    ps::RoleLayout layout(6, 1, 0, 0, 1);
    const recovery::View v = recovery::initialView(layout);
    EXPECT_EQ(recovery::nextView(v, layout, {0}, 1, 1.0, none, none).shardRank[0], -1);
    const recovery::View n = recovery::nextView(v, layout, {0}, 1, 1.0, none, none, true);
    EXPECT_EQ(n.shardRank[0], recovery::kRespawning);
    ASSERT_EQ(n.respawn.size(), 1u);
    EXPECT_EQ(n.respawn[0].rank, 0);
    EXPECT_EQ(n.respawn[0].shard, 0);
    EXPECT_EQ(n.respawn[0].asTail, 0);
    ASSERT_EQ(n.failures.size(), 1u);
    EXPECT_EQ(n.failures[0].spawned, 1);
    EXPECT_EQ(n.failures[0].replacedBy, 0);
    // the view survives serialisation with its respawn list
    const auto bytes = n.serialize();
    const recovery::View p = recovery::View::parse(bytes.data(), bytes.size());
    ASSERT_EQ(p.respawn.size(), 1u);
    EXPECT_EQ(p.respawn[0].rank, 0);
    // started: the rank is alive again and serves the shard, still since the failure's epoch
    const recovery::View up = recovery::afterRespawn(n, 1, true);
    EXPECT_GT(up.epoch, n.epoch);
    EXPECT_TRUE(up.isAlive(0));
    EXPECT_EQ(up.shardRank[0], 0);
    EXPECT_EQ(up.shardSince[0], n.epoch);
    EXPECT_TRUE(up.respawn.empty());
    // not started: the shard is lost
    const recovery::View lost = recovery::afterRespawn(n, 1, false);
    EXPECT_FALSE(lost.isAlive(0));
    EXPECT_EQ(lost.shardRank[0], -1);
    // the replacement dies too: a second replacement, one spawn per kill
    const recovery::View again = recovery::nextView(up, layout, {0}, 1, 2.0, none, none, true);
    ASSERT_EQ(again.respawn.size(), 1u);
    EXPECT_EQ(again.failures.size(), 2u);
  }
  {  // chain: head 0, backup 1, workers 2..5, no spare: promotion, and a new tail is spawned
    ps::RoleLayout layout(6, 1, 1, 0, 1);
    const recovery::View v = recovery::initialView(layout);
    const recovery::View n = recovery::nextView(v, layout, {0}, 2, 1.0, none, none, true);
    EXPECT_EQ(n.shardRank[0], 1);
    EXPECT_EQ(n.failures[0].promoted, 1);
    ASSERT_EQ(n.respawn.size(), 1u);
    EXPECT_EQ(n.respawn[0].rank, 0);
    EXPECT_EQ(n.respawn[0].asTail, 1);
    const recovery::View up = recovery::afterRespawn(n, 2, true);
    EXPECT_EQ(up.shardRank[0], 1);
    EXPECT_EQ(up.backups[0], (std::vector<int>{0}));
    EXPECT_EQ(up.successorOf(0, 1), 0);
  }
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
  EXPECT_EQ(v.failures[0].detectedBy, recovery::kDetectedByHeartbeat);
  for (int r = 2; r < 4; ++r) {
    EXPECT_EQ(det[r]->view().epoch, v.epoch);
    EXPECT_EQ(det[r]->view().shardRank, v.shardRank);
  }
  for (int r = 1; r < 4; ++r) det[r]->leave();
}

// The majority rule with half of the ranks silent at once (a host of two ranks lost in a job
// of four): the half that holds the lowest live rank goes on and declares the other half; the
// other half never declares anyone and leaves after its wait. Two halves never both issue views.
TEST(Detector, HalfTheRanksLostAtOnceGoesOnOnlyOnTheSideOfTheLowestRank) {
  ps::RoleLayout layout(4, 1, 0, 1, 1);  // server 0, spare 1, workers 2-3
  recovery::DetectorOptions opt{0.01, 0.3};
  opt.majority = true;
  opt.minorityWaitS = 0.8;
  for (const bool lowHalfLives : {true, false}) {
    InprocFabric fabric(4);
    std::vector<std::unique_ptr<InprocTransport>> ts;
    std::vector<std::unique_ptr<recovery::FailureDetector>> det;
    for (int r = 0; r < 4; ++r) {
      ts.push_back(std::make_unique<InprocTransport>(fabric, r));
      det.push_back(std::make_unique<recovery::FailureDetector>(*ts[r], layout, opt));
    }
    for (auto& d : det) d->start();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int lost0 = lowHalfLives ? 2 : 0;
    det[lost0]->haltForTest();
    det[lost0 + 1]->haltForTest();
    const int a = lowHalfLives ? 0 : 2, b = a + 1;  // the surviving half
    if (lowHalfLives) {
      const double took = waitUntil(5.0, [&] {
        return !det[a]->view().isAlive(2) && !det[a]->view().isAlive(3) &&
               !det[b]->view().isAlive(2) && !det[b]->view().isAlive(3);
      });
      ASSERT_GT(took, 0.0) << "the half with rank 0 did not declare the other half";
      EXPECT_FALSE(det[a]->fenced());
      EXPECT_FALSE(det[b]->fenced());
      EXPECT_EQ(det[b]->view().epoch, det[a]->view().epoch);
      for (int r : {a, b}) det[r]->leave();
    } else {
      const double took = waitUntil(5.0, [&] { return det[a]->fenced() && det[b]->fenced(); });
      ASSERT_GT(took, 0.0) << "the half without rank 0 did not leave";
      EXPECT_GE(took, opt.minorityWaitS);
      for (int r : {a, b}) {
        EXPECT_EQ(det[r]->view().epoch, 0) << "a minority issued a view";
        EXPECT_TRUE(det[r]->view().isAlive(0));
      }
    }
  }
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
  const recovery::View v = det[1]->view();
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0].detectedBy, recovery::kDetectedByMpi);
  for (int r = 0; r < 3; ++r) det[r]->leave();
}

TEST(Detector, AReportedDeadCoordinatorIsReplacedWithoutWaitingForTheTimeout) {
  ps::RoleLayout layout(4, 1, 0, 1, 1);  // server 0 (the coordinator), spare 1, workers 2-3
  InprocFabric fabric(4);
  std::vector<std::unique_ptr<InprocTransport>> ts;
  for (int r = 0; r < 4; ++r) ts.push_back(std::make_unique<InprocTransport>(fabric, r));
  std::vector<std::unique_ptr<ReportingTransport>> rep;
  std::vector<std::unique_ptr<recovery::FailureDetector>> det;
  const recovery::DetectorOptions opt{0.01, 5.0};
  for (int r = 0; r < 4; ++r) {
    rep.push_back(std::make_unique<ReportingTransport>(*ts[r]));
    det.push_back(std::make_unique<recovery::FailureDetector>(*rep[r], layout, opt));
  }
  for (auto& d : det) d->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  det[0]->haltForTest();
  for (int r = 1; r < 4; ++r) rep[r]->report(0);  // every survivor's MPI names rank 0
  const double took = waitUntil(2.0, [&] {
    for (int r = 1; r < 4; ++r)
      if (det[r]->view().isAlive(0)) return false;
    return true;
  });
  ASSERT_GT(took, 0.0) << "the reported coordinator failure was not declared within 2 s";
  EXPECT_LT(took, 1.0);
  const recovery::View v = det[2]->view();
  EXPECT_EQ(v.issuer, 1);
  EXPECT_EQ(v.shardRank[0], 1);
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0].detectedBy, recovery::kDetectedByMpi);
  for (int r = 1; r < 4; ++r) det[r]->leave();
}


}  // namespace
}  // namespace phx

// Two coordinators that act on the same view at once (one falsely suspected by the other)
// issue views of different epochs, both newer, so every rank installs the same one of them
// (the divergence recovery/model/membership.pml found with plain epoch + 1).
TEST(ViewEpochs, UniquePerIssuerAndIncreasing) {
  const int ranks = 5;
  for (int e : {0, 3, 5, 9, 123}) {
    std::set<int> seen;
    for (int issuer = 0; issuer < ranks; ++issuer) {
      const int n = phx::recovery::nextEpoch(e, issuer, ranks);
      EXPECT_GT(n, e);
      EXPECT_TRUE(seen.insert(n).second) << "epoch " << n << " issued twice after " << e;
      for (int again = 0; again < ranks; ++again) EXPECT_GT(phx::recovery::nextEpoch(n, again, ranks), n);
    }
  }
}
