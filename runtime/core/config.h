// The run configuration: every flag of `phoenix train` lands here (apps/ parses, runtime/
// consumes), so that tests and library code can build a Config without a command line.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace phx {

// "N" (steps) or "Ns" (seconds); 0 means "at the end of every epoch".
struct Schedule {
  int64_t steps = 0;
  double seconds = 0.0;
  bool isTime() const { return seconds > 0.0; }
  bool empty() const { return steps == 0 && seconds == 0.0; }
};
// Parses "500" or "30s"; throws UserError naming the flag otherwise.
Schedule parseSchedule(const std::string& flag, const std::string& value);

// --straggle and --straggle-random, parsed.
struct StraggleSpec {
  std::vector<std::pair<int, double>> fixed;  // rank -> factor
  double p = 0, factor = 1;                   // random: probability and factor
  // The slowdown of `rank` at iteration `step` (1 = none); deterministic per seed, rank, step.
  double factorFor(uint64_t seed, int rank, int64_t step) const;
};

struct Config {
  // model and data
  std::string model = "cnn";
  std::string dataDir = "/usr/share/datasets/fashion-mnist";
  int batch = 32;
  int epochs = 3;
  int64_t steps = 0;  // per worker; 0 = run `epochs` epochs
  uint64_t seed = 0;
  // optimizer
  double lr = 0.02;
  // < 0: chosen from --sync (momentumFor): 0.9 for bsp and one process, 0.8 for asp/ssp, whose
  // stale gradients already act as extra momentum (Mitliagkas et al., 2016).
  double momentum = -1;
  double weightDecay = 0.0;
  bool nesterov = false;
  std::string lrSchedule = "cosine";  // cosine (to 0 over the run) | constant
  // execution
  std::string device = "auto";  // cpu | cuda | auto
  int threads = 0;              // 0 = OpenMP's default (OMP_NUM_THREADS or all cores)
  // parameter-server job (used when started under mpirun with more than one rank)
  int servers = 1;
  int replicas = 0;
  int spares = 0;
  // auto | on | off: start a replacement process (MPI_Comm_spawn) for a dead server when no
  // spare or replica is left (auto: when the launch is Open MPI's mpirun with survivors)
  std::string spawn = "auto";
  bool launchCanSpawn = false;  // set by apps/: the launcher can start processes (mpirun)
  int groupSize = 1;
  std::string sync = "bsp";       // bsp | asp | ssp | syncopt | consgd | dynsgd | flexrr | epsp
  int staleness = 3;              // SSP bound s
  int backupWorkers = 0;          // syncopt: a round closes with the first workers - b pushes
  std::string scaleUpdates = "none";  // asp/ssp: none | constant (ConSGD) | staleness (DynSGD)
  // EPSP (--sync epsp) and FlexRR (--sync flexrr): an iteration is `shards` micro-batches of the
  // worker's batch; EPSP runs up to maxParallelism of them at once (lanes) and both move
  // not-yet-started shards from stragglers to pioneers when transfer is on.
  std::string epspMode = "enforced";  // enforced (a barrier per clock) | slack (bound --staleness)
  int shards = 4;
  int maxParallelism = 4;
  bool transfer = true;
  // Debugging/tests: every worker appends the training-sample ids it processed to
  // PREFIX.w<worker> (one "epoch id" line each); "" = off.
  std::string auditSamples;
  std::string aggregate = "sum";  // how a BSP round combines gradients: sum (the papers) | mean
  // How a worker group reduces: auto (NCCL when every member is a CUDA worker on its own GPU
  // and the build has NCCL, else MPI point-to-point) | mpi | nccl (an error when not possible).
  std::string groupReduce = "auto";
  double peerTimeoutS = 120;      // longest wait on one peer before it is declared unresponsive
  // recovery (recovery/, docs/recovery.md)
  // auto | none | checkpoint | chain | stateless | hybrid (auto: when the launch lets
  // survivors live, chain with --replicas, else checkpoint; none otherwise)
  std::string recovery = "auto";
  std::string checkpointDir = "phoenix-run/checkpoints";
  std::string checkpointEvery = "100";  // worker steps, or "Ns" seconds; 0 = never
  std::string checkpointMode = "async"; // sync | async
  int checkpointKeep = 3;
  std::string resumeDir;                // start from the newest valid snapshots in this dir
  std::string chainMode = "sync";       // chain/hybrid: sync (ack at the tail) | async
  int64_t replicateEvery = 100;         // chain async: worker steps between state forwards
  int64_t statelessBuffer = 1000;       // stateless/hybrid: updates a worker may buffer per shard
  std::string backlogRule = "sum";      // stateless/hybrid: sum | mean | staleness
  int heartbeatMs = 100;
  int failureTimeoutMs = 500;
  std::string killServer;   // "AT[,AT...]": shard 0's server SIGKILLs itself at step or time AT
  std::string killWorker;   // "AT": the last worker SIGKILLs itself at step or time AT
  double downtimeS = 0;     // a replacement waits this long before taking over
  // stragglers (issue 5): "RANK:FACTOR[,...]" makes worker rank RANK FACTOR times slower per
  // sample; "P:FACTOR" makes each worker a straggler with probability P in each iteration
  std::string straggle;
  std::string straggleRandom;
  double stragglerTheta = 0.2;  // projection: a straggler's step average exceeds (1 + theta) x median
  bool launchSurvives = false;  // set by apps/: the MPI launch keeps survivors alive
  int launches = 1;             // set by apps/: mpiruns joined into this job (one per host)
  // set by apps/: the mpirun flag that keeps survivors alive with the MPI in use
  std::string survivorFlag = "--enable-recovery";
  // outputs
  std::string metricsPath;
  std::string summaryPath;
  std::string evalEvery = "0";
  int evalBatch = 500;
  int evalSamples = 0;  // evaluations during training use the first N test samples (0: all)
  double progressSeconds = 2.0;
  std::string logLevel = "info";

