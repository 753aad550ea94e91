#include "kernels/backend.h"

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

std::unique_ptr<Backend> makeBackend(const std::string& device, int threads) {
  if (device == "cpu") return std::make_unique<CpuBackend>(threads);
  std::string why;
  const bool gpu = cudaAvailable(&why);
  if (device == "auto") {
#if PHX_HAVE_CUDA
    if (gpu) return makeCudaBackend();
#endif
    return std::make_unique<CpuBackend>(threads);
  }
  if (device == "cuda") {
    if (!gpu) PHX_USER_ERROR("--device cuda: no usable GPU (", why, "); use --device cpu or auto");
#if PHX_HAVE_CUDA
    return makeCudaBackend();
#endif
  }
  PHX_USER_ERROR("--device '", device, "' is not known (accepted: cpu, cuda, auto)");
}

}  // namespace phx::kernels
