// Checking macros for CUDA, cuBLAS and cuDNN calls: a failure throws phx::LibraryError with
// host, rank, file:line, the call and the library's own message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "phx_config.h"
#include "runtime/core/error.h"
#if PHX_HAVE_CUDNN
#include <cudnn.h>
#endif

#define PHX_CUDA_CHECK(expr)                                                             \
  do {                                                                                   \
    const cudaError_t phx_e_ = (expr);                                                   \
    if (phx_e_ != cudaSuccess)                                                           \
      ::phx::detail::throwLibrary("CUDA", __FILE__, __LINE__,                            \
                                  std::string(#expr) + ": " + cudaGetErrorString(phx_e_)); \
  } while (0)

#define PHX_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                       \
    const cublasStatus_t phx_s_ = (expr);                                                    \
    if (phx_s_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::phx::detail::throwLibrary("cuBLAS", __FILE__, __LINE__,                              \
                                  std::string(#expr) + ": " + cublasGetStatusString(phx_s_)); \
  } while (0)

#if PHX_HAVE_CUDNN
#define PHX_CUDNN_CHECK(expr)                                                               \
  do {                                                                                      \
    const cudnnStatus_t phx_s_ = (expr);                                                    \
    if (phx_s_ != CUDNN_STATUS_SUCCESS)                                                     \
      ::phx::detail::throwLibrary("cuDNN", __FILE__, __LINE__,                              \
                                  std::string(#expr) + ": " + cudnnGetErrorString(phx_s_)); \
  } while (0)
#endif
