// The CUDA implementation of kernels/backend.h. Every op runs on one stream; results that the
// host needs (loss, correct count) are copied back synchronously. TF32 is off (FMA math) so
// that results agree with the CPU backend within float32 rounding.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"

namespace phx::kernels {

namespace {

constexpr int kThreads = 256;
inline int blocksFor(size_t n) {
  return static_cast<int>(std::min<size_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

// ---- element-wise kernels (grid-stride loops) ----
__global__ void fillKernel(float* x, size_t n, float v) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    x[i] = v;
}
__global__ void addBiasKernel(float* y, const float* b, size_t n, int cols) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] += b[i % cols];
}
// One block per column; a fixed-shape tree reduction keeps the result deterministic.
__global__ void biasGradKernel(const float* dy, float* db, int rows, int cols) {
  __shared__ float part[kThreads];
  const int c = blockIdx.x;
  float s = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) s += dy[static_cast<size_t>(r) * cols + c];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[c] = part[0];
}
__global__ void reluFwdKernel(const float* x, float* y, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
__global__ void reluBwdKernel(const float* y, const float* dy, float* dx, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}
__global__ void dropoutKernel(const float* x, float* y, size_t n, uint32_t thr, float sc,
                              uint64_t seed, uint64_t stream) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = dropoutKeep(seed, stream, i, thr) ? x[i] * sc : 0.0f;
}
__global__ void axpyKernel(size_t n, float a, const float* x, float* y) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] += a * x[i];
}
__global__ void scaleKernel(size_t n, float a, float* x) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    x[i] *= a;
}
__global__ void sgdKernel(float* w, const float* g, float* v, size_t n, float lr, float mu,
                          float wd, bool nesterov) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float d = g[i] + wd * w[i];
    if (mu == 0.0f) {
      w[i] -= lr * d;
      continue;
    }
    const float vi = mu * v[i] + d;
    v[i] = vi;
    w[i] -= lr * (nesterov ? d + mu * vi : vi);
  }
}

// ---- pooling (NHWC, 2x2, stride 2): one thread per output element ----
__global__ void maxPoolFwdKernel(const float* x, float* y, uint8_t* am, int B, int H, int W,
                                 int C) {
  const int OH = H / 2, OW = W / 2;
  const size_t n = static_cast<size_t>(B) * OH * OW * C;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int c = i % C;
    const int ow = (i / C) % OW;
    const int oh = (i / (static_cast<size_t>(C) * OW)) % OH;
    const int b = i / (static_cast<size_t>(C) * OW * OH);
    const float* a = x + ((static_cast<size_t>(b) * H + 2 * oh) * W + 2 * ow) * C + c;
    const float* d = a + static_cast<size_t>(W) * C;
    float m = a[0];
    uint8_t k = 0;
    if (a[C] > m) { m = a[C]; k = 1; }
    if (d[0] > m) { m = d[0]; k = 2; }
    if (d[C] > m) { m = d[C]; k = 3; }
    y[i] = m;
    am[i] = k;
  }
}
__global__ void maxPoolBwdKernel(const float* dy, const uint8_t* am, float* dx, int B, int H,
                                 int W, int C) {
  const int OH = H / 2, OW = W / 2;
  const size_t n = static_cast<size_t>(B) * OH * OW * C;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int c = i % C;
    const int ow = (i / C) % OW;
    const int oh = (i / (static_cast<size_t>(C) * OW)) % OH;
    const int b = i / (static_cast<size_t>(C) * OW * OH);
    float* a = dx + ((static_cast<size_t>(b) * H + 2 * oh) * W + 2 * ow) * C + c;
    float* d = a + static_cast<size_t>(W) * C;
    const float g = dy[i];
    const uint8_t k = am[i];
    a[0] = k == 0 ? g : 0.0f;
    a[C] = k == 1 ? g : 0.0f;
    d[0] = k == 2 ? g : 0.0f;
    d[C] = k == 3 ? g : 0.0f;
  }
}

// ---- softmax cross-entropy: one thread per row (few classes) ----
__global__ void softmaxXentKernel(const float* z, const int32_t* labels, int batch, int classes,
                                  float* dz, double* rowLoss, int* rowCorrect) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const float* zr = z + static_cast<size_t>(b) * classes;
  const int y = labels[b];
  int best = 0;
  float mx = zr[0];
  for (int c = 1; c < classes; ++c)
    if (zr[c] > mx) { mx = zr[c]; best = c; }
  double sum = 0.0;
  for (int c = 0; c < classes; ++c) sum += exp(static_cast<double>(zr[c] - mx));
  const double logSum = log(sum);
  rowLoss[b] = logSum - static_cast<double>(zr[y] - mx);
  rowCorrect[b] = best == y;
  if (dz) {
    const float invB = 1.0f / static_cast<float>(batch);
    for (int c = 0; c < classes; ++c) {
      const float p = static_cast<float>(exp(static_cast<double>(zr[c] - mx) - logSum));
      dz[static_cast<size_t>(b) * classes + c] = (p - (c == y ? 1.0f : 0.0f)) * invB;
    }
  }
}

