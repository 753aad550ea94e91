// A job made of several launches: one `mpirun` per host, so that losing a whole host (its
// processes and its MPI daemon) ends only that host's launch, not the job (inside one mpirun,
// Open MPI ends every process when a daemon is lost; shared/infra-notes.md "Test hosts").
// apps/scripts/phoenix-launch starts them; docs/architecture.md "Jobs over several hosts".
//
// Each launch's ranks see PHX_LAUNCH=K/N (this launch is K of N) and PHX_JOB=NAME, and every
// launch was given `--ompi-server file:URI` of one running ompi-server (its name service).
// At start the launches join in order into one intracommunicator, the job communicator:
//   launch 0 is the job; for K = 1..N-1 the job's rank 0 opens a port and publishes it as
//   "phoenix.NAME.K"; the job (every rank of launches 0..K-1) accepts, launch K (all its ranks)
//   looks the name up and connects; both sides merge (the job's ranks first). So job ranks are
//   launch 0's ranks, then launch 1's, ..., and roles follow them (ps/layout.h).
// Over the job communicator only point-to-point traffic with deadlines is used afterwards
// (mpi_transport.h), which is what lets the other launches live on after one of them is lost.
// The join is bounded: a launch that does not join within the timeout ends every waiting rank
// with a one-line error naming the launch.
#pragma once

#include <mpi.h>

#include <string>

namespace phx::transport {

struct LaunchSet {
  int index = 0, count = 1;  // this launch, and how many launches make the job
  std::string job;           // the job's name in the name service
  bool standby = false;      // PHX_LAUNCH=join: a replacement launch for a running job
  bool multi() const { return count > 1 || standby; }  // part of a job over several launches
};
// From PHX_LAUNCH (K/N, or "join" for a standby) / PHX_JOB (count 1 when unset). Throws UserError when they are malformed.
LaunchSet launchSet();

// Joins the launches (collective over every rank of every launch; a no-op for one launch) and
// returns the job communicator (MPI_COMM_WORLD for one launch). Call once, after MPI_Init.
MPI_Comm joinLaunches(double timeoutS);
// The job communicator after joinLaunches (MPI_COMM_WORLD before it).
MPI_Comm jobComm();

}  // namespace phx::transport
