#include <chrono>
#include <thread>

#include "kernels/model.h"
#include "recovery/checkpoint.h"
#include "runtime/core/log.h"
#include "runtime/core/signals.h"
#include "runtime/core/test_hooks.h"
#include "runtime/ps/server.h"
#include "runtime/train/roles.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

// Serves `shard` until every client is done (see roles.h for the entries).
void serveShard(const Config& cfg, transport::Transport& t, const ps::RoleLayout& layout,
                const data::FashionMnist& fm, FtContext& ft, int shard, Entry entry,
                int sinceEpoch) {
  auto be = kernels::makeBackend("cpu", 1);
  kernels::Model init(*be, kernels::parseModelSpec(cfg.model), 1);
  init.initParams(cfg.seed);
  std::vector<float> all;
  init.getParams(all);
  const auto ranges = ps::splitKeys(static_cast<int64_t>(all.size()), layout.servers());
  const ps::KeyRange r = ranges[shard];
  std::vector<float> slice(all.begin() + r.lo, all.begin() + r.hi);

  const auto policy = policyOf(cfg);
  const Plan p = plan(cfg, fm.train, layout.workers());
  // Updates the server will apply over the run: one per round (BSP) or one per push.
  const int64_t perStep = policy->roundBased() ? 1 : layout.groups();
  const int64_t totalUpdates = p.totalSteps * perStep;
  const bool chained = ft.mode == "chain" || ft.mode == "hybrid";
  const bool statelessWorkers = ft.mode == "stateless" || ft.mode == "hybrid";
  const bool asyncChain = chained && cfg.chainMode == "async";
  ps::ServerOptions opt;
  opt.shard = shard;
  opt.range = r;
  opt.clients = layout.groups();
  opt.epoch = sinceEpoch;
  opt.aggregate = sync::parseAggregate(cfg.aggregate);
  opt.sgd = sgdOf(cfg);
  opt.lrAt = [&cfg, totalUpdates](int64_t v) { return learningRate(cfg, v, totalUpdates); };
  opt.timeoutS = cfg.peerTimeoutS;
  if (chained) {
    opt.chain = asyncChain ? ps::ServerOptions::Chain::kAsync : ps::ServerOptions::Chain::kSync;
    opt.replicateEvery = cfg.replicateEvery * perStep;
  }
  const ps::BacklogRule rule = ps::parseBacklogRule(cfg.backlogRule);

  // Checkpoints (checkpoint mode; stateless servers write them too, as the state a
  // replacement starts from before the workers' copies and backlogs).
  const bool ckpt = ft.mode == "checkpoint" || ft.mode == "stateless";
  const Schedule every = parseSchedule("--checkpoint-every", cfg.checkpointEvery);
  std::unique_ptr<recovery::AsyncSnapshotWriter> writer;
  if (ckpt && !every.empty() && cfg.checkpointMode == "async")
    writer = std::make_unique<recovery::AsyncSnapshotWriter>(cfg.checkpointDir, cfg.checkpointKeep);
  int64_t written = 0;
  double ckptSeconds = 0, lastCkptUnix = recovery::unixNow();
  const std::string configText = detail::concat(
      "model=", cfg.model, " sync=", cfg.sync, " staleness=", cfg.staleness, " servers=",
      layout.servers(), " workers=", layout.workers(), " batch=", cfg.batch, " lr=", cfg.lr,
      " momentum=", cfg.effectiveMomentum(), " seed=", cfg.seed, " recovery=", ft.mode);

  ps::Server* srv = nullptr;
  auto snapshot = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    recovery::ShardSnapshot snap;
    snap.shard = shard;
    snap.lo = r.lo;
    snap.hi = r.hi;
    snap.version = srv->stats().version;
    snap.round = srv->round();
    snap.gradients = srv->stats().gradients;
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
  // a stop signal to this rank (runtime/core/signals.h; a worker's reaches it on its pushes)
  opt.stopRequested = [] { return signals::stopRequested(); };
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

  bool takeover = entry == Entry::kSpare;
  bool eventSent = false;
  RankStats rs;
  rs.restoredVersion = -1;
  // View changes: a wait interrupted by one installs it at once (sends to dead ranks are
  // abandoned); the tick then acts on it between messages.
  bool viewPending = false;
  recovery::View pending;
  opt.onViewChanged = [&] {
    pending = ft.accept();
    viewPending = true;
  };
  // Clients whose worker (group leader) is out of the view leave the rounds.
  auto dropDeadClients = [&](const recovery::View& v) {
    for (int c = 0; c < layout.groups(); ++c)
      if (!v.isAlive(layout.workerRank(layout.leaderOf(c)))) srv->dropClient(c);
  };
  auto actOnView = [&](const recovery::View& v) {
    srv->setReportTo(ft.chief);
    dropDeadClients(v);
    if (!chained) return;
    const int me = t.rank();
    const int head = v.shardRank[shard];
    if (head == me && !srv->isHead()) {
      // Every member that held the state died before this new tail received it: under chain
      // recovery nothing else holds the shard (no snapshots), so it is lost; serving the
      // initial weights would be a silently wrong result. (Hybrid rebuilds from the workers.)
      if (!srv->hasState() && !statelessWorkers)
        PHX_USER_ERROR("shard ", shard, " is lost: every member of its chain that held the state "
                       "died before the new tail (rank ", me, ") had received it; restart the job "
                       "with --recovery hybrid (it writes snapshots; --resume DIR) or with more --replicas");
      if (!srv->hasState())
        log::warn("shard ", shard, ": replica rank ", me, " is promoted before it received the "
                  "state; it rebuilds from the workers' copies");
      log::warn("replica rank ", me, " is promoted to head of shard ", shard, " (epoch ", v.epoch,
                ", version ", srv->stats().version, ")",
                cfg.downtimeS > 0 ? detail::concat(" after --downtime ", cfg.downtimeS, " s") : "");
      if (cfg.downtimeS > 0) std::this_thread::sleep_for(std::chrono::duration<double>(cfg.downtimeS));
      testhooks::killPoint("promote");
      const bool adoptCopies = !srv->hasState();
      srv->promote(v.shardSince[shard], asyncChain);
      killIndex = 0;  // the n-th --kill-server entry is for the n-th holder of shard 0
      for (const auto& f : v.failures) killIndex += f.shard == 0 ? 1 : 0;
      takeover = true;
      rs.promoted = 1;
      rs.restoredVersion = static_cast<double>(srv->stats().version);
      sinceEpoch = v.shardSince[shard];
      srv->setChain(head, v.successorOf(shard, me));
      if (statelessWorkers) srv->beginRejoin(rule, adoptCopies);
      return;
    }
    if (head >= 0) srv->setChain(head, v.successorOf(shard, me));
  };

  // Tells the chief at once when the shard applies updates again after a takeover (this
  // server may die too before the end-of-run counters).
  auto sendEvent = [&] {
    if (!takeover || eventSent || srv->firstApplyAfterResync() <= 0) return;
    eventSent = true;
    const double nowSteady =
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    const double ev[5] = {static_cast<double>(shard), static_cast<double>(sinceEpoch),
                          recovery::unixNow() - (nowSteady - srv->firstApplyAfterResync()),
                          srv->rejoinBase() >= 0 ? static_cast<double>(srv->rejoinBase()) : rs.restoredVersion,
                          static_cast<double>(srv->stats().bufferedApplied)};
    Header eh;
    eh.type = MsgType::kEvent;
    eh.shard = shard;
    eh.bytes = sizeof ev;
    t.waitSend(t.send(ft.chief, eh, ev), cfg.peerTimeoutS);
    log::info("shard ", shard, " applies updates again on rank ", t.rank(), " (version ",
              srv->stats().version, ")");
  };
  opt.tick = [&] {
    if (ft.changed()) opt.onViewChanged();
    if (viewPending) {
      viewPending = false;
      actOnView(pending);
    }
    if (!srv->isHead()) return;
    // the recovery event first: an injected kill at the update that completes a takeover must
    // not take the takeover's report (its applied backlog) with it
    sendEvent();
    // (worker steps from the pushes in the state: a stateless rejoin applies many buffered
    // pushes as one version, so versions would fall behind and a later kill never come)
    const int64_t steps = policy->roundBased() ? srv->stats().version : srv->stats().gradients / perStep;
    if (shard == 0 && killIndex < kills.size() && due(kills[killIndex], steps, ft.startUnix))
      killSelf(ft, detail::concat("--kill-server ", cfg.killServer, " (shard 0 at update ",
                                  srv->stats().version, ")"));
    if (ckpt && every.isTime() && recovery::unixNow() - lastCkptUnix >= every.seconds) snapshot();
  };

  if (takeover) unsetenv("PHX_TEST_KILL_IN_CHECKPOINT");  // the test hook kills one writer only
  ps::Server server(t, layout, opt, *policy, *be, std::move(slice));
  srv = &server;
  if (entry == Entry::kReplica) {
    // The head sends the whole state first (also at the start: a resumed head's state).
    server.setHead(false);
    server.setHasState(false);
  }
  const std::string restoreDir = takeover ? cfg.checkpointDir : cfg.resumeDir;
  if (entry != Entry::kReplica && (takeover || !cfg.resumeDir.empty())) {
    const auto t0 = std::chrono::steady_clock::now();
    recovery::LoadResult lr;
    if (ckpt || !cfg.resumeDir.empty()) lr = recovery::loadNewestSnapshot(restoreDir, shard);
    if (lr.snap) {
      if (takeover) testhooks::killPoint("restore");
      if (lr.snap->lo != r.lo || lr.snap->hi != r.hi)
        PHX_USER_ERROR(lr.file, " holds keys [",
                       lr.snap->lo, ", ", lr.snap->hi, "), but shard ", shard, " of this model has [",
                       r.lo, ", ", r.hi, "): same --model and --servers as the run that wrote it?");
      server.restore(lr.snap->version, lr.snap->round, lr.snap->weights, lr.snap->momentum,
                     lr.snap->gradients);
      rs.restoredVersion = static_cast<double>(lr.snap->version);
      log::warn("shard ", shard, " restored from ", lr.file, " (version ", lr.snap->version,
                ", round ", lr.snap->round, ", weights crc32 ", recovery::crcOf(lr.snap->weights), ")");
    } else if (!cfg.resumeDir.empty() && !takeover) {
      PHX_USER_ERROR("--resume ", cfg.resumeDir, ": no valid snapshot of shard ", shard, " in ",
                     recovery::shardDir(cfg.resumeDir, shard),
                     lr.skipped.empty() ? std::string() : detail::concat(" (skipped: ", lr.skipped.back(), ")"));
    } else if (takeover && chained && !statelessWorkers) {
      // a chain whose every member died at once: nothing holds the shard's state
      PHX_USER_ERROR("shard ", shard, " is lost: every member of its chain died at once and chain "
                     "recovery keeps no snapshot; restart the job with --recovery hybrid (it writes "
                     "snapshots; --resume DIR) or with more --replicas");
    } else {
      rs.restoredVersion = 0;
      log::warn("shard ", shard, ": no valid snapshot in ", recovery::shardDir(restoreDir, shard),
                statelessWorkers ? "; it rebuilds from the workers' copies"
                                 : "; it restarts from the initial weights");
    }
    rs.restoreSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    server.beginResync();
    if (takeover && statelessWorkers) server.beginRejoin(rule, true);
  }
  if (chained && ft.det) {
    const recovery::View v = ft.det->view();
    if (v.shardRank[shard] >= 0) server.setChain(v.shardRank[shard], v.successorOf(shard, t.rank()));
  } else if (chained) {
    server.setChain(layout.serverRank(shard), -1);
  }
  // Workers that died before this rank began to serve (a replacement, a spare taking over) are
  // already out of the view: drop them now, or a round would wait for their pushes forever.
  if (ft.det) dropDeadClients(ft.det->view());
  if (entry != Entry::kReplica)
    log::info("shard ", shard, " owns keys [", r.lo, ", ", r.hi, ") of ", all.size(), ", sync ",
              policy->name(), ", ", layout.groups(), " client(s)", takeover ? " (took over)" : "");
  const double cpu0 = cpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  server.run(ft.chief);
  if (server.isHead() && !server.released()) sendEvent();  // a recovery right at the end
  if (server.isHead() && server.stopLatched()) {
    // A stop signal (SLURM's preemption or --signal before the time limit): every worker has stopped after
    // the same round; this snapshot is what `--resume` continues from.
    snapshot();
    if (writer) writer->flush();
    log::warn("shard ", shard, ": stopped on a stop signal; snapshot at version ", server.stats().version,
              " (round ", server.round(), ") in ", recovery::shardDir(cfg.checkpointDir, shard),
              "; continue with --resume ", cfg.checkpointDir);
  }
  if (writer) writer->flush();
  if (server.released() || !server.isHead()) return;  // a replica: nothing to report
  rs.tookOver = takeover ? 1 : 0;
  rs.takeoverEpoch = sinceEpoch;
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
  rs.duplicates = static_cast<double>(s.duplicates);
  rs.replicated = static_cast<double>(s.replicated);
  rs.bufferedApplied = static_cast<double>(s.bufferedApplied);
  rs.dropped = static_cast<double>(s.dropped);
  rs.snapshotsWritten = static_cast<double>(writer ? writer->written() : written);
  rs.checkpointSeconds = writer ? writer->waitedSeconds() + ckptSeconds : ckptSeconds;
  int reportedTo = ft.chief;
  sendStats(t, reportedTo, rs, cfg.peerTimeoutS);
  // Stay until the chief has what it needs: a chief that dies is replaced by the next worker,
  // which gets the final weights and these counters again.
  if (ft.det)
    idleUntilReleased(t, ft, [&] {
      ft.accept();
      if (ft.chief != reportedTo) {
        reportedTo = ft.chief;
        server.sendFinal(reportedTo);
        sendStats(t, reportedTo, rs, cfg.peerTimeoutS);
      }
      return true;
    });
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
        serveShard(cfg, t, layout, fm, ft, shard, Entry::kSpare, v.shardSince[shard]);
        return;
      }
      const int chain = v.backupOf(t.rank());
      if (chain >= 0) {
        log::warn("spare rank ", t.rank(), " joins the tail of shard ", chain, "'s chain (epoch ",
                  v.epoch, ")");
        serveShard(cfg, t, layout, fm, ft, chain, Entry::kReplica, v.epoch);
        return;
      }
    }
    idle.pause();
  }
}

}  // namespace phx::train
