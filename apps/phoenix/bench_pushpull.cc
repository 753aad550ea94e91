#include "apps/phoenix/bench_pushpull.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/phoenix/mpi_main.h"
#include "kernels/cpu/cpu_backend.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/metrics.h"
#include "runtime/ps/client.h"
#include "runtime/ps/server.h"
#include "runtime/transport/mpi/mpi_transport.h"

namespace phx::apps {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A barrier that sleeps instead of spinning (MPI's own waits spin on this machine, and the
// rank measuring memcpy must have the cores to itself).
void sleepyBarrier(MPI_Comm comm) {
  MPI_Request r;
  PHX_MPI_CHECK(MPI_Ibarrier(comm, &r));
  int done = 0;
  while (!done) {
    PHX_MPI_CHECK(MPI_Test(&r, &done, MPI_STATUS_IGNORE));
    if (!done) usleep(200);
  }
}

// Open MPI reads coll_tuned_* when a communicator is created, so setting them through MPI_T
// and then duplicating a communicator selects an allreduce algorithm inside one job.
bool setCvar(const char* name, int value) {
  int num = 0;
  if (MPI_T_cvar_get_num(&num) != MPI_SUCCESS) return false;
  for (int i = 0; i < num; ++i) {
    char nm[256], desc[1024];
    int nl = sizeof nm, dl = sizeof desc, verb = 0, bind = 0, scope = 0;
    MPI_Datatype dt;
    MPI_T_enum et;
    if (MPI_T_cvar_get_info(i, nm, &nl, &verb, &dt, &et, desc, &dl, &bind, &scope) != MPI_SUCCESS)
      continue;
    if (std::strcmp(nm, name) != 0) continue;
    MPI_T_cvar_handle h;
    int count = 0;
    if (MPI_T_cvar_handle_alloc(i, nullptr, &h, &count) != MPI_SUCCESS) return false;
    const int rc = MPI_T_cvar_write(h, &value);
    MPI_T_cvar_handle_free(&h);
    return rc == MPI_SUCCESS;
  }
  return false;
}

// Seconds per allreduce of n floats (in place, sum), over the given communicator.
double timeAllreduce(MPI_Comm comm, float* buf, long long n, int iters) {
  for (int i = 0; i < 2; ++i)
    PHX_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm));
  sleepyBarrier(comm);
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i)
    PHX_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm));
  double t = since(t0) / iters, worst = 0;
  PHX_MPI_CHECK(MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, comm));
  return worst;
}

double memcpyGBs(long long n) {
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), n * sizeof(float));
    best = std::max(best, 2.0 * n * sizeof(float) / since(t0) / 1e9);  // read + write
  }
  return best;
}

struct Row {
  long long n;
  int iters;
  double ps, arDefault, arRing, copy;
};

}  // namespace

