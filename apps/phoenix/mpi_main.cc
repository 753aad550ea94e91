#include "apps/phoenix/mpi_main.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/transport/mpi/join.h"
#include "runtime/transport/mpi/mpi_transport.h"
#include "runtime/transport/mpi/ulfm.h"

namespace phx::apps {

namespace {
// MPI_Finalize after a rank died can hang (shared/infra-notes.md: 2 of 15 runs): a watchdog
// ends the process with the right code if it does not return in time.
// With ULFM (ulfm.h), the survivors first shrink a communicator kept for this purpose to
// themselves and agree on the outcome there, so that MPI_Finalize does not wait on the dead.
void boundedFinalize(int code, double seconds, MPI_Comm endComm) {
  std::thread([code, seconds] {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    std::fflush(nullptr);
    _exit(code);
  }).detach();
  if (endComm != MPI_COMM_NULL) {
    MPI_Comm survivors = transport::ulfm::revokeAndShrink(endComm);
    if (survivors != MPI_COMM_NULL) {
      if (!transport::ulfm::agree(survivors, code == 0) && code == 0)
        std::fprintf(stderr, "phoenix: note: another surviving rank ended with an error\n");
      MPI_Comm_free(&survivors);
    }
  }
  MPI_Finalize();
}
}  // namespace

int runUnderMpi(const std::function<void(int rank, int size)>& body, const std::function<void()>& check) {
#if defined(OMPI_MAJOR_VERSION) && OMPI_MAJOR_VERSION < 5
  // Open MPI 4.1's TCP transport is progressed by its event loop; after any peer process dies
  // that loop runs only on the default event tick, and every message between survivors over
  // TCP waits for it: steps took 4x longer for the rest of the job (docs/perf.md "Several
  // hosts"). A 20 us tick keeps them at full speed. Set before MPI_Init, in jobs over several
  // hosts (phoenix-launch); the user's setting wins.
  if (std::getenv("PHX_LAUNCH")) setenv("OMPI_MCA_mpi_event_tick_rate", "20", 0);
#endif
  int provided = 0;
  PHX_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm endComm = MPI_COMM_NULL;
  int code = 0;
  bool excluded = false;
  try {
    // one launch per host (join.h): every launch's ranks joined into one job communicator
    const char* jt = std::getenv("PHX_JOIN_TIMEOUT");
    const MPI_Comm job = transport::joinLaunches(jt ? std::atof(jt) : 120.0);
    MPI_Comm_size(job, &size);
    MPI_Comm_rank(job, &rank);
    if (transport::ulfm::active()) MPI_Comm_dup(job, &endComm);
    if (check) {
      // Every rank checks; if any fails (the same flags fail alike on every rank) the lowest
      // failing rank prints its line and every rank leaves with 2 through MPI_Finalize: no
      // MPI_Abort (under Open MPI 5 with --with-ft ulfm an abort from a rank left the others
      // hanging), and no rank starts training while another has refused.
      std::string why;
      try {
        check();
      } catch (const UserError& e) {
        why = e.what();
      }
      int mine = why.empty() ? size : rank, first = size;
      MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, job);
      if (first < size) {
        if (rank == first) std::fprintf(stderr, "phoenix: error: %s\n", why.c_str());
        std::fflush(nullptr);
        boundedFinalize(2, 10.0, endComm);
        return 2;
      }
    }
    body(rank, size);
  } catch (const UserError& e) {
    std::fprintf(stderr, "phoenix: error: [rank %d] %s\n", rank, e.what());
    code = 2;
  } catch (const transport::Excluded& e) {
    std::fprintf(stderr, "phoenix: error: [rank %d] %s\n", rank, e.what());
    code = 3;
    excluded = true;
  } catch (const transport::PeerFailure& e) {
    std::fprintf(stderr, "phoenix: error: [rank %d] %s\n", rank, e.what());
    code = 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "phoenix: fatal: [rank %d] %s\n", rank, e.what());
    code = 1;
  }
  std::fflush(nullptr);
  // An excluded rank leaves alone (the others go on without it); any other failure ends the
  // whole job at once instead of leaving the peers waiting.
  if (excluded) _exit(code);
  if (code != 0 && size > 1) MPI_Abort(transport::jobComm(), code);
  boundedFinalize(code, 10.0, endComm);
  return code;
}

}  // namespace phx::apps
