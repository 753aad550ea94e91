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
#include "runtime/api/job.h"
#include "runtime/api/mpi_main.h"
#include "runtime/api/train_flags.h"
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

// `phoenix train`: one process, or this rank's role in an MPI job. Returns the exit code.
int runTrain(phx::Config& cfg) {
  phx::api::prepareTrainConfig(cfg);
  if (!phx::api::launchedByMpi()) {
    phx::train::runLocal(cfg);
    return 0;
  }
  return phx::api::runTrainJob(cfg, [&cfg](phx::train::DistJob& job) {
    const phx::data::FashionMnist data = phx::data::loadFashionMnist(cfg.dataDir);
    job.trainBuiltin(data);
  }, [&cfg] { phx::train::runLocal(cfg); });
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


}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Phoenix: fault-tolerant parameter-server training for HPC clusters"};
  app.set_version_flag("--version", std::string("phoenix ") + PHX_VERSION);
  app.require_subcommand(1);
  app.set_config("--config", "", "Read flags from an INI or TOML file");

  phx::Config cfg;
  CLI::App* train = app.add_subcommand("train", "Train a model (one process, or a job under mpirun)");
  phx::api::addTrainFlags(*train, cfg);

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
