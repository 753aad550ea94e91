// The `phoenix` command: CLI11 parses flags into a Config and hands it to the runtime.
// This is the only place that turns errors into exit codes.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <exception>
#include <map>

#include "apps/phoenix/bench_checkpoint.h"
#include "apps/phoenix/bench_kernels.h"
#include "apps/phoenix/bench_recovery.h"
#include "apps/phoenix/bench_pushpull.h"
#include "apps/phoenix/mpi_main.h"
#include "phx_config.h"
#include "recovery/checkpoint.h"
#include "recovery/respawn.h"
#include "runtime/core/config.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/signals.h"
#include "runtime/train/dist_trainer.h"
#include "runtime/train/local_trainer.h"
#include "runtime/transport/mpi/join.h"
#include "runtime/transport/mpi/launch.h"
#include "runtime/transport/mpi/mpi_transport.h"
#include "runtime/transport/mpi/peers.h"

namespace {

// True when this process was started by mpirun/srun (then MPI is initialised, even for 1 rank).
bool launchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

// `phoenix train`: one process, or this rank's role in an MPI job. Returns the exit code.
int runTrain(phx::Config& cfg) {
  if (!cfg.resumeDir.empty() && cfg.checkpointDir == phx::Config{}.checkpointDir)
    cfg.checkpointDir = cfg.resumeDir;  // a resumed run goes on writing where it left off
  if (!launchedByMpi()) {
    phx::train::runLocal(cfg);
    return 0;
  }
  cfg.launchSurvives = phx::transport::launchSurvives();
  cfg.survivorFlag = phx::transport::recoveryLaunchFlag();
  cfg.launchCanSpawn = phx::recovery::MpiRespawner::launchCanSpawn();
  const phx::transport::LaunchSet ls = phx::transport::launchSet();
  cfg.launches = ls.multi() ? std::max(2, ls.count) : 1;
  auto check = [&cfg] {
    cfg.validate();
    cfg.checkFlagsTakeEffect(false);
    std::error_code ec;
    if (!cfg.resumeDir.empty() && !std::filesystem::is_directory(cfg.resumeDir, ec))
      PHX_USER_ERROR("--resume ", cfg.resumeDir, ": no such directory; give the --checkpoint-dir of the job "
                     "to continue, or train from scratch without --resume");
    if (cfg.recovery != "none" && cfg.recovery != "auto" && !cfg.launchSurvives)
      PHX_USER_ERROR("--recovery ", cfg.recovery, " needs the other ranks to survive a death, but this "
                     "launch kills the whole job when one rank dies; launch with `mpirun ",
                     cfg.survivorFlag, " ...` (", phx::transport::mpiName(), "), or pass --recovery none");
  };
  return phx::apps::runUnderMpi([&cfg, &ls](int, int size) {
    MPI_Comm parent = MPI_COMM_NULL;
    MPI_Comm_get_parent(&parent);
    // a standby launch of a job over several hosts waits here until the job needs it
    if (ls.standby) parent = phx::recovery::MpiRespawner::awaitAsStandby(ls.job);
    if (parent != MPI_COMM_NULL) {
      // A replacement started by the survivors (recovery/respawn.h): it takes a dead rank's
      // number and joins the job at the view they send.
      auto j = phx::recovery::MpiRespawner::join(parent, cfg.peerTimeoutS);
      phx::transport::MpiTransport t(j.train, j.rank, j.logicalOf);
      phx::transport::MpiTransport dt(j.det, j.rank, j.logicalOf);
      phx::recovery::MpiRespawner resp(j.base, j.logicalOf, dt, t, {}, cfg.peerTimeoutS);
      if (ls.multi()) resp.useStandbys(ls.job);
      phx::train::Membership m;
      m.respawn = [&resp](const phx::recovery::View& v, const phx::recovery::View& n) {
        return resp.respawn(v, n);
      };
      m.joinView = &j.view;
      phx::train::runDistributed(cfg, t, nullptr, &dt, &m);
    } else if (size == 1) {
      phx::train::runLocal(cfg);
    } else {
      // The failure detector gets a communicator of its own, and rebuilds one more (all
      // duplicated while everyone is alive; only point-to-point traffic goes over the first two).
      MPI_Comm detComm, baseComm;
      const MPI_Comm job = phx::transport::jobComm();  // MPI_COMM_WORLD, or the launches joined
      PHX_MPI_CHECK(MPI_Comm_dup(job, &detComm));
      PHX_MPI_CHECK(MPI_Comm_dup(job, &baseComm));
      phx::transport::recordPeers(job);  // PIDs and hosts, while every rank is alive
      phx::transport::MpiTransport t(job);
      phx::transport::MpiTransport dt(detComm);
      std::vector<int> identity(size);
      for (int i = 0; i < size; ++i) identity[i] = i;
      phx::recovery::MpiRespawner resp(baseComm, identity, dt, t, {}, cfg.peerTimeoutS);
      if (ls.multi()) resp.useStandbys(ls.job);
      phx::train::Membership m;
      if (cfg.spawnReplacements())
        m.respawn = [&resp](const phx::recovery::View& v, const phx::recovery::View& n) {
          return resp.respawn(v, n);
        };
      // A failed rank that is frozen, not dead, would hold mpirun (and the allocation) forever.
      // On this host the survivors end it by PID; on another host under phoenix-launch its
      // launcher does, once told that the job has ended.
      m.atEnd = [](const std::vector<int>& failed) {
        phx::transport::endFailedOnThisHost(failed);
        phx::transport::tellLauncherTheJobEnded(failed);
      };
      phx::train::runDistributed(cfg, t, nullptr, &dt, &m);
    }
  }, check);
}

int runInspect(const std::vector<std::string>& files) {
  int bad = 0;
  for (const std::string& f : files) {
    try {
      std::fputs(phx::recovery::describeSnapshot(f).c_str(), stdout);
    } catch (const phx::UserError& e) {
      std::fprintf(stderr, "phoenix: error: %s\n", e.what());
      ++bad;
    }
  }
  return bad ? 2 : 0;
}

void addTrainFlags(CLI::App& app, phx::Config& c) {
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Phoenix: fault-tolerant parameter-server training for HPC clusters"};
  app.set_version_flag("--version", std::string("phoenix ") + PHX_VERSION);
  app.require_subcommand(1);
  app.set_config("--config", "", "Read flags from an INI or TOML file");

  phx::Config cfg;
  CLI::App* train = app.add_subcommand("train", "Train a model (one process, or a job under mpirun)");
  addTrainFlags(*train, cfg);

  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  phx::apps::KernelBenchOptions kb;
  CLI::App* benchKernels =
      bench->add_subcommand("kernels", "Training throughput (samples/s) per model, batch, threads");
  benchKernels->add_option("--models", kb.models, "Models to measure")->capture_default_str();
  benchKernels->add_option("--batches", kb.batches, "Batch sizes")->capture_default_str();
  benchKernels->add_option("--threads", kb.threads, "Thread counts")->capture_default_str();
  benchKernels->add_option("--device", kb.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  benchKernels->add_option("--seconds", kb.seconds, "Measured seconds per configuration")
      ->check(CLI::PositiveNumber)->capture_default_str();
  benchKernels->add_option("--json", kb.jsonPath, "Also write the results as JSON");

  phx::apps::PushPullBenchOptions pb;
  phx::apps::CheckpointBenchOptions cb;
  CLI::App* benchCkpt = bench->add_subcommand(
      "checkpoint", "HDF5 snapshot write/read MB/s and the step-time cost of sync vs async snapshots");
  benchCkpt->add_option("--model", cb.model, "Model whose state is snapshotted")->capture_default_str();
  benchCkpt->add_option("--batch", cb.batch, "Batch size of the training steps")
      ->check(CLI::Range(1, 65536))->capture_default_str();
  benchCkpt->add_option("--threads", cb.threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  benchCkpt->add_option("--every", cb.every, "Steps between snapshots")->check(CLI::Range(1, 1000000))->capture_default_str();
  benchCkpt->add_option("--steps", cb.steps, "Measured steps per mode and round")
      ->check(CLI::Range(1, 100000000))->capture_default_str();
  benchCkpt->add_option("--rounds", cb.rounds, "Rounds of none/sync/async")->check(CLI::Range(1, 100))->capture_default_str();
  benchCkpt->add_option("--io-repeats", cb.ioRepeats, "Snapshots written and read for MB/s")
      ->check(CLI::Range(1, 1000))->capture_default_str();
  benchCkpt->add_option("--dir", cb.dir, "Scratch directory (removed at the end)")->capture_default_str();
  benchCkpt->add_option("--json", cb.jsonPath, "Also write the results as JSON");

  phx::apps::RecoveryBenchOptions rb;
  rb.mpirun = std::string("mpirun --oversubscribe --bind-to none ") + phx::transport::recoveryLaunchFlag();
  CLI::App* benchRec = bench->add_subcommand(
      "recovery", "Detection and recovery times per recovery mode over real kills (mpirun jobs)");
  benchRec->add_option("--modes", rb.modes,
                       "checkpoint-sync, checkpoint-async, chain-sync, chain-async, stateless, hybrid")
      ->delimiter(',')->capture_default_str();
  benchRec->add_option("--sync", rb.sync, "Training mode of the jobs")
      ->check(CLI::IsMember({"bsp", "asp", "ssp"}))->capture_default_str();
  benchRec->add_option("--kills", rb.kills, "Jobs (one kill each) per mode")->check(CLI::Range(1, 10000))->capture_default_str();
  benchRec->add_option("--ranks", rb.ranks, "Ranks per job (mpirun -n)")->check(CLI::Range(4, 4096))->capture_default_str();
  benchRec->add_option("--model", rb.model, "Model trained")->capture_default_str();
  benchRec->add_option("--steps", rb.steps, "Steps per job (the kill comes in the 2nd-3rd fifth)")
      ->check(CLI::Range(20, 100000000))->capture_default_str();
  benchRec->add_option("--spares", rb.spares, "Spares per job (0: a replacement process is spawned)")
      ->check(CLI::Range(0, 4))->capture_default_str();
  benchRec->add_option("--mpirun", rb.mpirun, "Launcher command (must let survivors live)")->capture_default_str();
  benchRec->add_option("--timeout", rb.timeoutS, "Seconds per job before it is killed")
      ->check(CLI::PositiveNumber)->capture_default_str();
  benchRec->add_option("--seed", rb.seed, "Seed of the kill steps")->capture_default_str();
  benchRec->add_option("--dir", rb.dir, "Where the jobs' logs and summaries go")->capture_default_str();
  benchRec->add_flag("--freeze", rb.freeze,
                     "SIGSTOP the server by PID instead of killing it (resumed after detection)");
  benchRec->add_option("--json", rb.jsonPath, "Also write the results as JSON");

  CLI::App* benchPushPull = bench->add_subcommand(
      "pushpull", "Push+pull per step vs MPI_Allreduce of the same size (run under mpirun)");
  benchPushPull->add_option("--servers", pb.servers, "Server ranks (the rest are workers)")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  benchPushPull->add_option("--sizes", pb.sizes, "Gradient sizes in floats")->capture_default_str();
  benchPushPull->add_option("--seconds", pb.seconds, "Measured seconds per size and method")
      ->check(CLI::PositiveNumber)->capture_default_str();
  benchPushPull->add_option("--json", pb.jsonPath, "Also write the results as JSON");

  std::vector<std::string> inspectFiles;
  CLI::App* inspect = app.add_subcommand("inspect", "Check and print HDF5 snapshots");
  inspect->add_option("files", inspectFiles, "Snapshot files (DIR/shardS/snap-*.h5)")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (train->parsed()) {
      // the flags given (a flag given at its default value, e.g. a script's `--spares 0`, changes
      // nothing and is not counted: Config::checkFlagsTakeEffect)
      for (const CLI::Option* o : train->get_options())
        if (o->count() > 0 && !o->get_lnames().empty() &&
            !(o->results().size() == 1 && o->results()[0] == o->get_default_str()))
          cfg.given.push_back("--" + o->get_lnames().front());
      // Before MPI, OpenMP or CUDA start a thread: every thread inherits the blocked stop
      // signals, and only the signal thread takes them (runtime/core/signals.h).
      phx::signals::startSignalThread();
      phx::log::setLevel(phx::log::parseLevel(cfg.logLevel));
      return runTrain(cfg);
    }
    if (inspect->parsed()) return runInspect(inspectFiles);
    if (benchPushPull->parsed()) return phx::apps::runPushPullBench(pb);
    if (benchRec->parsed()) {
      phx::kernels::parseModelSpec(rb.model);
      return phx::apps::runRecoveryBench(rb);
    }
    if (benchCkpt->parsed()) {
      phx::kernels::parseModelSpec(cb.model);
      return phx::apps::runCheckpointBench(cb);
    }
    if (benchKernels->parsed()) {
      for (const auto& m : kb.models) phx::kernels::parseModelSpec(m);
      return phx::apps::runKernelBench(kb);
    }
  } catch (const phx::UserError& e) {
    std::fprintf(stderr, "phoenix: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "phoenix: fatal: %s\n", e.what());
    return 1;
  }
  return 0;
}
