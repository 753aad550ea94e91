#include "runtime/transport/mpi/join.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/transport/mpi/mpi_transport.h"
#include "runtime/transport/mpi/watchdog.h"

namespace phx::transport {

namespace {

MPI_Comm g_job = MPI_COMM_NULL;

std::string serviceName(const LaunchSet& ls, int k) { return detail::concat("phoenix.", ls.job, ".", k); }

// Launch k's root: the port of the job it joins, once the job has published it.
std::string lookUp(const std::string& name, double timeoutS) {
  char port[MPI_MAX_PORT_NAME] = "";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutS);
  // name-service errors go to MPI_COMM_WORLD's handler: return them while the name is not there
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  while (MPI_Lookup_name(name.c_str(), MPI_INFO_NULL, port) != MPI_SUCCESS) {
    if (std::chrono::steady_clock::now() > deadline) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return port;
}

MPI_Comm merged(MPI_Comm inter, bool high) {
  MPI_Comm m = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Intercomm_merge(inter, high ? 1 : 0, &m));
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(m, MPI_ERRORS_RETURN));
  return m;
}

}  // namespace

LaunchSet launchSet() {
  LaunchSet ls;
  const char* l = std::getenv("PHX_LAUNCH");
  if (!l || !*l) return ls;
  const char* j = std::getenv("PHX_JOB");
  ls.job = j ? j : "";
  if (std::string(l) == "join") {
    ls.standby = true;
    if (ls.job.empty()) PHX_USER_ERROR("PHX_LAUNCH=join needs PHX_JOB (use phoenix-launch --join)");
    return ls;
  }
  char slash = 0;
  if (std::sscanf(l, "%d%c%d", &ls.index, &slash, &ls.count) != 3 || slash != '/' || ls.count < 1 ||
      ls.index < 0 || ls.index >= ls.count)
    PHX_USER_ERROR("PHX_LAUNCH='", l, "' is not K/N with 0 <= K < N (set by phoenix-launch)");
  if (ls.count > 1 && ls.job.empty())
    PHX_USER_ERROR("PHX_LAUNCH is set but PHX_JOB is not (start multi-host jobs with phoenix-launch)");
  return ls;
}

MPI_Comm jobComm() { return g_job == MPI_COMM_NULL ? MPI_COMM_WORLD : g_job; }

MPI_Comm joinLaunches(double timeoutS) {
  const LaunchSet ls = launchSet();
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  // a process spawned by the job, or a standby launch (PHX_LAUNCH=join), joins later, through
  // recovery/respawn.h, not here
  if (ls.count == 1 || parent != MPI_COMM_NULL || ls.standby) return g_job = MPI_COMM_WORLD;
  const auto t0 = std::chrono::steady_clock::now();
  int wrank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  Watchdog wd(timeoutS, detail::concat("joining launch ", ls.index, " of ", ls.count, " to job ", ls.job),
              "did every host's launch start, with the same --ompi-server? (phoenix-launch "
              "starts them; docs/user-guide.md \"Several hosts\")");
  MPI_Comm job = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &job));
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(job, MPI_ERRORS_RETURN));
  if (ls.index > 0) {
    // connect to the job made of launches 0..K-1
    std::string port(MPI_MAX_PORT_NAME, '\0');
    if (wrank == 0) {
      port = lookUp(serviceName(ls, ls.index), timeoutS);
      if (port.empty())
        PHX_USER_ERROR("launch ", ls.index, " of job ", ls.job, " found no published port '",
                       serviceName(ls, ls.index), "' within ", timeoutS,
                       " s: is launch 0 running with the same --ompi-server?");
    }
    MPI_Comm inter = MPI_COMM_NULL;
    PHX_MPI_CHECK(MPI_Comm_connect(port.c_str(), MPI_INFO_NULL, 0, job, &inter));
    job = merged(inter, true);
  }
  for (int k = ls.index + 1; k < ls.count; ++k) {
    // the job so far accepts launch k
    int jrank = 0;
    MPI_Comm_rank(job, &jrank);
    char port[MPI_MAX_PORT_NAME] = "";
    const std::string name = serviceName(ls, k);
    if (jrank == 0) {
      PHX_MPI_CHECK(MPI_Open_port(MPI_INFO_NULL, port));
      PHX_MPI_CHECK(MPI_Publish_name(name.c_str(), MPI_INFO_NULL, port));
    }
    MPI_Comm inter = MPI_COMM_NULL;
    PHX_MPI_CHECK(MPI_Comm_accept(port, MPI_INFO_NULL, 0, job, &inter));
    if (jrank == 0) {
      MPI_Unpublish_name(name.c_str(), MPI_INFO_NULL, port);
      MPI_Close_port(port);
    }
    job = merged(inter, false);
  }
  int size = 0, rank = 0;
  MPI_Comm_size(job, &size);
  MPI_Comm_rank(job, &rank);
  if (rank == 0)
    log::info("job ", ls.job, ": ", ls.count, " launches joined, ", size, " ranks, in ",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s");
  return g_job = job;
}

}  // namespace phx::transport
