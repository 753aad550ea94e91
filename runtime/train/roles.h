// Internal to runtime/train: what the server, spare and worker roles of a parameter-server job
// share (end-of-run counters, the failure context, the run plan, small helpers). Not a public
// interface: dist_trainer.h is.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kernels/backend.h"
#include "recovery/detector.h"
#include "runtime/core/config.h"
#include "runtime/data/fashion_mnist.h"
#include "runtime/ps/client.h"
#include "runtime/ps/layout.h"
#include "runtime/sync/sync_policy.h"
#include "runtime/transport/transport.h"

namespace phx::train {

// Every rank's end-of-run counters, sent to the chief as raw doubles.
struct RankStats {
  double isServer = 0, index = 0, rank = 0;
  double samples = 0, seconds = 0, cpuSeconds = 0, steps = 0;
  double version = 0, gradients = 0, pulls = 0, rejected = 0;
  double maxLead = 0, maxStaleness = 0, meanStaleness = 0, bytesIn = 0, bytesOut = 0;
  // recovery (servers that took a shard over)
  double tookOver = 0, takeoverEpoch = 0, restoredVersion = -1;
  double restoreSeconds = 0, snapshotsWritten = 0, checkpointSeconds = 0, clientsLost = 0;
  double resends = 0;
  // chain replication and stateless servers
  double promoted = 0, duplicates = 0, replicated = 0, bufferedApplied = 0;
  // workers: pushes of shard 0 acknowledged (or delivered in a backlog), updates buffered
  // while a shard was down, updates dropped because the buffer was full
  double pushesAcked = 0, buffered = 0, overflow = 0;
  double pushesDropped = 0;  // workers: Sync-opt pushes of shard 0 the server dropped (late)
  double straggleSeconds = 0;  // injected slowdown (workers)
  // straggler projection (workers): steps classified straggler / pioneer, first straggler step
  double stragglerSteps = 0, pioneerSteps = 0, firstStraggler = -1;
  double dropped = 0;          // Sync-opt: late pushes dropped (servers)
  // EPSP / FlexRR (workers): shards computed (own, taken from others), own shards given away,
  // steal requests sent, mean and largest parallelism p_w
  double shardsOwn = 0, shardsStolen = 0, shardsGiven = 0, stealRequests = 0, meanLanes = 0,
         maxLanes = 0;
};

// This rank's view of failures: the detector (null when there is none), the view epoch the
// training thread has acted on, and what the run does about failures.
struct FtContext {
  recovery::FailureDetector* det = nullptr;
  transport::Transport* main = nullptr;
  const ps::RoleLayout* layout = nullptr;
  std::string mode = "none";
  std::string survivorFlag = "--enable-recovery";  // Config::survivorFlag
  int acked = 0;
  double startUnix = 0;
  int chief = -1;  // the chief worker's rank in the newest accepted view

  bool changed() const { return det && (det->epoch() != acked || det->fenced()); }
  // Takes the newest view: dead ranks are cut off the training transport, the epoch is
  // acknowledged. With --recovery none any failure ends the job here.
  recovery::View accept() {
    recovery::View v = det->view();
    if (det->fenced())
      throw transport::Excluded({main->rank()}, v.epoch,
                                   "this rank was declared failed by the others (frozen longer than "
                                   "--failure-timeout-ms?) and leaves the job");
    for (int r = 0; r < static_cast<int>(v.alive.size()); ++r) {
      if (!v.alive[r])
        main->markDead(r);
      else
        main->revive(r);  // a replacement process under a dead rank's number: its new route
    }
    acked = v.epoch;
    chief = v.chiefRank(*layout);
    if (chief < 0)
      throw transport::PeerFailure({}, v.epoch, "every worker has died; the run cannot go on");
    if (mode == "none" && !v.failures.empty()) {
      const recovery::FailureRecord& f = v.failures.back();
      throw transport::PeerFailure(
          {f.rank}, v.epoch,
          detail::concat("rank ", f.rank, " (", ps::roleName(static_cast<ps::Role>(f.role)),
                         ") failed (no heartbeat for the failure timeout); --recovery none ends "
                         "the job. To survive it: mpirun ", survivorFlag, " ... --recovery checkpoint "
                         "--spares 1"));
    }
    return v;
  }
  ps::Directory directory(const recovery::View& v) const {
    return ps::Directory{v.epoch, v.shardRank, v.shardSince};
  }
  void installHook() {
    if (!det) return;
    main->setInterrupt([this](int peer) { det->checkInterrupt(peer, acked); });
  }
};


// Injected kills: SIGKILL of this very process, announced to the coordinator first so that
// detection time is measured from the kill.
[[noreturn]] void killSelf(FtContext& ft, const std::string& what);
// Whether an injection point (step N or time Ts since start) has come.
bool due(const Schedule& s, int64_t step, double startUnix);
double cpuSeconds();
void sendStats(transport::Transport& t, int to, const RankStats& s, double timeoutS);
// Idles (without spinning) until the chief's release (a kDone without client from the current
// chief) arrives, calling onView whenever the membership view changes meanwhile; onView
// returns false to stop idling (this rank has a new role).
void idleUntilReleased(transport::Transport& t, FtContext& ft, const std::function<bool()>& onView);
// Releases every rank still idling at the end of a run (called by the chief).
void releaseAll(transport::Transport& t, const FtContext& ft, double timeoutS);

struct Plan {
  int64_t stepsPerEpoch = 0, totalSteps = 0;
};
Plan plan(const Config& cfg, const data::Dataset& train, int workers);
// The samples a worker trains on at `step`: [first, first + n) of its epoch order of
// `shardSize` samples (the last batch of an epoch is shorter; a worker whose part is one sample
// shorter starts over at 0).
// Injected straggling (--straggle, --straggle-random): the work since `since` takes `factor`
// times its real duration; sleeps (factor - 1) x that and returns the seconds slept.
double straggleAfter(double factor, std::chrono::steady_clock::time_point since);
struct BatchRange {
  int64_t first = 0, n = 0;
};
BatchRange batchRange(int64_t step, int64_t stepsPerEpoch, int batch, int64_t shardSize);
kernels::SgdParams sgdOf(const Config& cfg);
// The consistency policy of the run (--sync, --staleness, --backup-workers, --scale-updates).
std::unique_ptr<phx::sync::SyncPolicy> policyOf(const Config& cfg);
int ranksOnNode(const transport::Transport& t);
// The CPU quota of this process's cgroup in cores (v1 cpu.cfs_quota_us / cfs_period_us, or v2
// cpu.max), or -1 when none is set. A rank held to 0.13 core by a quota (a slow node,
// apps/scripts/cpu_budget.sh) gets nothing from more threads.
double cpuQuotaCores();

// The server roles (server_role.cc). serveShard serves `shard` until every client is done (or
// the chief releases a replica). runSpare idles until a view gives the
// spare a shard, or the chief releases it.
// How a rank starts serving a shard: as its first head, as a spare replacing a dead head (it
// restores the newest snapshot), or as a chain replica (it waits for the state and serves only
// once promoted).
enum class Entry { kInitial, kSpare, kReplica };
void serveShard(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
                const data::FashionMnist& fm, FtContext& ft, int shard, Entry entry,
                int sinceEpoch);
void runSpare(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
              const data::FashionMnist& fm, FtContext& ft);

}  // namespace phx::train
