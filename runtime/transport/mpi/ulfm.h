// The real-ULFM path (User-Level Failure Mitigation: Open MPI 5 built with ULFM, MPICH with
// it enabled). Compiled when <mpi-ext.h> provides MPIX_ERR_PROC_FAILED; with the MPIs on the
// development machine it is absent and every function here degrades to "the library reports
// nothing" (shared/infra-notes.md), leaving detection to the heartbeats of recovery/detector.h.
//
// What Phoenix uses it for: (1) the first detection source: the failed group of the detector's
// communicator (MPIX_Comm_get_failed, polled every detector tick) and calls that fail with
// MPIX_ERR_PROC_FAILED name the failed ranks, which the detector declares at once instead of
// waiting for the heartbeat timeout (heartbeats stay for what the MPI cannot see: a frozen rank); (2) the bounded end of a job
// after failures: revoke + shrink the world to the survivors and agree on the outcome there.
// Everything else (who serves which shard, epochs) stays with the coordinator-issued views, so
// both paths behave the same.
#pragma once

#include <mpi.h>

#include <vector>

#if defined(__has_include)
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif
#endif

#if defined(MPIX_ERR_PROC_FAILED)
#define PHX_HAVE_ULFM 1
#else
#define PHX_HAVE_ULFM 0
#endif

namespace phx::transport::ulfm {

inline constexpr bool kCompiled = PHX_HAVE_ULFM != 0;
// Compiled and enabled for this launch (Open MPI 5: `mpirun --with-ft ulfm` sets
// OMPI_MCA_mpi_ft_enable=1; without it the ULFM calls are not to be used: a job launched without
// fault tolerance ends at the first death anyway).
bool active();

// Whether an MPI return code reports a failed process or a revoked communicator.
bool isProcessFailure(int rc);
// The ranks of comm the library knows have failed (MPIX_Comm_get_failed; nothing is
// acknowledged); empty without ULFM.
std::vector<int> failedRanks(MPI_Comm comm);
// Revokes comm and returns a communicator of its survivors (MPI_COMM_NULL without ULFM).
MPI_Comm revokeAndShrink(MPI_Comm comm);
// Fault-tolerant agreement: the AND of `ok` over the survivors of comm (without ULFM: ok).
bool agree(MPI_Comm comm, bool ok);

}  // namespace phx::transport::ulfm
