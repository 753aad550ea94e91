// The frame of a training job under mpirun, shared by `phoenix train` and the library API
// (runtime/api/phoenix.h, the Python module): the flags checked alike on every rank, MPI up
// (runtime/api/mpi_main.h), the job's communicators (one mpirun, or one per host joined by
// phoenix-launch), failure detection, replacements for dead servers, and the roles. Server-side
// ranks (servers, replicas, spares, replacement processes) serve here; a worker rank runs the
// caller's `worker` body with the rank's DistJob.
#pragma once

#include <functional>

#include "runtime/core/config.h"
#include "runtime/train/dist_trainer.h"

namespace phx::api {

// True when this process was started by mpirun/srun (then MPI is initialised, even for 1 rank).
bool launchedByMpi();
// Defaults that depend on other flags (a resumed run goes on writing where it left off).
void prepareTrainConfig(Config& cfg);
// Runs this process's part of the job and returns its exit code (errors become one line and
// a code: UserError 2, a peer's failure 3, anything else 1). `single` runs instead when the job
// has one process.
int runTrainJob(Config& cfg, const std::function<void(train::DistJob&)>& worker,
                const std::function<void()>& single);

}  // namespace phx::api
