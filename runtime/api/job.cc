#include "runtime/api/job.h"

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "recovery/respawn.h"
#include "runtime/api/mpi_main.h"
#include "runtime/core/error.h"
#include "runtime/transport/mpi/join.h"
#include "runtime/transport/mpi/launch.h"
#include "runtime/transport/mpi/mpi_transport.h"
#include "runtime/transport/mpi/peers.h"

namespace phx::api {

bool launchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

void prepareTrainConfig(Config& cfg) {
  if (!cfg.resumeDir.empty() && cfg.checkpointDir == Config{}.checkpointDir)
    cfg.checkpointDir = cfg.resumeDir;  // a resumed run goes on writing where it left off
}

int runTrainJob(Config& cfg, const std::function<void(train::DistJob&)>& worker,
                const std::function<void()>& single) {
  cfg.launchSurvives = transport::launchSurvives();
  cfg.survivorFlag = transport::recoveryLaunchFlag();
  cfg.launchCanSpawn = recovery::MpiRespawner::launchCanSpawn();
  const transport::LaunchSet ls = transport::launchSet();
  cfg.launches = ls.multi() ? std::max(2, ls.count) : 1;
  auto check = [&cfg] {
    cfg.validate();
    cfg.checkFlagsTakeEffect(false);
    std::error_code ec;
    if (!cfg.resumeDir.empty() && !std::filesystem::is_directory(cfg.resumeDir, ec))
      PHX_USER_ERROR("--resume ", cfg.resumeDir, ": no such directory; give the --checkpoint-dir of the job "
                     "to continue, or train from scratch without --resume");
    if (cfg.recovery != "none" && cfg.recovery != "auto" && !cfg.launchSurvives)
      PHX_USER_ERROR("--recovery ", cfg.recovery, " needs the other ranks to survive a death, but this "
                     "launch kills the whole job when one rank dies; launch with `mpirun ",
                     cfg.survivorFlag, " ...` (", transport::mpiName(), "), or pass --recovery none");
  };
  return runUnderMpi([&](int, int size) {
    MPI_Comm parent = MPI_COMM_NULL;
    MPI_Comm_get_parent(&parent);
    // a standby launch of a job over several hosts waits here until the job needs it
    if (ls.standby) parent = recovery::MpiRespawner::awaitAsStandby(ls.job);
    if (parent != MPI_COMM_NULL) {
      // A replacement started by the survivors (recovery/respawn.h): it takes a dead rank's
      // number and joins the job at the view they send, with the job's spec.
      auto j = recovery::MpiRespawner::join(parent, cfg.peerTimeoutS);
      transport::MpiTransport t(j.train, j.rank, j.logicalOf);
      transport::MpiTransport dt(j.det, j.rank, j.logicalOf);
      recovery::MpiRespawner resp(j.base, j.logicalOf, dt, t, {}, cfg.peerTimeoutS);
      if (ls.multi()) resp.useStandbys(ls.job);
      train::Membership m;
      m.respawn = [&resp](const recovery::View& v, const recovery::View& n) { return resp.respawn(v, n); };
      m.joinView = &j.view;
      m.joinSpec = &j.spec;
      m.onSpec = [&resp](const std::vector<unsigned char>& spec) { resp.setSpec(spec); };
      train::DistJob job(cfg, t, &dt, &m);
      job.serve();
      job.finish();
    } else if (size == 1) {
      single();
    } else {
      // The failure detector gets a communicator of its own, and rebuilds one more (all
      // duplicated while everyone is alive; only point-to-point traffic goes over the first two).
      MPI_Comm detComm, baseComm;
      const MPI_Comm jobComm = transport::jobComm();  // MPI_COMM_WORLD, or the launches joined
      PHX_MPI_CHECK(MPI_Comm_dup(jobComm, &detComm));
      PHX_MPI_CHECK(MPI_Comm_dup(jobComm, &baseComm));
      transport::recordPeers(jobComm);  // PIDs and hosts, while every rank is alive
      transport::MpiTransport t(jobComm);
      transport::MpiTransport dt(detComm);
      std::vector<int> identity(size);
      for (int i = 0; i < size; ++i) identity[i] = i;
      recovery::MpiRespawner resp(baseComm, identity, dt, t, {}, cfg.peerTimeoutS);
      if (ls.multi()) resp.useStandbys(ls.job);
      train::Membership m;
      if (cfg.spawnReplacements())
        m.respawn = [&resp](const recovery::View& v, const recovery::View& n) { return resp.respawn(v, n); };
      m.onSpec = [&resp](const std::vector<unsigned char>& spec) { resp.setSpec(spec); };
      // A failed rank that is frozen, not dead, would hold mpirun (and the allocation) forever.
      // On this host the survivors end it by PID; on another host under phoenix-launch its
      // launcher does, once told that the job has ended.
      m.atEnd = [](const std::vector<int>& failed) {
        transport::endFailedOnThisHost(failed);
        transport::tellLauncherTheJobEnded(failed);
      };
      train::DistJob job(cfg, t, &dt, &m);
      if (job.isWorker())
        worker(job);
      else
        job.serve();
      job.finish();
    }
  }, check);
}

}  // namespace phx::api
