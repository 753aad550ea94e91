#include "apps/phoenix/mpi_main.h"

#include <cstdio>
#include <exception>

#include "runtime/core/error.h"
#include "runtime/transport/mpi/mpi_transport.h"

namespace phx::apps {

int runUnderMpi(const std::function<void(int rank, int size)>& body) {
  int provided = 0;
  PHX_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int code = 0;
  try {
    body(rank, size);
  } catch (const UserError& e) {
    std::fprintf(stderr, "phoenix: error: [rank %d] %s\n", rank, e.what());
    code = 2;
  } catch (const transport::PeerFailure& e) {
    std::fprintf(stderr, "phoenix: error: [rank %d] %s\n", rank, e.what());
    code = 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "phoenix: fatal: [rank %d] %s\n", rank, e.what());
    code = 1;
  }
  if (code != 0 && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  MPI_Finalize();
  return code;
}

}  // namespace phx::apps
