// The chief worker's end of a run: every shard's final weights, every rank's counters, the
// failures of the final view with their recovery events, the final evaluation and the summary.
#include "runtime/train/worker_loop.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "recovery/checkpoint.h"
#include "runtime/core/log.h"
#include "runtime/sync/sync_policy.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

TrainResult WorkerLoop::finishChief(double trainSeconds, int64_t samples, double lastTrainLoss) {
  // The final weights: every shard sends its slice once all clients are done, so the final
  // evaluation sees every update, also those of workers that finished after the chief.
  const auto ranges = ps::splitKeys(static_cast<int64_t>(n_), layout_.servers());
  int64_t updates = -1, gradientsApplied = -1;
  for (int i = 0; i < layout_.servers(); ++i) {
    Header h;
    int src = -1;
    for (;;) {
      try {
        t_.waitHeader(MsgType::kFinal, &h, &src, cfg_.peerTimeoutS, "the final weights");
        break;
      } catch (const transport::ViewChanged&) {
        const recovery::View v = ft_.accept();
        noteFailures(v);
        // A shard that moved after training ended: its new server hears every client's
        // "done" again (idle leaders re-send it) and sends the final weights instead.
        client_.refreshNow();
        for (int sh = 0; sh < layout_.servers(); ++sh)
          if (v.shardRank[sh] < 0)
            throw transport::PeerFailure(
                {client_.serverRankOf(sh)}, v.epoch,
                detail::concat("the server of shard ", sh, " died after training ended, before it sent "
                               "the final weights, and no spare or replica is left; the newest "
                               "snapshot is in ", cfg_.checkpointDir));
      }
    }
    PHX_ENFORCE(h.shard >= 0 && h.shard < layout_.servers() && h.offset == ranges[h.shard].lo &&
                    h.bytes == ranges[h.shard].size() * 4,
                "bad final-weights message from rank ", src);
    t_.recvPayload(src, MsgType::kFinal, paramBuf() + h.offset, h.bytes, cfg_.peerTimeoutS);
    if (h.shard == 0) {
      updates = h.version;
      gradientsApplied = static_cast<int64_t>(h.value);
    }
  }
  uploadParams();
  // Every other rank's counters.
  std::vector<RankStats> all;
  RankStats mine = workerStats(samples, trainSeconds);
  all.push_back(mine);
  // Every other reporter's counters: each shard's server and every live worker. The set is
  // that of the newest view (a rank that dies meanwhile is no longer waited for; a chief that
  // took over gets them re-sent).
  recovery::View finalView;
  if (ft_.det) {
    if (ft_.changed()) client_.refreshNow();
    finalView = ft_.det->view();
    noteFailures(finalView);
  }
  auto expected = [&] {
    std::vector<int> e;
    if (!ft_.det) {
      for (int sh = 0; sh < layout_.servers(); ++sh) e.push_back(layout_.serverRank(sh));
      for (int w = 1; w < layout_.workers(); ++w) e.push_back(layout_.workerRank(w));
      return e;
    }
    for (int sh = 0; sh < layout_.servers(); ++sh)
      if (finalView.shardRank[sh] >= 0) e.push_back(finalView.shardRank[sh]);
    for (int w = 0; w < layout_.workers(); ++w)
      if (layout_.workerRank(w) != t_.rank() && finalView.isAlive(layout_.workerRank(w)))
        e.push_back(layout_.workerRank(w));
    return e;
  };
  std::vector<char> got(static_cast<size_t>(layout_.worldSize()), 0);
  auto missing = [&] {
    for (int r : expected())
      if (!got[r]) return true;
    return false;
  };
  while (missing()) {
    Header h;
    int src = -1;
    try {
      t_.waitHeader(MsgType::kStats, &h, &src, cfg_.peerTimeoutS, "end-of-run counters");
    } catch (const transport::ViewChanged&) {
      client_.refreshNow();
      finalView = ft_.det->view();
      noteFailures(finalView);
      continue;
    }
    RankStats s;
    PHX_ENFORCE(h.bytes == sizeof s, "stats message of ", h.bytes, " bytes from rank ", src);
    t_.recvPayload(src, MsgType::kStats, &s, sizeof s, cfg_.peerTimeoutS);
    if (got[src]) continue;  // re-sent after a change of chief
    got[src] = 1;
    all.push_back(s);
  }
  // Everyone still idling (leaders, servers that reported, spares, replicas) may go.
  releaseAll(t_, ft_, cfg_.peerTimeoutS);

  const EvalResult e = evaluate(model_, fm_.test, cfg_.evalBatch);
  std::vector<float> finalWeights;
  model_.getParams(finalWeights);
  const uint32_t weightsCrc = recovery::crcOf(finalWeights);
  TrainResult res;
  res.finalTestLoss = e.loss;
  res.finalTrainLoss = lastTrainLoss;
  Summary& s = res.summary;
  double totalSamples = 0, rejected = 0, maxLead = 0, maxStale = 0;
  std::string ranks = "[";
  for (const RankStats& r : all) {
    if (r.isServer) {
      rejected += r.rejected;
      maxLead = std::max(maxLead, r.maxLead);
      maxStale = std::max(maxStale, r.maxStaleness);
    } else {
      totalSamples += r.samples;
    }
    char row[768];
    std::snprintf(row, sizeof row,
                  "%s{\"rank\": %d, \"role\": \"%s\", \"cpu_seconds\": %.3f, \"wall_seconds\": "
                  "%.3f, \"samples\": %.0f, \"updates\": %.0f, \"bytes_in\": %.0f, \"bytes_out\": %.0f, "
                  "\"straggle_seconds\": %.3f, \"straggler_steps\": %.0f, \"pioneer_steps\": %.0f, "
                  "\"first_straggler_step\": %.0f, \"shards_own\": %.0f, \"shards_stolen\": %.0f, "
                  "\"shards_given\": %.0f, \"steal_requests\": %.0f, \"mean_lanes\": %.2f, "
                  "\"max_lanes\": %.0f}",
                  ranks.size() > 1 ? ", " : "", static_cast<int>(r.rank),
                  r.isServer ? "server" : "worker", r.cpuSeconds, r.seconds, r.samples,
                  r.version, r.bytesIn, r.bytesOut, r.straggleSeconds, r.stragglerSteps, r.pioneerSteps,
                  r.firstStraggler, r.shardsOwn, r.shardsStolen, r.shardsGiven, r.stealRequests,
                  r.meanLanes, r.maxLanes);
    ranks += row;
  }
  ranks += "]";
  s.finalTestAccuracy = e.accuracy;
  s.steps = plan(cfg_, fm_.train, layout_.workers()).totalSteps;
  s.samplesPerS = totalSamples / std::max(1e-9, trainSeconds);
  s.updatesApplied = updates;
  s.updatesLost = 0;
  if (ft_.det) pollEvents();
  const int64_t perStep = policyOf(cfg_)->roundBased() ? 1 : layout_.groups();
  for (const recovery::FailureRecord& f : finalView.failures) {
    FailureRecord o;
    o.rank = f.rank;
    o.role = ps::roleName(static_cast<ps::Role>(f.role));
    o.shard = f.shard;
    o.replacedBy = f.replacedBy;
    o.epoch = f.epoch;
    o.killTimeKnown = f.killUnix > 0;
    o.spawned = f.spawned != 0;
    o.detectedBy = f.detectedBy == recovery::kDetectedByMpi ? "mpi" : "heartbeat";
    const double from = f.killUnix > 0 ? f.killUnix : f.lastHeardUnix;
    o.detectedMs = std::round((f.detectedUnix - from) * 1000.0);
    if (f.shard >= 0) {
      for (const Recovered& rc : recovered_)
        if (rc.shard == f.shard && rc.epoch == f.epoch) {
          o.recoveredMs = std::round((rc.firstApplyUnix - from) * 1000.0);
          for (const auto& m : client_.moves())
            if (m.shard == f.shard && m.epoch == f.epoch && rc.restoredVersion >= 0)
              o.updatesLost = std::max<int64_t>(0, m.lastVersion - static_cast<int64_t>(rc.restoredVersion));
          o.rolledBackSteps = o.updatesLost / perStep;
          o.bufferedUpdatesApplied = static_cast<int64_t>(rc.bufferedApplied);
        }
    }
    s.updatesLost += o.updatesLost;
    s.failures.push_back(o);
  }
  double snapshots = 0, ckptSeconds = 0, acked = 0, buffered = 0, overflow = 0, duplicates = 0,
         dropped = 0, droppedSeen = 0, transferred = 0;
  for (const RankStats& r : all) {
    transferred += r.shardsStolen;
    snapshots += r.snapshotsWritten;
    ckptSeconds += r.checkpointSeconds;
    acked += r.pushesAcked;
    buffered += r.buffered;
    overflow += r.overflow;
    droppedSeen += r.pushesDropped;
    if (r.isServer && r.index == 0) {
      duplicates += r.duplicates;
      dropped += r.dropped;
    }
  }
  // Sync-opt drops: the workers were told of each (exact across a server failure, where the dead
  // server's own count is gone); the server's count covers a worker that died.
  dropped = std::max(dropped, droppedSeen);
  // The counter invariant (docs/recovery.md): every push to shard 0 that a worker saw
  // acknowledged (or handed over in a backlog) is in the final state, unless a checkpoint
  // restore rolled it back. Exact while every worker lives (a dead one's pushes are in the
  // state but not in the acknowledged sum).
  bool workerDied = false;
  for (const recovery::FailureRecord& f : finalView.failures)
    workerDied = workerDied || layout_.roleOf(f.rank) == ps::Role::kWorker;
  const int64_t ackedLost = workerDied || gradientsApplied < 0
                               ? -1
                               : std::max<int64_t>(0, static_cast<int64_t>(acked) - gradientsApplied);
  s.extra = {{"model", jsonString(cfg_.model)},
             {"parameters", std::to_string(n_)},
             {"device", jsonString(be_->describe())},
             {"batch", std::to_string(cfg_.batch)},
             {"samples", detail::concat(static_cast<int64_t>(totalSamples))},
             {"train_seconds", jsonNumber(trainSeconds)},
             {"final_train_loss", jsonNumber(lastTrainLoss)},
             {"final_test_loss", jsonNumber(e.loss)},
             // the final weights' CRC-32: equal runs (fixed seeds, BSP) give equal values
             {"final_weights_crc32", std::to_string(weightsCrc)},
             {"workers", std::to_string(layout_.workers())},
             {"servers", std::to_string(layout_.servers())},
             {"group_size", std::to_string(layout_.groupSize())},
             // how the chief's group reduced: none (size 1), mpi, nccl
             {"group_reduce", jsonString(layout_.groupEnd(group_) - leader_ < 2 ? "none" : nccl_ ? "nccl" : "mpi")},
             {"sync", jsonString(cfg_.sync)},
             {"staleness", std::to_string(cfg_.staleness)},
             {"aggregate", jsonString(cfg_.aggregate)},
             {"messages_rejected", detail::concat(static_cast<int64_t>(rejected))},
             {"max_clock_lead", detail::concat(static_cast<int64_t>(maxLead))},
             {"max_staleness", detail::concat(static_cast<int64_t>(maxStale))},
             {"recovery", jsonString(ft_.mode)},
             {"snapshots_written", detail::concat(static_cast<int64_t>(snapshots))},
             {"checkpoint_blocking_seconds", jsonNumber(ckptSeconds)},
             {"resends", detail::concat(client_.resends())},
             {"pushes_acknowledged", detail::concat(static_cast<int64_t>(acked))},
             {"gradients_applied", detail::concat(gradientsApplied)},
             {"acknowledged_pushes_lost", detail::concat(ackedLost)},
             {"duplicate_pushes", detail::concat(static_cast<int64_t>(duplicates))},
             {"gradients_dropped", detail::concat(static_cast<int64_t>(dropped))},
             {"backup_workers", std::to_string(cfg_.backupWorkers)},
             {"scale_updates", jsonString(cfg_.scaleUpdates)},
             {"buffered_updates", detail::concat(static_cast<int64_t>(buffered))},
             {"buffer_overflow", detail::concat(static_cast<int64_t>(overflow))},
             {"steps_completed", detail::concat(stepsDone_)},
             {"stopped_by_signal", stepsDone_ < s.steps ? "true" : "false"},
             {"epsp_mode", jsonString(cfg_.sync == "epsp" ? cfg_.epspMode : "")},
             {"shards", std::to_string(cfg_.shardedSync() ? cfg_.shards : 1)},
             {"max_parallelism", std::to_string(cfg_.sync == "epsp" ? cfg_.maxParallelism : 1)},
             {"transfer", cfg_.shardedSync() && cfg_.transfer ? "true" : "false"},
             {"shards_transferred", detail::concat(static_cast<int64_t>(transferred))},
             // the recovery settings in effect (empty or 0 where the mode does not use them)
             {"spares", std::to_string(layout_.spares())},
             {"spawn_replacements", cfg_.spawnReplacements() ? "true" : "false"},
             {"chain_mode", jsonString(ft_.mode == "chain" || ft_.mode == "hybrid" ? cfg_.chainMode : "")},
             {"replicate_every", std::to_string((ft_.mode == "chain" || ft_.mode == "hybrid") && cfg_.chainMode == "async" ? cfg_.replicateEvery : 0)},
             {"stateless_buffer", std::to_string(ft_.mode == "stateless" || ft_.mode == "hybrid" ? cfg_.statelessBuffer : 0)},
             {"backlog_rule", jsonString(ft_.mode == "stateless" || ft_.mode == "hybrid" ? cfg_.backlogRule : "")},
             {"checkpoint_mode", jsonString(ft_.mode == "checkpoint" || ft_.mode == "stateless" ? cfg_.checkpointMode : "")},
             {"ranks", ranks}};
  if (!cfg_.summaryPath.empty()) writeFileAtomic(cfg_.summaryPath, s.toJson());
  log::info(stepsDone_ < s.steps ? detail::concat("stopped: ", stepsDone_, " of ", s.steps)
                                 : detail::concat("done: ", s.steps),
            " steps per worker in ", fmtDuration(trainSeconds), ", ",
            static_cast<int64_t>(s.samplesPerS), " samples/s over ", layout_.workers(),
            " workers, ", updates, " updates, test accuracy ", e.accuracy * 100.0, " %");
  return res;
}

}  // namespace phx::train
