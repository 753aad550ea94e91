// `phoenix bench recovery`: detection and recovery times per recovery mode, over real kills.
// Each kill is a whole mpirun job (launched from this process, bounded by a timeout, stopped by
// its process group id) whose shard-0 server SIGKILLs itself at a seeded random step; the
// job's summary JSON gives detected_ms (kill -> declared dead) and recovered_ms (kill -> first
// update applied by the new server). Medians and ranges per mode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace phx::apps {

struct RecoveryBenchOptions {
  std::vector<std::string> modes{"checkpoint-sync", "checkpoint-async", "chain-sync",
                                 "chain-async",     "stateless",        "hybrid"};
  std::string sync = "asp";
  int kills = 10;        // jobs (one kill each) per mode
  int ranks = 7;         // mpirun -n (with one spare; each spare fewer is one rank fewer)
  int spares = 1;        // 0: no spare, a replacement process is spawned for the dead server
  std::string model = "mlp";
  int steps = 150;
  // set by main.cc: `mpirun --oversubscribe --bind-to none` + the survivor flag of the MPI in use
  std::string mpirun;
  double timeoutS = 180;  // per job
  uint64_t seed = 7;
  // Freeze instead of kill: the shard-0 server is SIGSTOPped from outside (by PID, as an
  // operator or a swapping node would), resumed once the others went on (it is fenced and
  // leaves); detection is then measured from its last heartbeat.
  bool freeze = false;
  std::string dir = "phoenix-bench-recovery";
  std::string jsonPath;
};

int runRecoveryBench(const RecoveryBenchOptions& opt);

}  // namespace phx::apps
