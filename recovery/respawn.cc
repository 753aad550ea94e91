#include "recovery/respawn.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/transport/mpi/launch.h"
#include "runtime/transport/mpi/ulfm.h"
#include "runtime/transport/mpi/watchdog.h"

namespace phx::recovery {

namespace {

constexpr int kTagBoot = 7;   // root -> new process: rank, map (ints)
constexpr int kTagView = 8;   // root -> new process: the view it joins at (bytes)
constexpr int kTagWire = 9;   // survivor -> new process and back: the link between them is up

constexpr const char* kRebuildAdvice =
    "another failure during the rebuild? this rank leaves; restart with --resume DIR";

// This process's command line: the replacement runs the same `phoenix train ...`.
std::vector<std::string> ownCommandLine() {
  std::vector<std::string> out;
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string arg;
  while (std::getline(f, arg, '\0')) out.push_back(arg);
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0 && !out.empty()) out[0] = std::string(exe, static_cast<size_t>(n));
  return out;
}

uint32_t viewHash(const View& v) {
  uint32_t h = 2166136261u;
  auto mix = [&h](uint32_t x) {
    for (int i = 0; i < 4; ++i) {
      h ^= (x >> (8 * i)) & 0xff;
      h *= 16777619u;
    }
  };
  mix(static_cast<uint32_t>(v.epoch));
  for (char a : v.alive) mix(static_cast<uint32_t>(a));
  for (const Respawn& r : v.respawn) mix(static_cast<uint32_t>(r.rank * 131 + r.shard));
  return h;
}

MPI_Comm dupReturning(MPI_Comm c) {
  MPI_Comm d = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Comm_dup(c, &d));
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(d, MPI_ERRORS_RETURN));
  return d;
}

// The survivors' communicator out of the rebuild communicator, ranks baseRanks of it, in order
// (MPI_COMM_NULL on failure, logged).
MPI_Comm survivorsComm(MPI_Comm base, const std::vector<int>& baseRanks, int epoch) {
  MPI_Comm surv = MPI_COMM_NULL;
  int rc = MPI_SUCCESS;
  if (transport::ulfm::active()) {
#if PHX_HAVE_ULFM
    // ULFM: shrink to the processes the MPI agrees are alive (Open MPI 5 refuses
    // MPI_Comm_create_group on a communicator that holds a failed process); it must be exactly
    // the view's survivors, in order (a rank the heartbeats excluded while the MPI still sees
    // it alive -- frozen -- holds the shrink up until it dies; the watchdog bounds that).
    rc = MPIX_Comm_shrink(base, &surv);
    if (rc == MPI_SUCCESS && surv != MPI_COMM_NULL) {
      MPI_Group sg = MPI_GROUP_NULL, bg = MPI_GROUP_NULL;
      MPI_Comm_group(surv, &sg);
      MPI_Comm_group(base, &bg);
      int ns = 0;
      MPI_Group_size(sg, &ns);
      std::vector<int> in(ns), out(ns);
      for (int i = 0; i < ns; ++i) in[i] = i;
      MPI_Group_translate_ranks(sg, ns, in.data(), bg, out.data());
      MPI_Group_free(&sg);
      MPI_Group_free(&bg);
      if (out != baseRanks) {
        log::error("respawn: the MPI's survivors (", ns, " processes) are not the view's (",
                   baseRanks.size(), "); no replacement started");
        MPI_Comm_free(&surv);
        return MPI_COMM_NULL;
      }
    }
#endif
  } else {
    // Open MPI 4.1 (no ULFM): a communicator over the view's survivors, collective over them.
    MPI_Group all = MPI_GROUP_NULL, g = MPI_GROUP_NULL;
    PHX_MPI_CHECK(MPI_Comm_group(base, &all));
    PHX_MPI_CHECK(MPI_Group_incl(all, static_cast<int>(baseRanks.size()), baseRanks.data(), &g));
    rc = MPI_Comm_create_group(base, g, epoch & 0x7fff, &surv);
    MPI_Group_free(&g);
    MPI_Group_free(&all);
  }
  if (rc != MPI_SUCCESS || surv == MPI_COMM_NULL) {
    log::error("respawn: the survivors' communicator could not be built (MPI error ", rc, ")");
    return MPI_COMM_NULL;
  }
  MPI_Comm_set_errhandler(surv, MPI_ERRORS_RETURN);
  return surv;
}

