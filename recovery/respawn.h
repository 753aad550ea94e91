// Replacements for dead ranks when no spare is left: the survivors start a new process with
// MPI_Comm_spawn, and it takes the dead rank's number, so the job keeps its size, every view
// stays indexed by the same ranks, and the new process takes over like a spare would (snapshot
// restore, chain tail join, stateless rejoin: recovery/view.h Respawn, runtime/train).
//
// The protocol (collective over the ranks alive in the view that asks for it, on the
// survivors' detector threads, so no training thread blocks in it):
//  1. The survivors' communicator, from the rebuild communicator (a duplicate of
//     MPI_COMM_WORLD made at start, then of each merge). Under ULFM (Open MPI 5):
//     MPIX_Comm_shrink, checked to hold exactly the view's survivors. Under Open MPI 4.1:
//     MPI_Comm_create_group over the view's survivors, collective over them only. The view
//     decides who is in: a rank the heartbeats excluded while the MPI still sees it (a frozen
//     process) would hold a shrink up until it dies.
//  2. Agreement that every survivor acts on the same view (epoch and membership):
//     MPIX_Comm_agree under ULFM (fault tolerant: a survivor that dies meanwhile makes it fail
//     on every other survivor instead of hanging it), MPI_Allreduce otherwise. On a failure in
//     this step under ULFM the survivors' communicator is revoked and shrunk, and the respawn
//     is abandoned (the next view deals with the new failure).
//  3. MPI_Comm_spawn of one process per dead rank (root: the lowest survivor), then
//     MPI_Intercomm_merge; the merged communicator is duplicated three times (detector,
//     training, next rebuild). The root sends each new process its rank number, the map from
//     merged ranks to job ranks, and the view it joins at.
//  4. Each survivor's transports get the new route to the reborn rank (MpiTransport::stageRoute;
//     it takes effect when a view names the rank alive again). Survivors keep talking to each
//     other over the communicators they had.
// Bounded: a watchdog ends the process with a one-line error if a step does not return within
// the timeout (a failure during MPI_Comm_spawn itself cannot be recovered under Open MPI 4.1).
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "recovery/view.h"
#include "runtime/transport/mpi/mpi_transport.h"

namespace phx::recovery {

class MpiRespawner {
 public:
  // base: the rebuild communicator (a duplicate of MPI_COMM_WORLD), logicalOf: its ranks'
  // job ranks; argv: the command line of a replacement (this process's own); det/train: this
  // process's transports (they must outlive the respawner).
  MpiRespawner(MPI_Comm base, std::vector<int> logicalOf, transport::MpiTransport& det,
               transport::MpiTransport& train, std::vector<std::string> argv, double timeoutS);

  // Starts v.respawn's processes (collective over v's alive ranks). next: the view they join
  // at (sent by the root). True on every survivor, or false on every survivor.
  bool respawn(const View& v, const View& next);

  // In a process started by respawn(): the parent's merge, this process's communicators and
  // job rank, and the view it joins at.
  struct Joined {
    MPI_Comm det = MPI_COMM_NULL, train = MPI_COMM_NULL, base = MPI_COMM_NULL;
    int rank = -1;
    std::vector<int> logicalOf;
    View view;
  };
  static Joined join(MPI_Comm parent, double timeoutS);

  // Whether this launch can spawn processes (Open MPI's mpirun, not srun).
  static bool launchCanSpawn();

  // Jobs over several hosts (runtime/transport/mpi/join.h): replacements come from standby
  // launches (`phoenix-launch --join HOST:1`) instead of MPI_Comm_spawn. A standby publishes a
  // port under "phoenix.JOB.standby.<slot>" and waits in MPI_Comm_accept; when a view needs a
  // replacement the survivors' root looks the slots up, and the survivors connect to the first
  // one found (collective), merge, and boot it as they would a spawned process. One rank per
  // respawn (a view that needs several replacements at once gets none: its shards are lost).
  void useStandbys(std::string job) { standbyJob_ = std::move(job); }
  // In a standby launch (one process): publish, wait until a job needs this process (or the
  // job's name service goes away: the job ended, then this process exits 0), and return the
  // intercommunicator to the survivors, to pass to join().
  static MPI_Comm awaitAsStandby(const std::string& job);

 private:
  MPI_Comm base_;
  std::vector<int> logicalOf_;
  transport::MpiTransport& det_;
  transport::MpiTransport& train_;
  std::vector<std::string> argv_;
  double timeoutS_;
  std::string standbyJob_;  // non-empty: replacements come from standby launches
  // the intercommunicator to k new processes (spawned, or a standby), MPI_COMM_NULL on failure
  MPI_Comm startProcesses(MPI_Comm surv, int k);
};

}  // namespace phx::recovery
