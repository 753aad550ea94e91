// The membership view: who is alive and who serves which shard, at an epoch. Every survivor
// installs the same sequence of views (the coordinator issues them, see detector.h), so every
// role decision made from a view (which spare takes over which shard, which worker left BSP
// membership) is a pure function of it and needs no further agreement.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/ps/layout.h"

namespace phx::recovery {

// Which source declared a failure: the heartbeat timeout, or the MPI library's own report
// (ULFM's failed group / MPIX_ERR_PROC_FAILED).
inline constexpr int kDetectedByHeartbeat = 0;
inline constexpr int kDetectedByMpi = 1;

// One failure, as recorded in the view that excluded the rank.
struct FailureRecord {
  int rank = -1;
  int epoch = 0;           // the epoch of the view that excluded it
  int role = 0;            // ps::Role at the time of death
  int shard = -1;          // shard it served (servers), -1 otherwise
  int replacedBy = -1;     // rank that took the role over (-1: none)
  int backupOf = -1;       // shard whose replica chain it was a backup in (-1: none)
  int promoted = 0;        // 1: replacedBy was a replica promoted to head (chain replication)
  int detectedBy = 0;      // kDetectedByHeartbeat or kDetectedByMpi
  int spawned = 0;         // 1: replaced by a process spawned for it (no spare was left)
  double killUnix = 0;     // wall time of the kill when the rank announced it (injected), else 0
  double lastHeardUnix = 0;  // last heartbeat the coordinator had from it
  double detectedUnix = 0;   // when the coordinator declared it dead
};

// shardRank value while a replacement process is being started for the shard (workers wait, or
// train on locally in stateless/hybrid mode, until the next view names it).
inline constexpr int kRespawning = ps::kRespawningRank;

// A replacement to start because no spare is left: a new process takes the dead rank's number
// (the job keeps its size and every rank its number) and serves `shard`, as its head or, when
// asTail is 1, as the new tail of its replica chain.
struct Respawn {
  int32_t rank = -1;
  int32_t shard = -1;
  int32_t asTail = 0;
};

struct View {
  int epoch = 0;
  int issuer = -1;               // the coordinator that issued it
  std::vector<char> alive;       // per rank of the job
  std::vector<int> shardRank;    // shard -> rank serving it now (-1: no one: the shard is lost)
  std::vector<int> shardSince;   // shard -> epoch at which that rank took it over
  // shard -> its backups in chain order (chain replication: head = shardRank, then these; the
  // last is the tail). Empty without --replicas.
  std::vector<std::vector<int>> backups;
  std::vector<int> spares;       // spare ranks not yet given a role, in takeover order
  std::vector<FailureRecord> failures;  // every failure so far, oldest first
  std::vector<Respawn> respawn;  // replacements the survivors start before the next view

  bool isAlive(int rank) const { return rank >= 0 && rank < static_cast<int>(alive.size()) && alive[rank]; }
  int coordinator() const;  // the lowest live rank
  int aliveCount() const;
  // The shard this rank serves in this view (-1: none).
  int shardOf(int rank) const;
  // The chief worker: the lowest live worker rank (it evaluates, reports and ends the run).
  int chiefRank(const ps::RoleLayout& layout) const;
  // The shard whose chain this rank is a backup in (-1: none).
  int backupOf(int rank) const;
  // The next rank down shard s's chain after `rank` (-1: rank is the tail or not in it).
  int successorOf(int shard, int rank) const;

  std::vector<unsigned char> serialize() const;
  static View parse(const unsigned char* data, size_t bytes);  // throws on malformed input
};

// The first view of a job: everyone alive, shard i on rank i, spares in rank order.
View initialView(const ps::RoleLayout& layout);

// The view after `dead` failed (deterministic): they leave; a shard whose head died goes to its
// first backup (promotion) or else to the first free live spare (or to no one); a chain that
// lost a member gets a free spare at its tail (back to 1 + replicas long); dead spares leave
// the spare list.
// canSpawn: when no backup or spare is left, the view asks for a replacement process (respawn,
// shardRank = kRespawning) instead of losing the shard (shardRank = -1), and a replica chain
// that stays short gets a spawned tail.
// The epoch of the next view that `issuer` issues after one of `epoch`, in a job of `ranks`:
// the next multiple of `ranks` above it plus the issuer, so that two coordinators that act at
// once (one falsely suspected by the other) never issue two different views of one epoch,
// and every rank installs the newer of the two (recovery/model: spin found the divergence).
int nextEpoch(int epoch, int issuer, int ranks);

View nextView(const View& v, const ps::RoleLayout& layout, const std::vector<int>& dead,
              int issuer, double nowUnix, const std::vector<double>& lastHeardUnix,
              const std::vector<double>& killUnix, bool canSpawn = false);

// The view after the survivors started v.respawn (ok) or failed to (a shard waiting for its
// replacement is then lost, -1): the new processes are alive under the dead ranks' numbers.
View afterRespawn(const View& v, int issuer, bool ok);

double unixNow();

}  // namespace phx::recovery