// Whether every member of surv holds the same hash: the AND of it and of its complement.
bool sameView(MPI_Comm surv, uint32_t h) {
  if (transport::ulfm::active()) {
#if PHX_HAVE_ULFM
    int a = static_cast<int>(h), b = static_cast<int>(~h);
    const int ra = MPIX_Comm_agree(surv, &a);
    const int rb = ra == MPI_SUCCESS ? MPIX_Comm_agree(surv, &b) : ra;
    if (ra != MPI_SUCCESS || rb != MPI_SUCCESS) {
      // a survivor failed meanwhile: the agreement says so on everyone; give this respawn up
      // (the detector declares the new failure and the next view starts over)
      MPI_Comm shrunk = transport::ulfm::revokeAndShrink(surv);
      if (shrunk != MPI_COMM_NULL) MPI_Comm_free(&shrunk);
      log::warn("respawn: a survivor failed during the agreement; no replacement started");
      return false;
    }
    return (static_cast<uint32_t>(a) | static_cast<uint32_t>(b)) == 0xffffffffu;
#endif
  }
  uint32_t hv[2] = {h, ~h};
  if (MPI_Allreduce(MPI_IN_PLACE, hv, 2, MPI_UINT32_T, MPI_BAND, surv) != MPI_SUCCESS) return false;
  return (hv[0] | hv[1]) == 0xffffffffu;
}

}  // namespace

MpiRespawner::MpiRespawner(MPI_Comm base, std::vector<int> logicalOf,
                           transport::MpiTransport& det, transport::MpiTransport& train,
                           std::vector<std::string> argv, double timeoutS)
    : base_(base), logicalOf_(std::move(logicalOf)), det_(det), train_(train),
      argv_(argv.empty() ? ownCommandLine() : std::move(argv)), timeoutS_(timeoutS) {
  MPI_Comm_set_errhandler(base_, MPI_ERRORS_RETURN);
}

bool MpiRespawner::launchCanSpawn() { return transport::launchedByMpirunWithSurvivors(); }