  bool shardedSync() const { return sync == "epsp" || sync == "flexrr"; }
  // The momentum in effect: --momentum when given, else the sync-dependent default.
  double effectiveMomentum() const;

  // "auto" resolved: checkpoint when the launch lets survivors live, else none.
  std::string effectiveRecovery() const;
  // Whether replacements are spawned (--spawn, the launch, and a recovery mode).
  bool spawnReplacements() const;
  // --kill-server / --kill-worker parsed ("200", "30s", "200,400").
  std::vector<Schedule> killServerAt() const;
  std::vector<Schedule> killWorkerAt() const;
  // The slowdown of `rank` at iteration `step` from --straggle and --straggle-random (1 = none):
  // its step takes FACTOR times its real compute time (slower hardware, not a fixed sleep).
  double straggleFactor(int rank, int64_t step) const { return straggleSpec().factorFor(seed, rank, step); }
  StraggleSpec straggleSpec() const;  // parsed once by the worker loop, not per step
  // The ranks --straggle names (checked against the job's workers by the runtime).
  std::vector<int> straggleRanks() const;

  // Throws UserError for values that cannot work, naming the flag and what is accepted.
  void validate() const;

  // The flags given on the command line or in a --config file ("--staleness", ...; set by
  // apps/). A flag not listed keeps its default.
  std::vector<std::string> given;
  bool isGiven(const std::string& flag) const;
  // No flag silently ignored: throws UserError naming the first given flag that would have no
  // effect in this run and why (in one process, the flags of a job; in a job, the flags of
  // another sync or recovery mode than the one chosen).
  void checkFlagsTakeEffect(bool oneProcess) const;
  // One process: snapshots are written with --recovery checkpoint, or with auto when a
  // --checkpoint-* flag or --resume is given.
  bool localSnapshots() const;
};

// The learning rate of `step` (0-based) in a run of totalSteps under cfg.lrSchedule.
double learningRate(const Config& cfg, int64_t step, int64_t totalSteps);

}  // namespace phx
