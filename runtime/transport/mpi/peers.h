// Who the job's processes are: every rank's PID, process start time and host (hostname and
// kernel boot id), exchanged once at start while all are alive. At the end of a job the
// survivors use it to end a rank that was declared failed but still exists -- frozen (SIGSTOP,
// a hung process) rather than dead -- which would otherwise keep mpirun, and the user's
// allocation, waiting for it forever.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace phx::transport {

struct PeerInfo {
  int64_t pid = 0;
  uint64_t startTicks = 0;  // /proc/PID/stat field 22: tells a reused PID from the rank
  uint64_t host = 0;        // hash of hostname + boot id
};

// Collective over `job` (every rank, at start).
void recordPeers(MPI_Comm job);
// The table (empty when recordPeers was not called, e.g. in a replacement process).
const std::vector<PeerInfo>& peers();
// SIGKILLs every rank of `failed` that runs on this host and is still the same process (PID
// and start time); returns how many were killed, each named in a log line. Ranks elsewhere are
// left to their host's launcher (docs/recovery.md).
int endFailedOnThisHost(const std::vector<int>& failed);
// Under phoenix-launch (PHX_LAUNCH_DIR set, one mpirun per host): when a rank of `failed` ran on
// another host, writes PHX_LAUNCH_DIR/ended ("failed R R ..."), from which the launcher ends a
// host's launch whose ranks were all declared failed (a frozen rank with no survivor beside it to
// end it). Returns whether it wrote the file.
bool tellLauncherTheJobEnded(const std::vector<int>& failed);

// This process's PeerInfo (for tests).
PeerInfo selfInfo();
// The start time of process `pid` (0 when it does not exist).
uint64_t startTicksOf(int64_t pid);

}  // namespace phx::transport
