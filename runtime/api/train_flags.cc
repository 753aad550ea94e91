#include "runtime/api/train_flags.h"

#include <string>

namespace phx::api {

void addTrainFlags(CLI::App& app, Config& c) {
  app.add_option("--model", c.model, "Model: cnn (the papers' CNN), mlp (784-512-256-10), synthetic:N")
      ->capture_default_str();
  app.add_option("--data-dir", c.dataDir, "Directory with the Fashion-MNIST IDX files (.gz or plain)")
      ->capture_default_str();
  app.add_option("--batch", c.batch, "Mini-batch size per worker")
      ->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--epochs", c.epochs, "Epochs to train (not together with --steps)")
      ->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--steps", c.steps, "Steps to train per worker (0 = use --epochs)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--seed", c.seed, "Seed for initialisation, shuffling and dropout")
      ->capture_default_str();
  app.add_option("--lr", c.lr, "Learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--momentum", c.momentum,
                 "SGD momentum (0 = plain SGD, as in the papers; default 0.9, or 0.8 with --sync asp/ssp)")
      ->check(CLI::Range(0.0, 0.999999));
  app.add_option("--weight-decay", c.weightDecay, "L2 weight decay")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_flag("--nesterov", c.nesterov, "Nesterov momentum");
  app.add_option("--lr-schedule", c.lrSchedule, "constant, or cosine (from --lr down to 0 over the run)")
      ->check(CLI::IsMember({"constant", "cosine"}))->capture_default_str();
  app.add_option("--device", c.device, "cpu, cuda, or auto (CUDA when a GPU is usable)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  app.add_option("--threads", c.threads, "CPU threads per rank (0 = OMP_NUM_THREADS or all cores)")
      ->check(CLI::Range(0, 1024))->capture_default_str();
  app.add_option("--servers", c.servers, "Parameter-server shards (ranks 0..S-1) in an mpirun job")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--replicas", c.replicas, "Backup servers per shard (chain replication)")
      ->check(CLI::Range(0, 64))->capture_default_str();
  app.add_option("--spares", c.spares, "Idle ranks that can take over a dead server's role")
      ->check(CLI::Range(0, 4096))->capture_default_str();
  app.add_option("--spawn", c.spawn,
                 "Start a replacement process (MPI_Comm_spawn) for a dead server when no spare or "
                 "replica is left: auto (when launched by mpirun with survivors), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  app.add_option("--group-size", c.groupSize,
                 "Workers per group: a group reduces its gradients first, its leader talks to the servers")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--sync", c.sync,
                 "Consistency: bsp, asp, ssp (with --staleness), syncopt (with --backup-workers), "
                 "consgd, dynsgd, flexrr (SSP + transfer of a straggler's shards), epsp (with --epsp-mode)")
      ->check(CLI::IsMember({"bsp", "asp", "ssp", "syncopt", "consgd", "dynsgd", "flexrr", "epsp"}))
      ->capture_default_str();
  app.add_option("--epsp-mode", c.epspMode,
                 "epsp: enforced (a barrier per clock) or slack (no worker more than --staleness clocks ahead)")
      ->check(CLI::IsMember({"enforced", "slack"}))->capture_default_str();
  app.add_option("--shards", c.shards,
                 "epsp/flexrr: shards (micro-batches) per iteration; the unit of parallelism and of transfer")
      ->capture_default_str();
  app.add_option("--max-parallelism", c.maxParallelism,
                 "epsp: most shards one worker runs at once (p_max; threads on CPU, streams on GPU)")
      ->capture_default_str();
  app.add_option("--transfer", c.transfer,
                 "epsp/flexrr: move not-yet-started shards from stragglers to pioneers (on/off, for ablation)")
      ->transform(CLI::Transformer(std::map<std::string, bool>{{"on", true}, {"off", false}}))
      ->default_str("on");
  app.add_option("--audit-samples", c.auditSamples,
                 "Debugging: each worker appends the sample ids it trained on to PREFIX.w<worker>")
      ->group("");
  app.add_option("--backup-workers", c.backupWorkers,
                 "syncopt: a round takes the first (groups - b) pushes and drops the rest")
      ->check(CLI::Range(0, 4096))->capture_default_str();
  app.add_option("--scale-updates", c.scaleUpdates,
                 "asp/ssp: scale each update by 1/M (constant, ConSGD) or 1/(staleness+1) (staleness, DynSGD)")
      ->check(CLI::IsMember({"none", "constant", "staleness"}))->capture_default_str();
  app.add_option("--staleness", c.staleness, "SSP bound: how many clocks a worker may run ahead of the slowest")
      ->check(CLI::Range(0, 1000000))->capture_default_str();
  app.add_option("--group-reduce", c.groupReduce,
                 "How a worker group reduces: auto (NCCL for CUDA workers on distinct GPUs when built "
                 "with NCCL, else MPI), mpi, nccl")
      ->check(CLI::IsMember({"auto", "mpi", "nccl"}))->capture_default_str();
  app.add_option("--aggregate", c.aggregate,
                 "How a BSP round (and a worker group) combines gradients: sum (the papers) or mean")
      ->check(CLI::IsMember({"sum", "mean"}))->capture_default_str();
  app.add_option("--peer-timeout", c.peerTimeoutS,
                 "Seconds a rank waits on one peer before declaring it unresponsive")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--recovery", c.recovery,
                 "What a server death does: auto (when launched with mpirun --enable-recovery (Open MPI 4) "
                 "or --with-ft ulfm (Open MPI 5): "
                 "chain with --replicas, else checkpoint; otherwise none), none (the job ends), "
                 "checkpoint, chain, stateless, hybrid (chain + stateless workers)")
      ->check(CLI::IsMember({"auto", "none", "checkpoint", "chain", "stateless", "hybrid"}))
      ->capture_default_str();
  app.add_option("--chain-mode", c.chainMode,
                 "chain/hybrid: sync (a push is acknowledged once the tail applied it) or async "
                 "(the state goes down the chain every --replicate-every steps)")
      ->check(CLI::IsMember({"sync", "async"}))->capture_default_str();
  app.add_option("--replicate-every", c.replicateEvery, "chain async: worker steps between state forwards")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))->capture_default_str();
  app.add_option("--stateless-buffer", c.statelessBuffer,
                 "stateless/hybrid: updates a worker buffers per shard while it is down (more are "
                 "dropped and reported)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))->capture_default_str();
  app.add_option("--backlog-rule", c.backlogRule,
                 "stateless/hybrid: how the buffered updates are applied: sum (one step; lr/10 past 50, "
                 "the paper's rule), mean, staleness (the i-th buffered update weighted 1/(1+i))")
      ->check(CLI::IsMember({"sum", "mean", "staleness"}))->capture_default_str();
  app.add_option("--checkpoint-dir", c.checkpointDir, "Directory of the HDF5 snapshots")
      ->capture_default_str();
  app.add_option("--checkpoint-every", c.checkpointEvery,
                 "Snapshot every N worker steps, or every Ts seconds (0 = never)")
      ->capture_default_str();
  app.add_option("--checkpoint-mode", c.checkpointMode,
                 "sync (the server writes, training waits) or async (copy, write in the background)")
      ->check(CLI::IsMember({"sync", "async"}))->capture_default_str();
  app.add_option("--checkpoint-keep", c.checkpointKeep, "Snapshots kept per shard")
      ->check(CLI::Range(1, 1000000))->capture_default_str();
  app.add_option("--resume", c.resumeDir,
                 "Start from the newest valid snapshots in DIR (same --model and --servers)");
  app.add_option("--heartbeat-ms", c.heartbeatMs, "Heartbeat period of the failure detector")
      ->check(CLI::Range(1, 600000))->capture_default_str();
  app.add_option("--failure-timeout-ms", c.failureTimeoutMs,
                 "Silence after which a rank is declared failed (dead or frozen)")
      ->check(CLI::Range(2, 3600000))->capture_default_str();
  app.add_option("--kill-server", c.killServer,
                 "Injection: shard 0's server SIGKILLs itself at step N or time Ts (list: one per kill)");
  app.add_option("--kill-worker", c.killWorker,
                 "Injection: the last worker SIGKILLs itself at step N or time Ts");
  app.add_option("--downtime", c.downtimeS,
                 "Seconds a replacement waits before taking over (to reproduce an outage)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--straggle", c.straggle,
                 "Injection: RANK:FACTOR[,...] makes that worker rank FACTOR times slower per sample "
                 "(its step takes FACTOR x its real compute time)");
  app.add_option("--straggle-random", c.straggleRandom,
                 "Injection: P:FACTOR makes every worker a FACTOR-times straggler with probability P "
                 "in each iteration (transient stragglers; seeded by --seed)");
  app.add_option("--straggler-theta", c.stragglerTheta,
                 "Straggler projection: a worker whose step time (moving average) exceeds (1 + theta) "
                 "x the median of the workers is a straggler")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--metrics", c.metricsPath, "Write one CSV row per evaluation to this file");
  app.add_option("--summary", c.summaryPath, "Write a JSON summary of the run to this file");
  app.add_option("--eval-every", c.evalEvery,
                 "Evaluate on the test set every N steps or every Ts seconds (0 = every epoch)")
      ->capture_default_str();
  app.add_option("--eval-batch", c.evalBatch, "Samples per forward pass during evaluation")
      ->check(CLI::Range(1, 10000))->capture_default_str();
  app.add_option("--eval-samples", c.evalSamples,
                 "Evaluations during training use the first N test samples (0: all); the final "
                 "accuracy is always on the whole test set")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--progress-every", c.progressSeconds, "Seconds between progress lines")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--log-level", c.logLevel, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))->capture_default_str();
}

}  // namespace phx::api
