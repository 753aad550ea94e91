// GPU-to-GPU reduction inside a worker group (--group-size G with CUDA workers): NCCL's
// reduce and broadcast on device buffers, so a group's gradients never leave the GPUs before
// the leader's push. Built when PHX_HAVE_NCCL; otherwise every entry point except
// ncclBuilt() throws a UserError that says how to get it.
//
// Fault handling: the communicator is non-blocking; every wait (init, each collective) polls
// with a deadline and NCCL's asynchronous error, and a group whose member died or hangs is
// aborted (ncclCommAbort) with a clear error instead of hanging the rank. A group cannot
// shrink (as with the MPI path, docs/architecture.md "Worker groups").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace phx::kernels {

// True when this build has NCCL.
bool ncclBuilt();

// The current CUDA device as "host/PCI bus id": two ranks that print the same string share a
// GPU, which NCCL refuses in one communicator.
std::string gpuIdentity();

class NcclGroup {
 public:
  static constexpr size_t kIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
  // A new communicator id (on the group's rank 0, then sent to the members).
  static std::vector<uint8_t> newId();

  // Joins the group as `rank` of `size` on the current CUDA device; waits at most timeoutS
  // for everyone to join.
  NcclGroup(const std::vector<uint8_t>& id, int size, int rank, double timeoutS);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  // Sum of every member's buf[0, n) into rank 0's buf (in place; other members' bufs are
  // unchanged). Device pointers; the caller's earlier work on them must be complete.
  void reduceSum(float* buf, size_t n);
  // Rank 0's buf[0, n) into every member's buf.
  void broadcast(float* buf, size_t n);

  int size() const { return size_; }
  int rank() const { return rank_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int size_ = 0, rank_ = 0;
};

}  // namespace phx::kernels
