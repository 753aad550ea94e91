#include <chrono>
#include <thread>

#include "kernels/model.h"
#include "recovery/checkpoint.h"
#include "runtime/core/log.h"
#include "runtime/ps/server.h"
#include "runtime/train/roles.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

// Serves `shard` until every client is done. takeover: this rank replaces the shard's dead
// server (a spare): it restores the newest valid snapshot and resynchronises the clients.
void serveShard(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
                const data::FashionMnist& fm, FtContext& ft, int shard, bool takeover,
                int sinceEpoch) {
  auto be = kernels::makeBackend("cpu", 1);
  kernels::Model init(*be, kernels::parseModelSpec(cfg.model), 1);
  init.initParams(cfg.seed);
  std::vector<float> all;
  init.getParams(all);
  const auto ranges = ps::splitKeys(static_cast<int64_t>(all.size()), layout.servers());
  const ps::KeyRange r = ranges[shard];
  std::vector<float> slice(all.begin() + r.lo, all.begin() + r.hi);

  const auto policy = sync::makePolicy(cfg.sync, cfg.staleness);
  const Plan p = plan(cfg, fm.train, layout.workers());
  // Updates the server will apply over the run: one per round (BSP) or one per push.
  const int64_t perStep = policy->roundBased() ? 1 : layout.groups();
  const int64_t totalUpdates = p.totalSteps * perStep;
  ps::ServerOptions opt;
  opt.shard = shard;
  opt.range = r;
  opt.clients = layout.groups();
  opt.epoch = sinceEpoch;
  opt.aggregate = sync::parseAggregate(cfg.aggregate);
  opt.sgd = sgdOf(cfg);
  opt.lrAt = [&cfg, totalUpdates](int64_t v) { return learningRate(cfg, v, totalUpdates); };
  opt.timeoutS = cfg.peerTimeoutS;

  // Checkpoints.
  const bool ckpt = ft.mode == "checkpoint";
  const Schedule every = parseSchedule("--checkpoint-every", cfg.checkpointEvery);
  std::unique_ptr<recovery::AsyncSnapshotWriter> writer;
  if (ckpt && !every.empty() && cfg.checkpointMode == "async")
    writer = std::make_unique<recovery::AsyncSnapshotWriter>(cfg.checkpointDir, cfg.checkpointKeep);
  int64_t written = 0;
  double ckptSeconds = 0, lastCkptUnix = recovery::unixNow();
  const std::string configText = detail::concat(
      "model=", cfg.model, " sync=", cfg.sync, " staleness=", cfg.staleness, " servers=",
      layout.servers(), " workers=", layout.workers(), " batch=", cfg.batch, " lr=", cfg.lr,
      " momentum=", cfg.effectiveMomentum(), " seed=", cfg.seed);

  ps::Server* srv = nullptr;
  auto snapshot = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    recovery::ShardSnapshot snap;
    snap.shard = shard;
    snap.lo = r.lo;
    snap.hi = r.hi;
    snap.version = srv->stats().version;
    snap.round = srv->round();
    snap.weights = srv->weights();
    snap.momentum = srv->momentum();
    snap.model = cfg.model;
    snap.config = configText;
    if (writer)
      writer->submit(std::move(snap));
    else
      recovery::writeSnapshot(cfg.checkpointDir, snap, cfg.checkpointKeep);
    ++written;
    ckptSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lastCkptUnix = recovery::unixNow();
  };
  if (ckpt && !every.empty() && !every.isTime())
    opt.afterApply = [&] {
      if (srv->stats().version % (every.steps * perStep) == 0) snapshot();
    };

  // Injected kills of shard 0's server: the n-th entry of --kill-server is for the n-th
  // holder of the shard (a replacement does not re-run an earlier kill).
  const std::vector<Schedule> kills = cfg.killServerAt();
  size_t killIndex = 0;
  if (ft.det)
    for (const auto& f : ft.det->view().failures) killIndex += f.shard == 0 ? 1 : 0;

  bool eventSent = false;
  RankStats rs;
  opt.tick = [&] {
    if (ft.changed()) {
      const recovery::View v = ft.accept();
      for (int c = 0; c < layout.groups(); ++c)
        if (!v.isAlive(layout.workerRank(layout.leaderOf(c)))) srv->dropClient(c);
    }
    if (shard == 0 && killIndex < kills.size() &&
        due(kills[killIndex], srv->stats().version / perStep, ft.startUnix))
      killSelf(ft, detail::concat("--kill-server ", cfg.killServer, " (shard 0 at update ",
                                  srv->stats().version, ")"));
    if (ckpt && every.isTime() && recovery::unixNow() - lastCkptUnix >= every.seconds) snapshot();
    if (takeover && !eventSent && srv->firstApplyAfterResync() > 0) {
      eventSent = true;
      // Tell the chief at once (this server may die too before the end-of-run counters).
      const double nowSteady =
          std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
      const double ev[4] = {static_cast<double>(shard), static_cast<double>(sinceEpoch),
                            recovery::unixNow() - (nowSteady - srv->firstApplyAfterResync()),
                            rs.restoredVersion};
      Header eh;
      eh.type = MsgType::kEvent;
      eh.shard = shard;
      eh.bytes = sizeof ev;
      t.waitSend(t.send(layout.chiefRank(), eh, ev), cfg.peerTimeoutS);
      log::info("shard ", shard, " applies updates again on rank ", t.rank(), " (version ",
                srv->stats().version, ")");
    }
  };

  if (takeover) unsetenv("PHX_TEST_KILL_IN_CHECKPOINT");  // the test hook kills one writer only
  ps::Server server(t, layout, opt, *policy, *be, std::move(slice));
  srv = &server;
  const std::string restoreDir = takeover ? cfg.checkpointDir : cfg.resumeDir;
  if (takeover || !cfg.resumeDir.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    recovery::LoadResult lr;
    if (ckpt || !cfg.resumeDir.empty()) lr = recovery::loadNewestSnapshot(restoreDir, shard);
    if (lr.snap) {
      if (lr.snap->lo != r.lo || lr.snap->hi != r.hi)
        PHX_USER_ERROR(lr.file, " holds keys [",
                       lr.snap->lo, ", ", lr.snap->hi, "), but shard ", shard, " of this model has [",
                       r.lo, ", ", r.hi, "): same --model and --servers as the run that wrote it?");
      server.restore(lr.snap->version, lr.snap->round, lr.snap->weights, lr.snap->momentum);
      rs.restoredVersion = static_cast<double>(lr.snap->version);
      log::warn("shard ", shard, " restored from ", lr.file, " (version ", lr.snap->version,
                ", round ", lr.snap->round, ", weights crc32 ", recovery::crcOf(lr.snap->weights), ")");
    } else if (!cfg.resumeDir.empty() && !takeover) {
      PHX_USER_ERROR("--resume ", cfg.resumeDir, ": no valid snapshot of shard ", shard, " in ",
                     recovery::shardDir(cfg.resumeDir, shard),
                     lr.skipped.empty() ? std::string() : detail::concat(" (skipped: ", lr.skipped.back(), ")"));
    } else {
      rs.restoredVersion = 0;
      log::warn("shard ", shard, ": no valid snapshot in ", recovery::shardDir(restoreDir, shard),
                "; it restarts from the initial weights");
    }
    rs.restoreSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    server.beginResync();
  }
  rs.tookOver = takeover ? 1 : 0;
  rs.takeoverEpoch = sinceEpoch;
  log::info("shard ", shard, " owns keys [", r.lo, ", ", r.hi, ") of ", all.size(), ", sync ",
            policy->name(), ", ", layout.groups(), " client(s)", takeover ? " (took over)" : "");
  const double cpu0 = cpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  server.run(layout.chiefRank());
  if (writer) writer->flush();
  const ps::ServerStats& s = server.stats();
  rs.isServer = 1;
  rs.index = shard;
  rs.rank = t.rank();
  rs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rs.cpuSeconds = cpuSeconds() - cpu0;
  rs.version = static_cast<double>(s.version);
  rs.gradients = static_cast<double>(s.gradients);
  rs.pulls = static_cast<double>(s.pullsServed);
  rs.rejected = static_cast<double>(s.rejected);
  rs.maxLead = static_cast<double>(s.maxLead);
  rs.maxStaleness = static_cast<double>(s.maxStaleness);
  rs.meanStaleness = s.version ? s.stalenessSum / static_cast<double>(s.version) : 0;
  rs.bytesIn = s.bytesIn;
  rs.bytesOut = s.bytesOut;
  rs.clientsLost = static_cast<double>(s.clientsLost);
  rs.snapshotsWritten = static_cast<double>(writer ? writer->written() : written);
  rs.checkpointSeconds = writer ? writer->waitedSeconds() + ckptSeconds : ckptSeconds;
  sendStats(t, layout.chiefRank(), rs, cfg.peerTimeoutS);
}

// A spare: idle until a view gives it a shard (or the chief releases it at the end).
void runSpare(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
              const data::FashionMnist& fm, FtContext& ft) {
  transport::Backoff idle;
  for (;;) {
    Header h;
    int src = -1;
    if (t.poll(MsgType::kDone, &h, &src)) return;
    if (ft.changed()) {
      const recovery::View v = ft.accept();
      const int shard = v.shardOf(t.rank());
      if (shard >= 0) {
        log::warn("spare rank ", t.rank(), " takes over shard ", shard, " (epoch ", v.epoch, ")",
                  cfg.downtimeS > 0 ? detail::concat(" after --downtime ", cfg.downtimeS, " s") : "");
        if (cfg.downtimeS > 0)
          std::this_thread::sleep_for(std::chrono::duration<double>(cfg.downtimeS));
        serveShard(cfg, t, layout, fm, ft, shard, true, v.shardSince[shard]);
        return;
      }
    }
    idle.pause();
  }
}

}  // namespace phx::train