#if !PHX_HAVE_CUDNN
// ---- im2col (NHWC, (kh, kw, ci) order), for builds without cuDNN ----
__global__ void im2colKernel(const float* x, float* col, int B, int H, int W, int C, int k) {
  const int pad = k / 2;
  const size_t rowLen = static_cast<size_t>(k) * k * C;
  const size_t n = static_cast<size_t>(B) * H * W * rowLen;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const size_t p = i / rowLen;
    const int r = i % rowLen;
    const int ci = r % C, kw = (r / C) % k, kh = r / (C * k);
    const int ow = p % W, oh = (p / W) % H, b = p / (static_cast<size_t>(W) * H);
    const int ih = oh + kh - pad, iw = ow + kw - pad;
    col[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                 ? x[((static_cast<size_t>(b) * H + ih) * W + iw) * C + ci]
                 : 0.0f;
  }
}
__global__ void flipWeightsKernel(const float* w, float* wf, int cout, int cin, int k) {
  const size_t n = static_cast<size_t>(cout) * k * k * cin;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int ci = i % cin, kw = (i / cin) % k, kh = (i / (cin * k)) % k, co = i / (cin * k * k);
    wf[((static_cast<size_t>(ci) * k + (k - 1 - kh)) * k + (k - 1 - kw)) * cout + co] = w[i];
  }
}
#endif

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    PHX_CUDA_CHECK(cudaSetDevice(device));
    PHX_CUBLAS_CHECK(cublasCreate(&blas_));
    PHX_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH));
#if PHX_HAVE_CUDNN
    PHX_CUDNN_CHECK(cudnnCreate(&dnn_));
    PHX_CUDNN_CHECK(cudnnCreateTensorDescriptor(&xDesc_));
    PHX_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yDesc_));
    PHX_CUDNN_CHECK(cudnnCreateFilterDescriptor(&wDesc_));
    PHX_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&convDesc_));
#endif
    cudaDeviceProp prop{};
    PHX_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = prop.name;
  }
  ~CudaBackend() override {
    // Destructors log, never throw: errors here are ignored on purpose.
    if (workspace_) cudaFree(workspace_);
#if PHX_HAVE_CUDNN
    cudnnDestroyConvolutionDescriptor(convDesc_);
    cudnnDestroyFilterDescriptor(wDesc_);
    cudnnDestroyTensorDescriptor(yDesc_);
    cudnnDestroyTensorDescriptor(xDesc_);
    cudnnDestroy(dnn_);
#endif
    cublasDestroy(blas_);
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string describe() const override {
    return "cuda:" + std::to_string(device_) + " (" + name_ + ", cuBLAS" +
           (PHX_HAVE_CUDNN ? ", cuDNN)" : ", im2col convolutions)");
  }

  void* allocBytes(size_t bytes) override {
    void* p = nullptr;
    PHX_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
    return p;
  }
  void freeBytes(void* p) noexcept override { cudaFree(p); }
  void copyToDevice(void* dst, const void* src, size_t bytes) override {
    PHX_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  }
  void copyToHost(void* dst, const void* src, size_t bytes) override {
    PHX_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  }
  void copyOnDevice(void* dst, const void* src, size_t bytes) override {
    PHX_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
  }
  void fill(float* x, size_t n, float v) override {
    if (n) fillKernel<<<blocksFor(n), kThreads>>>(x, n, v);
    check();
  }
  void synchronize() override { PHX_CUDA_CHECK(cudaDeviceSynchronize()); }

  void gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    if (m == 0 || n == 0) return;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    PHX_CUBLAS_CHECK(cublasSgemm(blas_, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 transA ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a,
                                 lda, &beta, c, ldc));
  }
  void addBias(float* y, const float* bias, int rows, int cols) override {
    const size_t n = static_cast<size_t>(rows) * cols;
    if (n) addBiasKernel<<<blocksFor(n), kThreads>>>(y, bias, n, cols);
    check();
  }
  void biasGrad(const float* dy, float* db, int rows, int cols) override {
    biasGradKernel<<<cols, kThreads>>>(dy, db, rows, cols);
    check();
  }

  void convForward(const ConvShape& s, const float* x, const float* w, const float* bias,
                   float* y) override {
#if PHX_HAVE_CUDNN
    setConv(s);
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int got = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn_, xDesc_, wDesc_, convDesc_,
                                                           yDesc_, 8, &got, perf));
    const auto algo = pick(perf, got).algo;
    size_t ws = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(dnn_, xDesc_, wDesc_, convDesc_,
                                                            yDesc_, algo, &ws));
    const float one = 1.0f, zero = 0.0f;
    PHX_CUDNN_CHECK(cudnnConvolutionForward(dnn_, &one, xDesc_, x, wDesc_, w, convDesc_, algo,
                                            workspace(ws), ws, &zero, yDesc_, y));
