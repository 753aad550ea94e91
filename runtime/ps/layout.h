// Who is who in a job, and who owns which keys. Ranks take roles in this order (a contract,
// shared/design.md): S server shards (rank i is shard i's head), then R replicas per shard,
// then K spares, then the workers. Workers form groups of G consecutive workers; a group's
// first worker is its leader and the only one that talks to the servers, so the servers see
// one "client" per group. The flat parameter vector is split into S contiguous key ranges.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace phx::ps {

enum class Role { kServer, kReplica, kSpare, kWorker };

// The rank of a shard while a replacement process is being started for it (recovery/view.h).
inline constexpr int kRespawningRank = -2;
const char* roleName(Role r);

struct KeyRange {
  int64_t lo = 0, hi = 0;  // [lo, hi)
  int64_t size() const { return hi - lo; }
};
// Splits n keys into `parts` contiguous ranges whose sizes differ by at most one.
std::vector<KeyRange> splitKeys(int64_t n, int parts);

class RoleLayout {
 public:
  // Throws UserError for combinations that cannot run (no worker, S = 0, too few ranks ...),
  // saying what would work.
  RoleLayout(int worldSize, int servers, int replicas, int spares, int groupSize);

  int worldSize() const { return world_; }
  int servers() const { return servers_; }
  int replicas() const { return replicas_; }
  int spares() const { return spares_; }
  int workers() const { return workers_; }
  int groupSize() const { return group_; }
  int groups() const { return (workers_ + group_ - 1) / group_; }  // = clients of the servers

  Role roleOf(int rank) const;
  int serverRank(int shard) const { return shard; }
  // Replica j (0-based, chain order) of a shard: ranks S .. S(1+R)-1, shard by shard.
  int replicaRank(int shard, int j) const { return servers_ + shard * replicas_ + j; }
  int firstWorkerRank() const { return servers_ * (1 + replicas_) + spares_; }
  int workerRank(int worker) const { return firstWorkerRank() + worker; }
  int workerIndex(int rank) const { return rank - firstWorkerRank(); }  // -1.. for non-workers
  int chiefRank() const { return firstWorkerRank(); }  // worker 0: metrics, summary, evaluation
  int groupOf(int worker) const { return worker / group_; }
  int leaderOf(int group) const { return group * group_; }  // a worker index
  int groupEnd(int group) const;                           // one past its last worker index
  std::string describe() const;

 private:
  int world_, servers_, replicas_, spares_, workers_, group_;
};

}  // namespace phx::ps
