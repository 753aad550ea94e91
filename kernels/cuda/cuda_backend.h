// CUDA backend entry points, callable from plain C++ (the class lives in cuda_backend.cu):
// cuBLAS for GEMM, cuDNN for convolutions (an im2col + cuBLAS path when built without
// cuDNN), and Phoenix's own kernels for the element-wise ops, pooling, loss and SGD.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace phx::kernels {

// True when a CUDA device can be used; on any CUDA error (no driver gives error 35) false,
// with the reason in *why.
bool cudaDeviceUsable(std::string* why);
// Creates the backend on device `localRank % deviceCount`.
std::unique_ptr<Backend> makeCudaBackend(int localRank = 0);

}  // namespace phx::kernels
