// The one kernel interface that every layer, loss and optimizer is written against.
// A Backend owns device memory and implements each op family (GEMM, convolution, pooling,
// element-wise, loss, optimizer) for one device kind: kernels/cpu (oneDNN + OpenMP, always
// built) and kernels/cuda (cuBLAS, cuDNN, own kernels; built when PHX_HAVE_CUDA).
// Conventions shared by both backends, so that their results agree:
//   - activations are NHWC, batch-major; convolution weights are OHWI; dense weights [out,in];
//   - every matrix is row-major;
//   - ops that produce gradients overwrite their output (no hidden accumulation);
//   - dropout masks come from a counter-based hash of (seed, stream, index), identical on CPU
//     and GPU, so a mask can be recomputed instead of stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace phx::kernels {

enum class DeviceKind { kCpu, kCuda };

// A 2-D convolution with stride 1 and "same" padding (pad = kernel / 2).
struct ConvShape {
  int batch = 0, height = 0, width = 0, cin = 0, cout = 0, kernel = 3;
  int pad() const { return kernel / 2; }
  size_t pixels() const { return static_cast<size_t>(batch) * height * width; }
  size_t weightCount() const { return static_cast<size_t>(cout) * kernel * kernel * cin; }
};

// A 2x2 max-pool with stride 2 over NHWC input (height and width even).
struct PoolShape {
  int batch = 0, height = 0, width = 0, channels = 0;
  size_t outputCount() const {
    return static_cast<size_t>(batch) * (height / 2) * (width / 2) * channels;
  }
};

struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.0f;
  float weightDecay = 0.0f;
  bool nesterov = false;
};

// Sum of per-sample losses and number of correct argmax predictions of one batch.
struct LossResult {
  double lossSum = 0.0;
  int64_t correct = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string describe() const = 0;

  // ---- memory (device pointers; on the CPU backend they are host pointers) ----
  virtual void* allocBytes(size_t bytes) = 0;
  virtual void freeBytes(void* p) noexcept = 0;
  virtual void copyToDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void copyToHost(void* dst, const void* src, size_t bytes) = 0;
  virtual void copyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill(float* x, size_t n, float value) = 0;
  virtual void synchronize() = 0;

  // ---- dense linear algebra, row-major: C[m,n] = alpha * op(A) * op(B) + beta * C ----
  virtual void gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a,
                    int lda, const float* b, int ldb, float beta, float* c, int ldc) = 0;
  // y[r, c] += bias[c]
  virtual void addBias(float* y, const float* bias, int rows, int cols) = 0;
  // db[c] = sum_r dy[r, c]
  virtual void biasGrad(const float* dy, float* db, int rows, int cols) = 0;

  // ---- convolution (NHWC activations, OHWI weights) ----
  virtual void convForward(const ConvShape& s, const float* x, const float* w, const float* bias,
                           float* y) = 0;
  virtual void convBackwardData(const ConvShape& s, const float* dy, const float* w,
                                float* dx) = 0;
  virtual void convBackwardWeights(const ConvShape& s, const float* x, const float* dy,
                                   float* dw, float* dbias) = 0;

  // ---- pooling ----
  // argmax[i] in 0..3 records which input of the 2x2 window won (for the backward pass).
  virtual void maxPoolForward(const PoolShape& s, const float* x, float* y, uint8_t* argmax) = 0;
  virtual void maxPoolBackward(const PoolShape& s, const float* dy, const uint8_t* argmax,
                               float* dx) = 0;

  // ---- element-wise ----
  virtual void reluForward(const float* x, float* y, size_t n) = 0;
  // dx = dy where y > 0, else 0
  virtual void reluBackward(const float* y, const float* dy, float* dx, size_t n) = 0;
  // Inverted dropout: keep with probability 1-p and scale by 1/(1-p). The mask is a pure
  // function of (seed, stream, index): see dropoutKeep() below.
  virtual void dropoutForward(const float* x, float* y, size_t n, float p, uint64_t seed,
                              uint64_t stream) = 0;
  virtual void dropoutBackward(const float* dy, float* dx, size_t n, float p, uint64_t seed,
                               uint64_t stream) = 0;
  // y += alpha * x
  virtual void axpy(size_t n, float alpha, const float* x, float* y) = 0;
  virtual void scale(size_t n, float alpha, float* x) = 0;

  // ---- loss ----
  // Softmax cross-entropy over each row of logits[batch, classes]. When dlogits is not null
  // it receives d(mean loss)/d(logits) = (softmax - onehot) / batch.
  virtual LossResult softmaxCrossEntropy(const float* logits, const int32_t* labels, int batch,
                                         int classes, float* dlogits) = 0;

  // ---- optimizer: PyTorch's SGD semantics (v = mu v + g + wd w; w -= lr v) ----
  virtual void sgdStep(float* w, const float* g, float* velocity, size_t n,
                       const SgdParams& p) = 0;
};

// Counter-based hash (splitmix64 finaliser) shared by both backends: dropout keeps element i
// when the hash's top 24 bits, as a fraction of 2^24, are >= p.
inline constexpr uint64_t mixHash(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline constexpr uint32_t dropoutThreshold(float p) {
  return static_cast<uint32_t>(static_cast<double>(p) * (1u << 24));
}
inline constexpr bool dropoutKeep(uint64_t seed, uint64_t stream, uint64_t i, uint32_t thr) {
  return static_cast<uint32_t>(mixHash(mixHash(seed ^ (stream * 0xD6E8FEB86659FD93ull)) + i) >>
                               40) >= thr;
}

// Creates the backend for "cpu", "cuda" or "auto" (CUDA when a device is usable, else CPU).
// threads: CPU threads for the CPU backend (0 = leave the library default). A CUDA backend
// uses GPU (local rank % visible GPUs), the local rank from the launcher's environment
// (localRankFromEnv): one GPU per rank on a node with as many GPUs as ranks.
int localRankFromEnv();
// Throws UserError when "cuda" is asked for and no device can be used.
// Subnormal floats flushed to zero on the calling thread (x86: MXCSR FTZ + DAZ), as ML
// frameworks do: late in a run, when the learning rate and the momentum terms get tiny,
// subnormal operands made the servers' SGD and the kernels many times slower. Every
// makeBackend call applies it to its thread (threads it starts later inherit it).
void flushDenormals();

std::unique_ptr<Backend> makeBackend(const std::string& device, int threads);

// True when this build has the CUDA backend and a device can be used (any CUDA error = no).
bool cudaAvailable(std::string* why = nullptr);

// RAII array of T in a backend's memory.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(Backend& be, size_t n) : be_(&be), n_(n) {
    if (n_ > 0) p_ = static_cast<T*>(be.allocBytes(n_ * sizeof(T)));
  }
  ~DeviceArray() { reset(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : be_(o.be_), p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  void reset() noexcept {
    if (p_ && be_) be_->freeBytes(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  Backend* be_ = nullptr;
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace phx::kernels
