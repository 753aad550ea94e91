// EPSP and FlexRR over the in-process transport (ranks as threads): task transfer keeps every
// sample of an epoch computed exactly once, slack keeps the bound, and the sharded gradient is
// the unsharded one.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <utility>

#include "tests/unit/inproc_test.h"
#include "tests/unit/toy_data.h"

namespace phx {
namespace {

using namespace phx::inproc_test;  // NOLINT(google-build-using-namespace): the inproc test kit

int64_t extraInt(const train::TrainResult& r, const std::string& key) {
  for (const auto& [k, v] : r.summary.extra)
    if (k == key) return std::stoll(v);
  ADD_FAILURE() << "no summary field " << key;
  return -1;
}

// (epoch, sample id) -> how many times a worker trained on it, over all workers' audit files.
std::map<std::pair<int, int>, int> readAudit(const std::string& prefix, int workers) {
  std::map<std::pair<int, int>, int> seen;
  for (int w = 0; w < workers; ++w) {
    std::ifstream in(prefix + ".w" + std::to_string(w));
    int e = 0, id = 0;
    while (in >> e >> id) ++seen[{e, id}];
    std::remove((prefix + ".w" + std::to_string(w)).c_str());
  }
  return seen;
}

// 4 workers, worker 3 (rank 4) 40x slower per sample, one lane each: the others take its
// unstarted shards. Two epochs of 256 samples: every (epoch, sample) exactly once.
void expectExactlyOnce(const char* sync, const char* mode) {
  const auto fm = toyData(256);
  Config c = jobConfig();
  c.sync = sync;
  c.epspMode = mode;
  c.staleness = 1;
  c.shards = 4;
  c.maxParallelism = 1;
  c.steps = 8;  // 256 / 4 workers / batch 16 = 4 steps per epoch
  c.straggle = "4:40";
  c.auditSamples = ::testing::TempDir() + "/audit-" + sync + "-" + mode;
  const auto r = runJob(5, c, fm);
  const auto seen = readAudit(c.auditSamples, 4);
  ASSERT_EQ(seen.size(), 2u * 256u) << sync << " " << mode << ": samples lost";
  for (const auto& [key, n] : seen) {
    EXPECT_GE(key.first, 0);
    EXPECT_LE(key.first, 1);
    EXPECT_EQ(n, 1) << "epoch " << key.first << " sample " << key.second << " computed " << n << " times";
  }
  EXPECT_GT(extraInt(r, "shards_transferred"), 0) << sync << " " << mode << ": nothing was transferred";
  EXPECT_GT(r.summary.finalTestAccuracy, 0.8);
}

TEST(Epsp, EnforcedTransferComputesEverySampleExactlyOnce) { expectExactlyOnce("epsp", "enforced"); }
TEST(Epsp, SlackTransferComputesEverySampleExactlyOnce) { expectExactlyOnce("epsp", "slack"); }
TEST(FlexRR, TransferComputesEverySampleExactlyOnce) { expectExactlyOnce("flexrr", "enforced"); }

// Slack: no worker ever starts more than s clocks ahead of the slowest, straggler or not.
TEST(Epsp, SlackNeverExceedsTheStalenessBound) {
  const auto fm = toyData(256);
  for (int s : {0, 2}) {
    Config c = jobConfig();
    c.sync = "epsp";
    c.epspMode = "slack";
    c.staleness = s;
    c.steps = 12;
    c.straggle = "4:20";
    const auto r = runJob(5, c, fm);
    EXPECT_LE(extraInt(r, "max_clock_lead"), s) << "s=" << s;
    EXPECT_EQ(r.summary.updatesApplied, 4 * c.steps) << "s=" << s;
  }
}

// Without transfer or parallelism, K shards summed / K are the batch's mean gradient: the same
// training as BSP up to float rounding (the sums run in another order).
TEST(Epsp, ShardedGradientEqualsTheBatchGradient) {
  const auto fm = toyData(256);
  Config c = jobConfig();
  c.steps = 12;
  const auto bsp = runJob(3, c, fm);
  c.sync = "epsp";
  c.shards = 4;
  c.maxParallelism = 1;
  c.transfer = false;
  const auto epsp = runJob(3, c, fm);
  EXPECT_NEAR(epsp.finalTestLoss, bsp.finalTestLoss, 1e-4 + 1e-3 * bsp.finalTestLoss);
  EXPECT_EQ(epsp.summary.updatesApplied, bsp.summary.updatesApplied);
  EXPECT_EQ(extraInt(epsp, "shards_transferred"), 0);
}

// Elastic parallelism: a worker slowed 4x runs several shards at once; the others one.
TEST(Epsp, ElasticParallelismGivesTheStragglerMoreLanes) {
  const auto fm = toyData(512);
  Config c = jobConfig();
  c.sync = "epsp";
  c.shards = 4;
  c.maxParallelism = 4;
  c.transfer = false;
  c.steps = 20;
  c.straggle = "3:4";
  const auto r = runJob(4, c, fm);  // 1 server, 3 workers; worker 2 (rank 3) straggles
  const std::string& ranks = [&]() -> const std::string& {
    for (const auto& [k, v] : r.summary.extra)
      if (k == "ranks") return v;
    static const std::string none;
    return none;
  }();
  // rank 3's row reports a mean parallelism above 2, rank 1's at most 1.5
  auto meanLanes = [&](int rank) {
    const size_t at = ranks.find("{\"rank\": " + std::to_string(rank) + ",");
    EXPECT_NE(at, std::string::npos);
    const size_t f = ranks.find("\"mean_lanes\": ", at);
    return std::stod(ranks.substr(f + 14));
  };
  EXPECT_GT(meanLanes(3), 2.0);
  EXPECT_LE(meanLanes(1), 1.5);
}

}  // namespace
}  // namespace phx
