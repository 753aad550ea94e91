// CPU backend: oneDNN's sgemm for every matrix product (fast whatever OPENBLAS_CORETYPE says,
// and it shares its OpenMP thread pool with our own loops, so there is one pool, not two),
// im2col-free "shifted GEMM" convolutions, and OpenMP loops for the element-wise ops.
#pragma once

#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/dnnl_conv.h"

namespace phx::kernels {

class CpuBackend final : public Backend {
 public:
  // threads > 0 sets the OpenMP pool size for this process; 0 leaves it as it is.
  explicit CpuBackend(int threads);

  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string describe() const override;

  void* allocBytes(size_t bytes) override;
  void freeBytes(void* p) noexcept override;
  void copyToDevice(void* dst, const void* src, size_t bytes) override;
  void copyToHost(void* dst, const void* src, size_t bytes) override;
  void copyOnDevice(void* dst, const void* src, size_t bytes) override;
  void fill(float* x, size_t n, float value) override;
  void synchronize() override {}

  void gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override;
  void addBias(float* y, const float* bias, int rows, int cols) override;
  void biasGrad(const float* dy, float* db, int rows, int cols) override;

  void convForward(const ConvShape& s, const float* x, const float* w, const float* bias,
                   float* y) override;
  void convBackwardData(const ConvShape& s, const float* dy, const float* w, float* dx) override;
  void convBackwardWeights(const ConvShape& s, const float* x, const float* dy, float* dw,
                           float* dbias) override;

  void maxPoolForward(const PoolShape& s, const float* x, float* y, uint8_t* argmax) override;
  void maxPoolBackward(const PoolShape& s, const float* dy, const uint8_t* argmax,
                       float* dx) override;

  void reluForward(const float* x, float* y, size_t n) override;
  void reluBackward(const float* y, const float* dy, float* dx, size_t n) override;
  void dropoutForward(const float* x, float* y, size_t n, float p, uint64_t seed,
                      uint64_t stream) override;
  void dropoutBackward(const float* dy, float* dx, size_t n, float p, uint64_t seed,
                       uint64_t stream) override;
  void axpy(size_t n, float alpha, const float* x, float* y) override;
  void scale(size_t n, float alpha, float* x) override;

  LossResult softmaxCrossEntropy(const float* logits, const int32_t* labels, int batch,
                                 int classes, float* dlogits) override;
  void sgdStep(float* w, const float* g, float* velocity, size_t n, const SgdParams& p) override;

  int threads() const { return threads_; }

 private:
  bool useDirect(const ConvShape& s) const;
  void directConvForward(const ConvShape& s, const float* x, const float* w, const float* bias,
                         float* y);
  void directConvBackwardWeights(const ConvShape& s, const float* x, const float* dy, float* dw,
                                 float* dbias);
  float* scratch(size_t n);  // a reusable buffer (im2col columns, partial sums)
  int threads_ = 1;
  bool useDnnl_ = true;  // oneDNN convolution primitives; PHX_CPU_CONV=im2col selects im2col+GEMM
  DnnlConv dnnlConv_;
  std::vector<float> scratch_;
  std::vector<float> scratch2_;
  std::vector<float> scratchT_;
};

}  // namespace phx::kernels