bool MpiRespawner::respawn(const View& v, const View& next) {
  if (v.respawn.empty()) return true;
  const auto t0 = std::chrono::steady_clock::now();
  // The survivors in the order of the rebuild communicator (after an earlier respawn that is
  // not the order of the job's ranks: the merge puts the new processes last).
  std::vector<int> members, baseRanks;
  for (int r = 0; r < static_cast<int>(v.alive.size()); ++r)
    if (v.alive[r] && std::find(logicalOf_.begin(), logicalOf_.end(), r) == logicalOf_.end()) {
      log::error("respawn: rank ", r, " is alive in view ", v.epoch, " but not in the rebuild "
                 "communicator; no replacement started");
      return false;
    }
  for (int c = 0; c < static_cast<int>(logicalOf_.size()); ++c)
    if (logicalOf_[c] >= 0 && v.isAlive(logicalOf_[c])) {
      members.push_back(logicalOf_[c]);
      baseRanks.push_back(c);
    }
  std::string who;
  for (const Respawn& p : v.respawn) who += detail::concat(who.empty() ? "" : ", ", p.rank);
  transport::Watchdog wd(timeoutS_, detail::concat("starting a replacement for rank ", who), kRebuildAdvice);

  // 1. the survivors' communicator; 2. every survivor acts on the same view
  MPI_Comm surv = survivorsComm(base_, baseRanks, v.epoch);
  if (surv == MPI_COMM_NULL) return false;
  const bool same = sameView(surv, viewHash(v));
  if (!same) {
    log::error("respawn: the survivors disagree on view ", v.epoch, "; no replacement started");
    return false;
  }

  // 3. spawn (or connect to a standby), merge, duplicate
  const int k = static_cast<int>(v.respawn.size());
  MPI_Comm inter = startProcesses(surv, k);
  if (inter == MPI_COMM_NULL) return false;
  MPI_Comm merged = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Intercomm_merge(inter, 0, &merged));
  MPI_Comm detC = dupReturning(merged), trainC = dupReturning(merged), baseC = dupReturning(merged);
  std::vector<int> logicalOf = members;
  for (const Respawn& p : v.respawn) logicalOf.push_back(p.rank);
  const int n = static_cast<int>(members.size());
  int mine = -1;
  PHX_MPI_CHECK(MPI_Comm_rank(merged, &mine));
  if (mine == 0) {
    const std::vector<unsigned char> bytes = next.serialize();
    for (int i = 0; i < k; ++i) {
      std::vector<int> boot{v.respawn[i].rank, static_cast<int>(logicalOf.size())};
      boot.insert(boot.end(), logicalOf.begin(), logicalOf.end());
      PHX_MPI_CHECK(MPI_Send(boot.data(), static_cast<int>(boot.size()), MPI_INT, n + i, kTagBoot, baseC));
      PHX_MPI_CHECK(MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, n + i, kTagView, baseC));
    }
  }
  // 4. the links to the new processes, opened from the survivors' side only: Open MPI 4.1's TCP
  //    transport failed connects that crossed (the new process and a worker dialling each other
  //    at their first messages: "connect() ... Operation now in progress", and the new server
  //    declared live workers dead). Each survivor sends first; the new process answers only
  //    once it has heard from every survivor, over the links they opened.
  int token = 1;
  for (int i = 0; i < k; ++i) PHX_MPI_CHECK(MPI_Send(&token, 1, MPI_INT, n + i, kTagWire, baseC));
  for (int i = 0; i < k; ++i)
    PHX_MPI_CHECK(MPI_Recv(&token, 1, MPI_INT, n + i, kTagWire, baseC, MPI_STATUS_IGNORE));
  // 5. the new routes (taken when a view names the rank alive again)
  for (int i = 0; i < k; ++i) {
    det_.stageRoute(v.respawn[i].rank, detC, n + i, logicalOf);
    train_.stageRoute(v.respawn[i].rank, trainC, n + i, logicalOf);
  }
  base_ = baseC;
  logicalOf_ = logicalOf;
  log::warn("started a replacement for rank ", who, " in ",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s");
  return true;
}

namespace {
constexpr int kStandbySlots = 8;
std::string standbyName(const std::string& job, int slot) {
  return detail::concat("phoenix.", job, ".standby.", slot);
}
}  // namespace

MPI_Comm MpiRespawner::startProcesses(MPI_Comm surv, int k) {
  MPI_Comm inter = MPI_COMM_NULL;
  if (!standbyJob_.empty()) {
    if (k != 1) {
      log::error("respawn: ", k, " ranks need a replacement at once; a standby launch replaces one "
                 "rank at a time; none started");
      return MPI_COMM_NULL;
    }
    int me = 0;
    MPI_Comm_rank(surv, &me);
    char port[MPI_MAX_PORT_NAME] = "";
    int found = 0;
    if (me == 0) {
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);  // name-service errors
      for (int s = 0; s < kStandbySlots && !found; ++s)
        found = MPI_Lookup_name(standbyName(standbyJob_, s).c_str(), MPI_INFO_NULL, port) == MPI_SUCCESS;
    }
    if (MPI_Bcast(&found, 1, MPI_INT, 0, surv) != MPI_SUCCESS || !found) {
      log::error("respawn: no spare left and no standby launch waiting (start one with "
                 "`phoenix-launch --join HOST:1 --job ", standbyJob_, " --dir DIR`)");
      return MPI_COMM_NULL;
    }
    const int rc = MPI_Comm_connect(port, MPI_INFO_NULL, 0, surv, &inter);
    if (rc != MPI_SUCCESS || inter == MPI_COMM_NULL) {
      log::error("respawn: connecting to the standby launch failed (MPI error ", rc, ")");
      return MPI_COMM_NULL;
    }
    return inter;
  }
  std::vector<char*> args;
  for (size_t i = 1; i < argv_.size(); ++i) args.push_back(const_cast<char*>(argv_[i].c_str()));
  args.push_back(nullptr);
  std::vector<int> errs(k, MPI_SUCCESS);
  const int rc = MPI_Comm_spawn(argv_[0].c_str(), args.data(), k, MPI_INFO_NULL, 0, surv, &inter, errs.data());
  if (rc != MPI_SUCCESS || inter == MPI_COMM_NULL) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    log::error("respawn: MPI_Comm_spawn of ", argv_[0], " failed: ", msg,
               " (spawning needs Open MPI's mpirun; under srun use --spares)");
    return MPI_COMM_NULL;
  }
  return inter;
}

