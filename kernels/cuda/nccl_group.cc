// NCCL implementation of kernels/group_reduce.h (compiled only when PHX_HAVE_NCCL).
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "kernels/group_reduce.h"
#include "phx_config.h"
#include "runtime/core/error.h"

static_assert(phx::kernels::NcclGroup::kIdBytes == NCCL_UNIQUE_ID_BYTES);

namespace phx::kernels {

namespace {

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress)
    detail::throwLibrary("NCCL", __FILE__, __LINE__, std::string(what) + ": " + ncclGetErrorString(r));
}

void checkCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    detail::throwLibrary("CUDA", __FILE__, __LINE__, std::string(what) + ": " + cudaGetErrorString(e));
}

// Short sleeps, not a spin: a waiting rank leaves the cores to the others (an oversubscribed
// node), at the cost of up to 200 us of latency per collective.
void pause(int* round) {
  if (*round < 16) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(*round < 64 ? 20 : 200));
  }
  ++*round;
}

}  // namespace

bool ncclBuilt() { return true; }

std::string gpuIdentity() {
  int dev = 0;
  checkCuda(cudaGetDevice(&dev), "cudaGetDevice");
  char bus[64] = {0};
  checkCuda(cudaDeviceGetPCIBusId(bus, sizeof(bus) - 1, dev), "cudaDeviceGetPCIBusId");
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return std::string(host) + "/" + bus;
}

std::vector<uint8_t> NcclGroup::newId() {
  ncclUniqueId id;
  check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::vector<uint8_t> out(kIdBytes);
  std::memcpy(out.data(), id.internal, kIdBytes);
  return out;
}

struct NcclGroup::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  double timeoutS = 0;
  bool broken = false;
  ~Impl() {
    if (stream) cudaStreamDestroy(stream);
  }

  // Waits until the communicator has no operation in progress (init or an enqueue).
  void settle(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    int round = 0;
    for (;;) {
      ncclResult_t st = ncclSuccess;
      check(ncclCommGetAsyncError(comm, &st), "ncclCommGetAsyncError");
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) fail(what, ncclGetErrorString(st));
      if (elapsed(t0) > timeoutS) fail(what, "timed out");
      pause(&round);
    }
  }
  // Waits until the stream's collective has completed, watching for asynchronous errors.
  void finish(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    int round = 0;
    for (;;) {
      const cudaError_t e = cudaStreamQuery(stream);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) fail(what, cudaGetErrorString(e));
      ncclResult_t st = ncclSuccess;
      check(ncclCommGetAsyncError(comm, &st), "ncclCommGetAsyncError");
      if (st != ncclSuccess && st != ncclInProgress) fail(what, ncclGetErrorString(st));
      if (elapsed(t0) > timeoutS) fail(what, "timed out");
      pause(&round);
    }
  }
  static double elapsed(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  [[noreturn]] void fail(const char* what, const std::string& why) {
    broken = true;
    ncclCommAbort(comm);  // frees the comm; never blocks on the missing member
    comm = nullptr;
    PHX_USER_ERROR("NCCL ", what, " in the worker group failed (", why, " after at most ", timeoutS,
                   " s): a group member died or hangs; a group cannot shrink -- restart with --resume, "
                   "or use --group-size 1");
  }
};

NcclGroup::NcclGroup(const std::vector<uint8_t>& id, int size, int rank, double timeoutS)
    : impl_(std::make_unique<Impl>()), size_(size), rank_(rank) {
  PHX_ENFORCE(id.size() == kIdBytes, "NCCL id of ", id.size(), " bytes");
  ncclUniqueId uid;
  std::memcpy(uid.internal, id.data(), kIdBytes);
  impl_->timeoutS = timeoutS;
  checkCuda(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // init and collectives return at once; Impl::settle/finish wait bounded
  check(ncclCommInitRankConfig(&impl_->comm, size, uid, rank, &config), "ncclCommInitRankConfig");
  impl_->settle("communicator setup");
}

NcclGroup::~NcclGroup() {
  if (!impl_) return;
  if (impl_->comm) {
    // A clean finalize needs every member: wait for it a bounded time, else (or after an
    // error) abort, which never blocks. Destructors never throw.
    bool clean = false;
    const ncclResult_t fin = impl_->broken ? ncclInvalidUsage : ncclCommFinalize(impl_->comm);
    if (fin == ncclSuccess || fin == ncclInProgress) {
      const auto t0 = std::chrono::steady_clock::now();
      int round = 0;
      for (;;) {
        ncclResult_t st = ncclInternalError;
        if (ncclCommGetAsyncError(impl_->comm, &st) != ncclSuccess) break;
        if (st == ncclSuccess) {
          clean = true;
          break;
        }
        if (st != ncclInProgress || Impl::elapsed(t0) > std::min(impl_->timeoutS, 10.0)) break;
        pause(&round);
      }
    }
    if (clean) ncclCommDestroy(impl_->comm);
    else ncclCommAbort(impl_->comm);
  }
}

void NcclGroup::reduceSum(float* buf, size_t n) {
  PHX_ENFORCE(impl_->comm, "NCCL group used after a failure");
  check(ncclReduce(buf, buf, n, ncclFloat, ncclSum, 0, impl_->comm, impl_->stream), "ncclReduce");
  impl_->settle("gradient reduction");
  impl_->finish("gradient reduction");
}

void NcclGroup::broadcast(float* buf, size_t n) {
  PHX_ENFORCE(impl_->comm, "NCCL group used after a failure");
  check(ncclBroadcast(buf, buf, n, ncclFloat, 0, impl_->comm, impl_->stream), "ncclBroadcast");
  impl_->settle("weight broadcast");
  impl_->finish("weight broadcast");
}

}  // namespace phx::kernels