#else
    const int kk = s.kernel * s.kernel * s.cin;
    float* col = static_cast<float*>(workspace(s.pixels() * kk * sizeof(float)));
    const size_t n = s.pixels() * kk;
    im2colKernel<<<blocksFor(n), kThreads>>>(x, col, s.batch, s.height, s.width, s.cin, s.kernel);
    check();
    gemm(false, true, static_cast<int>(s.pixels()), s.cout, kk, 1.0f, col, kk, w, kk, 0.0f, y,
         s.cout);
#endif
    if (bias) addBias(y, bias, static_cast<int>(s.pixels()), s.cout);
  }

  void convBackwardData(const ConvShape& s, const float* dy, const float* w, float* dx) override {
#if PHX_HAVE_CUDNN
    setConv(s);
    cudnnConvolutionBwdDataAlgoPerf_t perf[8];
    int got = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(dnn_, wDesc_, yDesc_, convDesc_,
                                                                xDesc_, 8, &got, perf));
    const auto algo = pick(perf, got).algo;
    size_t ws = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(dnn_, wDesc_, yDesc_, convDesc_,
                                                                 xDesc_, algo, &ws));
    const float one = 1.0f, zero = 0.0f;
    PHX_CUDNN_CHECK(cudnnConvolutionBackwardData(dnn_, &one, wDesc_, w, yDesc_, dy, convDesc_,
                                                 algo, workspace(ws), ws, &zero, xDesc_, dx));
#else
    if (flipped_.size() < s.weightCount()) flipped_ = DeviceArray<float>(*this, s.weightCount());
    flipWeightsKernel<<<blocksFor(s.weightCount()), kThreads>>>(w, flipped_.data(), s.cout, s.cin,
                                                                s.kernel);
    check();
    ConvShape t = s;
    t.cin = s.cout;
    t.cout = s.cin;
    convForward(t, dy, flipped_.data(), nullptr, dx);
#endif
  }

  void convBackwardWeights(const ConvShape& s, const float* x, const float* dy, float* dw,
                           float* dbias) override {
#if PHX_HAVE_CUDNN
    setConv(s);
    cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
    int got = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(dnn_, xDesc_, yDesc_, convDesc_,
                                                                  wDesc_, 8, &got, perf));
    const auto algo = pick(perf, got).algo;
    size_t ws = 0;
    PHX_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn_, xDesc_, yDesc_,
                                                                   convDesc_, wDesc_, algo, &ws));
    const float one = 1.0f, zero = 0.0f;
    PHX_CUDNN_CHECK(cudnnConvolutionBackwardFilter(dnn_, &one, xDesc_, x, yDesc_, dy, convDesc_,
                                                   algo, workspace(ws), ws, &zero, wDesc_, dw));
#else
    const int kk = s.kernel * s.kernel * s.cin;
    float* col = static_cast<float*>(workspace(s.pixels() * kk * sizeof(float)));
    const size_t n = s.pixels() * kk;
    im2colKernel<<<blocksFor(n), kThreads>>>(x, col, s.batch, s.height, s.width, s.cin, s.kernel);
    check();
    gemm(true, false, s.cout, kk, static_cast<int>(s.pixels()), 1.0f, dy, s.cout, col, kk, 0.0f,
         dw, kk);