MPI_Comm MpiRespawner::awaitAsStandby(const std::string& job) {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 1)
    PHX_USER_ERROR("a standby launch has one process (phoenix-launch --join HOST:1), not ", size);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  char port[MPI_MAX_PORT_NAME] = "";
  PHX_MPI_CHECK(MPI_Open_port(MPI_INFO_NULL, port));
  std::string name;
  for (int s = 0; s < kStandbySlots && name.empty(); ++s)
    if (MPI_Publish_name(standbyName(job, s).c_str(), MPI_INFO_NULL, port) == MPI_SUCCESS)
      name = standbyName(job, s);
  if (name.empty())
    PHX_USER_ERROR("job ", job, " has ", kStandbySlots, " standby launches already (or its name "
                   "service is unreachable: is the job running, and --dir its directory?)");
  log::warn("standby for job ", job, " (", name, "): waiting until the job needs a replacement");
  // the job ends: its launcher stops the name service, and the name is gone
  static std::atomic<bool> taken{false};
  std::thread([name] {
    char p[MPI_MAX_PORT_NAME] = "";
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      if (taken.load()) return;
      if (MPI_Lookup_name(name.c_str(), MPI_INFO_NULL, p) != MPI_SUCCESS) {
        std::fprintf(stderr, "phoenix: the job ended without needing this standby; leaving\n");
        std::fflush(nullptr);
        _exit(0);
      }
    }
  }).detach();
  MPI_Comm inter = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Comm_accept(port, MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter));
  taken.store(true);
  MPI_Unpublish_name(name.c_str(), MPI_INFO_NULL, port);
  MPI_Close_port(port);
  return inter;
}

MpiRespawner::Joined MpiRespawner::join(MPI_Comm parent, double timeoutS) {
  transport::Watchdog wd(timeoutS, "joining the job as a replacement", kRebuildAdvice);
  MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN);
  MPI_Comm merged = MPI_COMM_NULL;
  PHX_MPI_CHECK(MPI_Intercomm_merge(parent, 1, &merged));
  Joined j;
  j.det = dupReturning(merged);
  j.train = dupReturning(merged);
  j.base = dupReturning(merged);
  MPI_Status st;
  int count = 0;
  PHX_MPI_CHECK(MPI_Probe(0, kTagBoot, j.base, &st));
  PHX_MPI_CHECK(MPI_Get_count(&st, MPI_INT, &count));
  std::vector<int> boot(count);
  PHX_MPI_CHECK(MPI_Recv(boot.data(), count, MPI_INT, 0, kTagBoot, j.base, MPI_STATUS_IGNORE));
  PHX_ENFORCE(count >= 2 && boot[1] == count - 2, "malformed replacement bootstrap");
  j.rank = boot[0];
  j.logicalOf.assign(boot.begin() + 2, boot.end());
  PHX_MPI_CHECK(MPI_Probe(0, kTagView, j.base, &st));
  PHX_MPI_CHECK(MPI_Get_count(&st, MPI_BYTE, &count));
  std::vector<unsigned char> bytes(count);
  PHX_MPI_CHECK(MPI_Recv(bytes.data(), count, MPI_BYTE, 0, kTagView, j.base, MPI_STATUS_IGNORE));
  j.view = View::parse(bytes.data(), bytes.size());
  // the survivors open the links (respawn step 4): hear from each, then answer each; they are
  // the parent's remote group, merged ranks 0 .. n-1
  int n = 0, token = 0;
  PHX_MPI_CHECK(MPI_Comm_remote_size(parent, &n));
  for (int s = 0; s < n; ++s) PHX_MPI_CHECK(MPI_Recv(&token, 1, MPI_INT, s, kTagWire, j.base, MPI_STATUS_IGNORE));
  for (int s = 0; s < n; ++s) PHX_MPI_CHECK(MPI_Send(&token, 1, MPI_INT, s, kTagWire, j.base));
  return j;
}

}  // namespace phx::recovery
