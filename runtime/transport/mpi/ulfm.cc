#include "runtime/transport/mpi/ulfm.h"

#include <cstdlib>
#include <cstring>

namespace phx::transport::ulfm {

bool active() {
  static const bool on = [] {
    if (!kCompiled) return false;
    const char* v = std::getenv("OMPI_MCA_mpi_ft_enable");
    return v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
  }();
  return on;
}

#if PHX_HAVE_ULFM

bool isProcessFailure(int rc) {
  if (rc == MPI_SUCCESS) return false;
  int cls = rc;
  MPI_Error_class(rc, &cls);
  return cls == MPIX_ERR_PROC_FAILED || cls == MPIX_ERR_REVOKED
#if defined(MPIX_ERR_PROC_FAILED_PENDING)
         || cls == MPIX_ERR_PROC_FAILED_PENDING
#endif
      ;
}

std::vector<int> failedRanks(MPI_Comm comm) {
  // MPIX_Comm_get_failed (ULFM, MPI 4.x proposal): every failure this process knows of, without
  // acknowledging it (so MPI_ANY_SOURCE receives keep working). The library learns of a death
  // within ~10 ms as long as this process keeps calling into MPI (shared/infra-notes.md).
  std::vector<int> out;
  MPI_Group failed = MPI_GROUP_NULL, all = MPI_GROUP_NULL;
  if (MPIX_Comm_get_failed(comm, &failed) != MPI_SUCCESS) return out;
  int n = 0;
  MPI_Group_size(failed, &n);
  if (n > 0) {
    MPI_Comm_group(comm, &all);
    std::vector<int> in(n), ranks(n);
    for (int i = 0; i < n; ++i) in[i] = i;
    MPI_Group_translate_ranks(failed, n, in.data(), all, ranks.data());
    for (int r : ranks)
      if (r != MPI_UNDEFINED) out.push_back(r);
    MPI_Group_free(&all);
  }
  if (failed != MPI_GROUP_EMPTY) MPI_Group_free(&failed);
  return out;
}

MPI_Comm revokeAndShrink(MPI_Comm comm) {
  MPIX_Comm_revoke(comm);
  MPI_Comm shrunk = MPI_COMM_NULL;
  if (MPIX_Comm_shrink(comm, &shrunk) != MPI_SUCCESS) return MPI_COMM_NULL;
  return shrunk;
}

bool agree(MPI_Comm comm, bool ok) {
  int flag = ok ? 1 : 0;
  MPIX_Comm_agree(comm, &flag);  // on a failure during the agreement the flag is still agreed
  return flag != 0;
}

#else  // no ULFM in this MPI: the library reports nothing, detection is the heartbeats'

bool isProcessFailure(int) { return false; }
std::vector<int> failedRanks(MPI_Comm) { return {}; }
MPI_Comm revokeAndShrink(MPI_Comm) { return MPI_COMM_NULL; }
bool agree(MPI_Comm, bool ok) { return ok; }

#endif

}  // namespace phx::transport::ulfm
