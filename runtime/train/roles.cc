#include "runtime/train/roles.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "runtime/core/log.h"

namespace phx::train {

using transport::Header;
using transport::MsgType;

[[noreturn]] void killSelf(FtContext& ft, const std::string& what) {
  log::warn("injected failure: ", what, " -- SIGKILL of rank ", ft.main->rank(), " (pid ", getpid(), ")");
  // The kill lands between two messages, not inside the last one: what this rank already
  // handed to the MPI (a takeover's recovery report just before it) gets 50 ms to leave it
  // (the detector thread keeps progressing it); the kill time is announced after that.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (ft.det) ft.det->announceDeath();
  ::raise(SIGKILL);
  for (;;) pause();
}

bool due(const Schedule& s, int64_t step, double startUnix) {
  return s.isTime() ? recovery::unixNow() - startUnix >= s.seconds : step >= s.steps;
}

double cpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void sendStats(transport::Transport& t, int to, const RankStats& s, double timeoutS) {
  Header h;
  h.type = MsgType::kStats;
  h.bytes = sizeof(RankStats);
  t.waitSend(t.send(to, h, &s), timeoutS);
}

Plan plan(const Config& cfg, const data::Dataset& train, int workers) {
  const data::EpochSharder sharder(train.count, workers, cfg.seed);
  Plan p;
  p.stepsPerEpoch = (static_cast<int64_t>(sharder.shardSize(0)) + cfg.batch - 1) / cfg.batch;
  p.totalSteps = cfg.steps > 0 ? cfg.steps : p.stepsPerEpoch * cfg.epochs;
  return p;
}

double straggleAfter(double factor, std::chrono::steady_clock::time_point since) {
  if (factor <= 1.0) return 0.0;
  const double extra =
      (factor - 1.0) * std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
  std::this_thread::sleep_for(std::chrono::duration<double>(extra));
  return extra;
}

BatchRange batchRange(int64_t step, int64_t stepsPerEpoch, int batch, int64_t shardSize) {
  int64_t first = (step % stepsPerEpoch) * batch;
  if (first >= shardSize) first = 0;
  return BatchRange{first, std::min<int64_t>(batch, shardSize - first)};
}

kernels::SgdParams sgdOf(const Config& cfg) {
  return kernels::SgdParams{static_cast<float>(cfg.lr), static_cast<float>(cfg.effectiveMomentum()),
                            static_cast<float>(cfg.weightDecay), cfg.nesterov};
}

std::unique_ptr<phx::sync::SyncPolicy> policyOf(const Config& cfg) {
  // EPSP and FlexRR shard and move work on the workers; their servers run the rule underneath:
  // enforced EPSP = a barrier per clock (BSP), slack EPSP and FlexRR = bounded staleness (SSP).
  if (cfg.sync == "epsp" || cfg.sync == "flexrr") {
    return phx::sync::makePolicy(cfg.sync == "epsp" && cfg.epspMode == "enforced" ? "bsp" : "ssp",
                                 cfg.staleness, cfg.backupWorkers, cfg.scaleUpdates);
  }
  return phx::sync::makePolicy(cfg.sync, cfg.staleness, cfg.backupWorkers, cfg.scaleUpdates);
}


int ranksOnNode(const transport::Transport& t) {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v)) {
      const int n = std::atoi(s);
      if (n > 0) return n;
    }
  return t.size();
}

namespace {
// quota / period of the cgroup file pair, or -1 when unlimited or unreadable
double quotaCores(const std::string& dir) {
  std::ifstream q(dir + "/cpu.cfs_quota_us"), p(dir + "/cpu.cfs_period_us");
  long long quota = -1, period = 0;
  if (q >> quota && p >> period) return quota > 0 && period > 0 ? double(quota) / double(period) : -1;
  std::ifstream m(dir + "/cpu.max");  // cgroup v2: "QUOTA PERIOD" or "max PERIOD"
  std::string qs;
  if (m >> qs >> period && qs != "max" && period > 0) return std::stod(qs) / double(period);
  return -1;
}
}  // namespace

double cpuQuotaCores() {
  double cores = -1;
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    // v1: "N:cpu,cpuacct:/path" (the cpu controller), v2: "0::/path"
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string ctl = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    bool cpu = ctl.empty();
    std::stringstream ss(ctl);
    for (std::string c; std::getline(ss, c, ',');) cpu = cpu || c == "cpu";
    if (!cpu) continue;
    for (const char* root : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup"}) {
      const double q = quotaCores(std::string(root) + path);
      if (q > 0) cores = cores > 0 ? std::min(cores, q) : q;
    }
  }
  return cores;
}

void idleUntilReleased(transport::Transport& t, FtContext& ft, const std::function<bool()>& onView) {
  Header h;
  int src = -1;
  transport::Backoff idle;
  for (;;) {
    while (t.poll(MsgType::kDone, &h, &src))
      if (h.client < 0 && src == ft.chief) return;  // (a client's late "done" is not for us)
    if (ft.changed() && !onView()) return;
    idle.pause();
  }
}

void releaseAll(transport::Transport& t, const FtContext& ft, double timeoutS) {
  const ps::RoleLayout& layout = *ft.layout;
  std::vector<transport::SendId> ids;
  Header h;
  h.type = MsgType::kDone;
  if (!ft.det) {  // without failure handling only spares and replicas idle
    for (int r = layout.servers(); r < layout.firstWorkerRank(); ++r) ids.push_back(t.send(r, h, nullptr));
  } else {
    const recovery::View v = ft.det->view();
    for (int r = 0; r < layout.worldSize(); ++r)
      if (r != t.rank() && v.isAlive(r)) ids.push_back(t.send(r, h, nullptr));
  }
  for (auto id : ids) t.waitSend(id, timeoutS);
}

}  // namespace phx::train