int runPushPullBench(const PushPullBenchOptions& opt) {
  // coll_tuned_use_dynamic_rules can only be set before MPI_Init (MPI_T may not write it); with
  // no algorithm forced, Open MPI's decisions stay its defaults. A user's own setting wins.
  setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0);
  return runUnderMpi([&opt](int rank, int size) {
    int provided = 0;
    MPI_T_init_thread(MPI_THREAD_FUNNELED, &provided);
    const ps::RoleLayout layout(size, opt.servers, 0, 0, 1);
    const bool server = layout.roleOf(rank) == ps::Role::kServer;
    log::setIdentity(rank, server ? "server" : "worker", rank == layout.chiefRank());
    MPI_Comm workers;
    PHX_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, server ? 0 : 1, rank, &workers));
    // Ring: Open MPI's tuned allreduce algorithm 4, selected for a duplicate communicator.
    const bool ringSet = setCvar("coll_tuned_allreduce_algorithm", 4);
    MPI_Comm ring;
    PHX_MPI_CHECK(MPI_Comm_dup(workers, &ring));
    setCvar("coll_tuned_allreduce_algorithm", 0);
    transport::MpiTransport t(MPI_COMM_WORLD);
    kernels::CpuBackend be(1);
    const auto policy = sync::makePolicy("bsp", 0);
    std::vector<Row> rows;
    if (rank == layout.chiefRank()) {
      std::printf("push+pull: %d worker(s), %d server(s); allreduce over the same %d worker ranks%s\n",
                  layout.workers(), layout.servers(), layout.workers(),
                  ringSet ? "" : " (ring could not be selected through MPI_T)");
      std::printf("%12s %7s %11s %9s %13s %11s %9s %9s %10s\n", "floats", "iters", "push+pull ms",
                  "PS GB/s", "allreduce ms", "ring ms", "PS/best", "busbw", "memcpy GB/s");
    }
    for (long long n : opt.sizes) {
      PHX_ENFORCE(n > 0 && n * 4 < (1ll << 31) * static_cast<long long>(layout.servers()),
                  "size ", n, " too large");
      const auto ranges = ps::splitKeys(n, layout.servers());
      if (server) {
        ps::ServerOptions o;
        o.shard = rank;
        o.range = ranges[rank];
        o.clients = layout.workers();
        o.sgd = kernels::SgdParams{0.0f, 0.9f, 0.0f, false};  // the real update's memory traffic
        ps::Server s(t, layout, o, *policy, be, std::vector<float>(ranges[rank].size(), 0.5f));
        s.run(-1);
        continue;
      }
      const int w = layout.workerIndex(rank);
      std::vector<float> params(n), grads(n, 1e-3f);
      ps::PsClient c(t, layout, ranges, w, 0, 600);
      c.pull(0, params.data());
      int64_t clock = 0;
      auto step = [&] {
        c.push(clock, grads.data(), true);
        c.awaitWeights(clock + 1, params.data());
        c.waitPushes();
        ++clock;
      };
      // Calibrate on two steps; worker 0 decides the iteration count for everyone.
      const auto tw = Clock::now();
      step();
      step();
      int iters = std::clamp(static_cast<int>(opt.seconds / (since(tw) / 2)), 3, 500);
      PHX_MPI_CHECK(MPI_Bcast(&iters, 1, MPI_INT, 0, workers));
      sleepyBarrier(workers);
      const auto t0 = Clock::now();
      for (int i = 0; i < iters; ++i) step();
      double ps = since(t0) / iters, psWorst = 0;
      c.done();
      PHX_MPI_CHECK(MPI_Allreduce(&ps, &psWorst, 1, MPI_DOUBLE, MPI_MAX, workers));
      const double arDefault = layout.workers() > 1 ? timeAllreduce(workers, grads.data(), n, iters) : 0;
      const double arRing = layout.workers() > 1 && ringSet ? timeAllreduce(ring, grads.data(), n, iters) : 0;
      double copy = 0;
      sleepyBarrier(workers);
      if (w == 0) copy = memcpyGBs(n);
      sleepyBarrier(workers);
      if (w != 0) continue;
      const double best = arRing > 0 ? std::min(arDefault, arRing) : arDefault;
      const double psGBs = layout.workers() * 2.0 * n * 4 / psWorst / 1e9;
      const double busbw = best > 0 ? n * 4.0 / best * 2.0 * (layout.workers() - 1) / layout.workers() / 1e9 : 0;
      std::printf("%12lld %7d %11.3f %9.2f %13.3f %11.3f %9.2f %9.2f %10.1f\n", n, iters,
                  psWorst * 1e3, psGBs, arDefault * 1e3, arRing * 1e3, best > 0 ? psWorst / best : 0,
                  busbw, copy);
      std::fflush(stdout);
      rows.push_back(Row{n, iters, psWorst, arDefault, arRing, copy});
    }
    if (rank == layout.chiefRank() && !opt.jsonPath.empty()) {
      std::string js = "[";
      for (const Row& r : rows) {
        char b[400];
        std::snprintf(b, sizeof b,
                      "%s\n  {\"floats\": %lld, \"workers\": %d, \"servers\": %d, \"iters\": %d, "
                      "\"pushpull_ms\": %.4f, \"allreduce_default_ms\": %.4f, \"allreduce_ring_ms\": "
                      "%.4f, \"memcpy_gbs\": %.2f}",
                      js.size() > 1 ? "," : "", r.n, layout.workers(), layout.servers(), r.iters,
                      r.ps * 1e3, r.arDefault * 1e3, r.arRing * 1e3, r.copy);
        js += b;
      }
      writeFileAtomic(opt.jsonPath, js + "\n]\n");
    }
    MPI_Comm_free(&ring);
    MPI_Comm_free(&workers);
    MPI_T_finalize();
  });
}

}  // namespace phx::apps
