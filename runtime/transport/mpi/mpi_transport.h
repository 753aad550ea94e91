// MPI transport: non-blocking point-to-point only. A header goes with tag = message type, its
// payload right after with tag 100 + type, straight from and into the callers' buffers. Every
// wait is a test loop with a deadline (a dead peer never reports an error with the MPIs we
// have, see shared/infra-notes.md), and no collective is ever called on the communicator.
#pragma once

#include <mpi.h>

#include <memory>
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

class MpiTransport final : public Transport {
 public:
  // Takes a communicator the caller keeps alive (errors are set to return, not abort).
  explicit MpiTransport(MPI_Comm comm);
  ~MpiTransport() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return comm_; }

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
  MPI_Comm comm_;
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
