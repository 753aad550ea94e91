#include "runtime/transport/mpi/launch.h"

#include <mpi.h>

#include <cstdlib>

#include "runtime/core/error.h"

namespace phx::transport {

const char* recoveryLaunchFlag() {
#if defined(OMPI_MAJOR_VERSION) && OMPI_MAJOR_VERSION >= 5
  return "--with-ft ulfm";
#else
  return "--enable-recovery";
#endif
}

std::string mpiName() {
#if defined(OMPI_MAJOR_VERSION)
  return detail::concat("Open MPI ", OMPI_MAJOR_VERSION, ".", OMPI_MINOR_VERSION, ".",
                        OMPI_RELEASE_VERSION);
#elif defined(MPICH_VERSION)
  return std::string("MPICH ") + MPICH_VERSION;
#else
  return "MPI";
#endif
}

namespace {
bool envTrue(const char* name) {
  const char* s = std::getenv(name);
  return s && (std::string(s) == "1" || std::string(s) == "true");
}
}  // namespace

bool launchedByMpirunWithSurvivors() {
  // Open MPI 4 (--enable-recovery) or Open MPI 5 (--with-ft ulfm)
  return envTrue("OMPI_MCA_orte_enable_recovery") || envTrue("OMPI_MCA_mpi_ft_enable");
}

bool launchSurvives() { return launchedByMpirunWithSurvivors() || envTrue("PHX_LAUNCH_SURVIVES"); }

}  // namespace phx::transport