#endif
    if (dbias) biasGrad(dy, dbias, static_cast<int>(s.pixels()), s.cout);
  }

  void maxPoolForward(const PoolShape& s, const float* x, float* y, uint8_t* argmax) override {
    const size_t n = s.outputCount();
    if (n) maxPoolFwdKernel<<<blocksFor(n), kThreads>>>(x, y, argmax, s.batch, s.height, s.width,
                                                        s.channels);
    check();
  }
  void maxPoolBackward(const PoolShape& s, const float* dy, const uint8_t* argmax,
                       float* dx) override {
    const size_t n = s.outputCount();
    if (n) maxPoolBwdKernel<<<blocksFor(n), kThreads>>>(dy, argmax, dx, s.batch, s.height, s.width,
                                                        s.channels);
    check();
  }
  void reluForward(const float* x, float* y, size_t n) override {
    if (n) reluFwdKernel<<<blocksFor(n), kThreads>>>(x, y, n);
    check();
  }
  void reluBackward(const float* y, const float* dy, float* dx, size_t n) override {
    if (n) reluBwdKernel<<<blocksFor(n), kThreads>>>(y, dy, dx, n);
    check();
  }
  void dropoutForward(const float* x, float* y, size_t n, float p, uint64_t seed,
                      uint64_t stream) override {
    if (n)
      dropoutKernel<<<blocksFor(n), kThreads>>>(x, y, n, dropoutThreshold(p), 1.0f / (1.0f - p),
                                                seed, stream);
    check();
  }
  void dropoutBackward(const float* dy, float* dx, size_t n, float p, uint64_t seed,
                       uint64_t stream) override {
    dropoutForward(dy, dx, n, p, seed, stream);
  }
  void axpy(size_t n, float alpha, const float* x, float* y) override {
    if (n) axpyKernel<<<blocksFor(n), kThreads>>>(n, alpha, x, y);
    check();
  }
  void scale(size_t n, float alpha, float* x) override {
    if (n) scaleKernel<<<blocksFor(n), kThreads>>>(n, alpha, x);
    check();
  }

  LossResult softmaxCrossEntropy(const float* logits, const int32_t* labels, int batch,
                                 int classes, float* dlogits) override {
    if (static_cast<int>(rowLoss_.size()) < batch) {
      rowLoss_ = DeviceArray<double>(*this, batch);
      rowCorrect_ = DeviceArray<int>(*this, batch);
    }
    softmaxXentKernel<<<(batch + kThreads - 1) / kThreads, kThreads>>>(
        logits, labels, batch, classes, dlogits, rowLoss_.data(), rowCorrect_.data());
    check();
    std::vector<double> loss(batch);
    std::vector<int> correct(batch);
    copyToHost(loss.data(), rowLoss_.data(), batch * sizeof(double));
    copyToHost(correct.data(), rowCorrect_.data(), batch * sizeof(int));
    LossResult r;
    for (int b = 0; b < batch; ++b) {
      r.lossSum += loss[b];
      r.correct += correct[b];
    }
    return r;
  }

  void sgdStep(float* w, const float* g, float* v, size_t n, const SgdParams& p) override {
    if (n) sgdKernel<<<blocksFor(n), kThreads>>>(w, g, v, n, p.lr, p.momentum, p.weightDecay,
                                                 p.nesterov);
    check();
  }

 private:
  static void check() { PHX_CUDA_CHECK(cudaGetLastError()); }

  void* workspace(size_t bytes) {
    if (bytes > workspaceBytes_) {
      if (workspace_) PHX_CUDA_CHECK(cudaFree(workspace_));
      workspace_ = nullptr;
      PHX_CUDA_CHECK(cudaMalloc(&workspace_, bytes));
      workspaceBytes_ = bytes;
    }
    return workspace_;
  }

#if PHX_HAVE_CUDNN
  void setConv(const ConvShape& s) {
    PHX_CUDNN_CHECK(cudnnSetTensor4dDescriptor(xDesc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT,
                                               s.batch, s.cin, s.height, s.width));
    PHX_CUDNN_CHECK(cudnnSetTensor4dDescriptor(yDesc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT,
                                               s.batch, s.cout, s.height, s.width));
    // NHWC filters are KRSC, which is Phoenix's OHWI.
    PHX_CUDNN_CHECK(cudnnSetFilter4dDescriptor(wDesc_, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, s.cout,
                                               s.cin, s.kernel, s.kernel));
    PHX_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(convDesc_, s.pad(), s.pad(), 1, 1, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    PHX_CUDNN_CHECK(cudnnSetConvolutionMathType(convDesc_, CUDNN_FMA_MATH));
  }
  template <typename Perf>
  static const Perf& pick(const Perf* perf, int got) {
    for (int i = 0; i < got; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i];
    ::phx::detail::throwLibrary("cuDNN", __FILE__, __LINE__,
                                "no convolution algorithm supports this shape");
  }
  cudnnHandle_t dnn_ = nullptr;
  cudnnTensorDescriptor_t xDesc_ = nullptr, yDesc_ = nullptr;
  cudnnFilterDescriptor_t wDesc_ = nullptr;
  cudnnConvolutionDescriptor_t convDesc_ = nullptr;
#endif

  int device_ = 0;
  std::string name_;
  cublasHandle_t blas_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspaceBytes_ = 0;
  DeviceArray<float> flipped_;
  DeviceArray<double> rowLoss_;
  DeviceArray<int> rowCorrect_;
};

}  // namespace

bool cudaDeviceUsable(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky error
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device found";
    return false;
  }
  return true;
}

std::unique_ptr<Backend> makeCudaBackend(int localRank) {
  int n = 0;
  PHX_CUDA_CHECK(cudaGetDeviceCount(&n));
  return std::make_unique<CudaBackend>(localRank % n);
}

}  // namespace phx::kernels
