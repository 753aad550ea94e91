#include "kernels/backend.h"

#include <cstdlib>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "kernels/cpu/cpu_backend.h"
#include "phx_config.h"
#include "runtime/core/error.h"
#if PHX_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace phx::kernels {

bool cudaAvailable(std::string* why) {
#if PHX_HAVE_CUDA
  return cudaDeviceUsable(why);
#else
  if (why) *why = "this build of Phoenix has no CUDA backend (configure with PHX_WITH_CUDA=ON)";
  return false;
#endif
}

int localRankFromEnv() {
  // Open MPI, MPICH/Hydra, then SLURM's srun: the rank's index among the ranks of its node.
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* s = std::getenv(v)) {
      const int r = std::atoi(s);
      if (r >= 0) return r;
    }
  return 0;
}

void flushDenormals() {
#if defined(__SSE__) || defined(__x86_64__)
  // FTZ (bit 15) and DAZ (bit 6) of MXCSR.
  _mm_setcsr(_mm_getcsr() | 0x8040u);
#endif
}

std::unique_ptr<Backend> makeBackend(const std::string& device, int threads) {
  flushDenormals();
  if (device == "cpu") return std::make_unique<CpuBackend>(threads);
  std::string why;
  const bool gpu = cudaAvailable(&why);
  if (device == "auto") {
#if PHX_HAVE_CUDA
    if (gpu) return makeCudaBackend(localRankFromEnv());
#endif
    return std::make_unique<CpuBackend>(threads);
  }
  if (device == "cuda") {
    if (!gpu) PHX_USER_ERROR("--device cuda: no usable GPU (", why, "); use --device cpu or auto");
#if PHX_HAVE_CUDA
    return makeCudaBackend(localRankFromEnv());
#endif
  }
  PHX_USER_ERROR("--device '", device, "' is not known (accepted: cpu, cuda, auto)");
}

}  // namespace phx::kernels
