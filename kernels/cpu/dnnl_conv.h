// oneDNN convolution primitives for the CPU backend: forward, backward-data and
// backward-weights of a stride-1 "same" convolution over NHWC activations and OHWI weights.
// oneDNN's JIT kernels (jit:avx512_core and friends) want their own blocked weight layout, so
// the small weight tensors are reordered on each call; activations stay NHWC, untouched.
// Primitives are built once per shape (training batch, evaluation batch) and cached.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "kernels/backend.h"

namespace phx::kernels {

class DnnlConv {
 public:
  DnnlConv();
  ~DnnlConv();
  DnnlConv(const DnnlConv&) = delete;
  DnnlConv& operator=(const DnnlConv&) = delete;

  void forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y);
  void backwardData(const ConvShape& s, const float* dy, const float* w, float* dx);
  void backwardWeights(const ConvShape& s, const float* x, const float* dy, float* dw,
                       float* dbias);
  // The implementation oneDNN chose for shape s ("jit:avx512_core", "gemm:jit" ...).
  std::string implementation(const ConvShape& s);

 private:
  struct Prims;
  Prims& prims(const ConvShape& s);
  struct Engine;
  std::unique_ptr<Engine> eng_;
  std::map<std::tuple<int, int, int, int, int, int>, std::unique_ptr<Prims>> cache_;
};

}  // namespace phx::kernels
