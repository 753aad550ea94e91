// MPI transport: non-blocking point-to-point only. A header goes with tag = message type, its
// payload right after with tag 100 + type, straight from and into the callers' buffers. Every
// wait is a test loop with a deadline (a dead peer never reports an error with the MPIs we
// have, see shared/infra-notes.md), and no collective is ever called on the communicator.
#pragma once

#include <mpi.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/transport/transport.h"

// PHX_MPI_CHECK(call): throws LibraryError with host, rank, file:line and MPI's own message.
#define PHX_MPI_CHECK(call)                                                        \
  do {                                                                             \
    const int phx_mpi_rc_ = (call);                                                \
    if (phx_mpi_rc_ != MPI_SUCCESS) ::phx::transport::mpiFail(#call, phx_mpi_rc_, __FILE__, __LINE__); \
  } while (0)

namespace phx::transport {

[[noreturn]] void mpiFail(const char* call, int rc, const char* file, int line);

// Ranks are the job's logical ranks. At start logical rank = rank in the communicator; a
// replacement process spawned for a dead rank (recovery/respawn.h) takes that rank's number and
// is reached over another communicator (the merge of the survivors and the new process): each
// peer has its own route (communicator + rank there), and a message that arrives over a route
// the peer has left (its dead predecessor's) is dropped.
class MpiTransport final : public Transport {
 public:
  // Takes a communicator the caller keeps alive (errors are set to return, not abort).
  explicit MpiTransport(MPI_Comm comm);
  // A spawned process: comm's ranks are not the logical ones; logicalOf[comm rank] is.
  MpiTransport(MPI_Comm comm, int logicalRank, const std::vector<int>& logicalOf);
  ~MpiTransport() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return links_[0].comm; }

  // From any thread: the next incarnation of logical rank `logical` is rank `rankThere` of
  // comm, whose ranks are logicalOf[...]. Takes effect at revive(logical) on the owning thread.
  void stageRoute(int logical, MPI_Comm comm, int rankThere, const std::vector<int>& logicalOf);
  void revive(int rank) override;

  SendId send(int dst, const Header& h, const void* payload) override;
  bool sendDone(SendId id) override;
  int destinationOf(SendId id) const override;
  void markDead(int rank) override;
  bool poll(MsgType type, Header* h, int* src) override;
  std::vector<int> reportedFailures() override;
  void recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) override;

 private:
  struct Slot {
    Header h;
    int dst = -1;
    MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  };
  struct Link {
    MPI_Comm comm = MPI_COMM_NULL;
    std::vector<int> logicalOf;  // comm rank -> logical rank (-1: none)
  };
  struct Staged {
    int logical;
    MPI_Comm comm;
    int rankThere;
    std::vector<int> logicalOf;
  };
  int linkOf(MPI_Comm comm, const std::vector<int>& logicalOf);
  bool pollLink(int link, MsgType type, Header* h, int* src);
  std::vector<Link> links_;      // links_[0]: the communicator this transport started on
  std::vector<int> peerLink_;    // logical rank -> its current link
  std::vector<int> peerRank_;    // logical rank -> its rank on that link
  std::mutex stagedMu_;
  std::vector<Staged> staged_;   // guarded by stagedMu_
  void collectFailures();
  int rank_ = 0, size_ = 1;
  SendId next_ = 0;
  std::unordered_map<SendId, std::unique_ptr<Slot>> sends_;
  std::vector<char> dead_;
  // ULFM (ulfm.h): a call that failed because a process died is not an error here: the ranks
  // the library names are kept for the detector, and the operation counts as not done yet.
  bool failedProcess(int rc);
  std::vector<int> reported_;
  std::vector<char> told_;  // ranks already returned by reportedFailures()
};

}  // namespace phx::transport
