#include "runtime/ps/layout.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace phx::ps {

const char* roleName(Role r) {
  switch (r) {
    case Role::kServer: return "server";
    case Role::kReplica: return "replica";
    case Role::kSpare: return "spare";
    case Role::kWorker: return "worker";
  }
  return "?";
}

std::vector<KeyRange> splitKeys(int64_t n, int parts) {
  PHX_ENFORCE(parts > 0 && n >= 0, "splitKeys(", n, ", ", parts, ")");
  std::vector<KeyRange> r(parts);
  for (int i = 0; i < parts; ++i) r[i] = KeyRange{n * i / parts, n * (i + 1) / parts};
  return r;
}

RoleLayout::RoleLayout(int worldSize, int servers, int replicas, int spares, int groupSize)
    : world_(worldSize), servers_(servers), replicas_(replicas), spares_(spares),
      group_(groupSize) {
  if (servers < 1)
    PHX_USER_ERROR("--servers ", servers, " must be at least 1 (a parameter-server job needs a "
                   "server; run without mpirun for single-process training)");
  if (replicas < 0) PHX_USER_ERROR("--replicas ", replicas, " must be >= 0");
  if (spares < 0) PHX_USER_ERROR("--spares ", spares, " must be >= 0");
  if (groupSize < 1) PHX_USER_ERROR("--group-size ", groupSize, " must be >= 1");
  const int nonWorkers = servers * (1 + replicas) + spares;
  workers_ = worldSize - nonWorkers;
  if (workers_ < 1)
    PHX_USER_ERROR("the job has ", worldSize, " ranks but --servers ", servers, " --replicas ",
                   replicas, " --spares ", spares, " take ", nonWorkers,
                   ", leaving no worker: start at least ", nonWorkers + 1,
                   " ranks (mpirun -n ", nonWorkers + 1, ") or ask for fewer servers");
  if (groupSize > workers_)
    PHX_USER_ERROR("--group-size ", groupSize, " is larger than the ", workers_,
                   " workers of this job");
}

Role RoleLayout::roleOf(int rank) const {
  PHX_ENFORCE(rank >= 0 && rank < world_, "rank ", rank, " of ", world_);
  if (rank < servers_) return Role::kServer;
  if (rank < servers_ * (1 + replicas_)) return Role::kReplica;
  if (rank < firstWorkerRank()) return Role::kSpare;
  return Role::kWorker;
}

int RoleLayout::groupEnd(int group) const { return std::min(workers_, (group + 1) * group_); }

std::string RoleLayout::describe() const {
  return detail::concat(world_, " ranks: ", servers_, " server(s) (ranks 0-", servers_ - 1, "), ",
                        servers_ * replicas_, " replica(s), ", spares_, " spare(s), ", workers_,
                        " worker(s) (ranks ", firstWorkerRank(), "-", world_ - 1, ") in ",
                        groups(), " group(s) of up to ", group_);
}

}  // namespace phx::ps
