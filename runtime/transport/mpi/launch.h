// What the MPI launcher of this job does when a rank dies, and how to ask it to keep the
// survivors. Two MPIs are supported (docs/recovery.md "Launching"):
//   Open MPI 4.x  `mpirun --enable-recovery`  (ranks see OMPI_MCA_orte_enable_recovery=1)
//   Open MPI 5.x  `mpirun --with-ft ulfm`     (ranks see OMPI_MCA_mpi_ft_enable=1; real ULFM)
// Other launchers (srun, MPICH) can assert it with PHX_LAUNCH_SURVIVES=1.
#pragma once

#include <string>

namespace phx::transport {

// The mpirun flag that keeps survivors alive for the MPI this binary was built against.
const char* recoveryLaunchFlag();
// "Open MPI 5.0.7" and the like (compile-time version of the MPI headers).
std::string mpiName();
// Whether this process was started by a launch that keeps survivors alive (reads the
// environment only: callable before MPI_Init).
bool launchSurvives();
// Whether this process was started by Open MPI's mpirun with its survivor flag (the launch that
// can also spawn replacement processes; PHX_LAUNCH_SURVIVES alone, e.g. under srun, cannot).
bool launchedByMpirunWithSurvivors();

}  // namespace phx::transport
