#include "runtime/transport/mpi/peers.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/transport/mpi/mpi_transport.h"

namespace phx::transport {

namespace {
std::vector<PeerInfo> gPeers;

std::string readFirstLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}
}  // namespace

uint64_t startTicksOf(int64_t pid) {
  const std::string stat = readFirstLine("/proc/" + std::to_string(pid) + "/stat");
  // "pid (comm) state ppid ...": comm may hold spaces; fields after the last ')'
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  // state is field 3; starttime is field 22
  for (int i = 3; i < 22 && rest >> field; ++i) {
  }
  uint64_t ticks = 0;
  rest >> ticks;
  return ticks;
}

PeerInfo selfInfo() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  PeerInfo p;
  p.pid = getpid();
  p.startTicks = startTicksOf(p.pid);
  p.host = std::hash<std::string>{}(std::string(name) + "/" + readFirstLine("/proc/sys/kernel/random/boot_id"));
  return p;
}

void recordPeers(MPI_Comm job) {
  int size = 0;
  MPI_Comm_size(job, &size);
  const PeerInfo me = selfInfo();
  std::vector<PeerInfo> all(static_cast<size_t>(size));
  PHX_MPI_CHECK(MPI_Allgather(&me, sizeof me, MPI_BYTE, all.data(), sizeof me, MPI_BYTE, job));
  gPeers = std::move(all);
}

const std::vector<PeerInfo>& peers() { return gPeers; }

int endFailedOnThisHost(const std::vector<int>& failed) {
  if (gPeers.empty()) return 0;
  const PeerInfo me = selfInfo();
  int n = 0;
  for (int r : failed) {
    if (r < 0 || r >= static_cast<int>(gPeers.size())) continue;
    const PeerInfo& p = gPeers[static_cast<size_t>(r)];
    if (p.host != me.host || p.pid == me.pid || p.startTicks == 0) continue;
    if (startTicksOf(p.pid) != p.startTicks) continue;  // gone (or its PID reused)
    if (kill(static_cast<pid_t>(p.pid), SIGKILL) == 0) {
      log::warn("rank ", r, " (pid ", p.pid, ") was declared failed but is still there (frozen?); "
                "killed by its PID so that the job can end");
      ++n;
    }
  }
  return n;
}

bool tellLauncherTheJobEnded(const std::vector<int>& failed) {
  const char* dir = std::getenv("PHX_LAUNCH_DIR");
  if (gPeers.empty() || !dir || !*dir) return false;
  const PeerInfo me = selfInfo();
  bool elsewhere = false;
  std::string line = "failed";
  for (int r : failed) {
    if (r < 0 || r >= static_cast<int>(gPeers.size())) continue;
    line.append(" ").append(std::to_string(r));
    elsewhere = elsewhere || gPeers[static_cast<size_t>(r)].host != me.host;
  }
  if (!elsewhere) return false;
  const std::string path = std::string(dir) + "/ended";
  const std::string tmp = path + ".tmp." + std::to_string(me.pid);
  {
    std::ofstream f(tmp);
    f << line << "\n";
    if (!f) return false;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  log::info("job end told to the launcher (", path, "): ", line);
  return true;
}

}  // namespace phx::transport
