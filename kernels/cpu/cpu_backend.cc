#include "kernels/cpu/cpu_backend.h"

#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "runtime/core/error.h"

namespace phx::kernels {

namespace {

// Parallelise a loop only when it is worth waking the pool.
constexpr size_t kParallelGrain = 1 << 15;

// im2col for NHWC input and OHWI weights: row p of col holds the k*k*cin inputs under the
// kernel centred at output pixel p, in (kh, kw, ci) order (zeros outside the image).
// Within one kernel row the in-bounds taps are contiguous in both x and col, so each kernel
// row is one memcpy in the interior.
void im2col(const ConvShape& s, const float* x, float* col) {
  const int k = s.kernel, pad = s.pad(), H = s.height, W = s.width, C = s.cin;
  const size_t rowLen = static_cast<size_t>(k) * k * C;
  const int rows = s.batch * H;
#pragma omp parallel for schedule(static) if (s.pixels() * rowLen > kParallelGrain)
  for (int bh = 0; bh < rows; ++bh) {
    const int b = bh / H, oh = bh % H;
    for (int ow = 0; ow < W; ++ow) {
      float* dst = col + (static_cast<size_t>(bh) * W + ow) * rowLen;
      const int iw0 = ow - pad;
      const int lo = std::max(0, -iw0), hi = std::min(k, W - iw0);  // valid kw in [lo, hi)
      for (int kh = 0; kh < k; ++kh) {
        float* d = dst + static_cast<size_t>(kh) * k * C;
        const int ih = oh + kh - pad;
        if (ih < 0 || ih >= H) {
          std::memset(d, 0, sizeof(float) * k * C);
          continue;
        }
        if (lo > 0) std::memset(d, 0, sizeof(float) * lo * C);
        const float* src = x + ((static_cast<size_t>(b) * H + ih) * W + iw0 + lo) * C;
        std::memcpy(d + lo * C, src, sizeof(float) * (hi - lo) * C);
        if (hi < k) std::memset(d + hi * C, 0, sizeof(float) * (k - hi) * C);
      }
    }
  }
}

}  // namespace

CpuBackend::CpuBackend(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
  threads_ = omp_get_max_threads();
}

std::string CpuBackend::describe() const {
  const dnnl_version_t* v = dnnl_version();
  return "cpu (oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " sgemm, " + std::to_string(threads_) + " OpenMP threads)";
}

void* CpuBackend::allocBytes(size_t bytes) {
  // 64-byte alignment for AVX-512 loads; round the size up as aligned_alloc requires.
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) throw std::bad_alloc();
  return p;
}
void CpuBackend::freeBytes(void* p) noexcept { std::free(p); }
void CpuBackend::copyToDevice(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}
void CpuBackend::copyToHost(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
}
void CpuBackend::copyOnDevice(void* dst, const void* src, size_t bytes) {
  std::memmove(dst, src, bytes);
}
void CpuBackend::fill(float* x, size_t n, float value) { std::fill(x, x + n, value); }

float* CpuBackend::scratch(size_t n) {
  if (scratch_.size() < n) scratch_.resize(n);
  return scratch_.data();
}

void CpuBackend::gemm(bool transA, bool transB, int m, int n, int k, float alpha, const float* a,
                      int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  const dnnl_status_t st = dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', m, n, k, alpha, a,
                                      lda, b, ldb, beta, c, ldc);
  if (st != dnnl_success)
    detail::throwLibrary("oneDNN", __FILE__, __LINE__,
                         detail::concat("dnnl_sgemm(", m, "x", n, "x", k, ") returned ",
                                        static_cast<int>(st)));
}

void CpuBackend::addBias(float* y, const float* bias, int rows, int cols) {
#pragma omp parallel for schedule(static) if (static_cast<size_t>(rows) * cols > kParallelGrain)
  for (int r = 0; r < rows; ++r) {
    float* yr = y + static_cast<size_t>(r) * cols;
#pragma omp simd
    for (int c = 0; c < cols; ++c) yr[c] += bias[c];
  }
}

void CpuBackend::biasGrad(const float* dy, float* db, int rows, int cols) {
  // Fixed partition and a fixed-order final sum keep the result bit-identical run to run.
  const int nt = static_cast<size_t>(rows) * cols > kParallelGrain ? threads_ : 1;
  std::vector<float> part(static_cast<size_t>(nt) * cols, 0.0f);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int lo = static_cast<int>(static_cast<int64_t>(rows) * t / nt);
    const int hi = static_cast<int>(static_cast<int64_t>(rows) * (t + 1) / nt);
    float* acc = part.data() + static_cast<size_t>(t) * cols;
    for (int r = lo; r < hi; ++r) {
      const float* d = dy + static_cast<size_t>(r) * cols;
#pragma omp simd
      for (int c = 0; c < cols; ++c) acc[c] += d[c];
    }
  }
  for (int c = 0; c < cols; ++c) {
    float s = 0.0f;
    for (int t = 0; t < nt; ++t) s += part[static_cast<size_t>(t) * cols + c];
    db[c] = s;
  }
}

void CpuBackend::convForward(const ConvShape& s, const float* x, const float* w,
                             const float* bias, float* y) {
  const int kk = s.kernel * s.kernel * s.cin;
  const int P = static_cast<int>(s.pixels());
  float* col = scratch(static_cast<size_t>(P) * kk);
  im2col(s, x, col);
  gemm(false, true, P, s.cout, kk, 1.0f, col, kk, w, kk, 0.0f, y, s.cout);
  if (bias) addBias(y, bias, P, s.cout);
}

void CpuBackend::convBackwardData(const ConvShape& s, const float* dy, const float* w,
                                  float* dx) {
  // With stride 1 and same padding, dx is the convolution of dy with the weights rotated by
  // 180 degrees and with in/out channels swapped: wf[ci][kh][kw][co] = w[co][k-1-kh][k-1-kw][ci].
  const int k = s.kernel;
  if (scratch2_.size() < s.weightCount()) scratch2_.resize(s.weightCount());
  float* wf = scratch2_.data();
  for (int co = 0; co < s.cout; ++co)
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw)
        for (int ci = 0; ci < s.cin; ++ci)
          wf[((static_cast<size_t>(ci) * k + (k - 1 - kh)) * k + (k - 1 - kw)) * s.cout + co] =
              w[((static_cast<size_t>(co) * k + kh) * k + kw) * s.cin + ci];
  ConvShape t = s;
  t.cin = s.cout;
  t.cout = s.cin;
  convForward(t, dy, wf, nullptr, dx);
}

void CpuBackend::convBackwardWeights(const ConvShape& s, const float* x, const float* dy,
                                     float* dw, float* dbias) {
  const int kk = s.kernel * s.kernel * s.cin;
  const int P = static_cast<int>(s.pixels());
  float* col = scratch(static_cast<size_t>(P) * kk);
  im2col(s, x, col);
  gemm(true, false, s.cout, kk, P, 1.0f, dy, s.cout, col, kk, 0.0f, dw, kk);
  if (dbias) biasGrad(dy, dbias, P, s.cout);
}

void CpuBackend::maxPoolForward(const PoolShape& s, const float* x, float* y, uint8_t* argmax) {
  const int C = s.channels, W = s.width, OH = s.height / 2, OW = s.width / 2;
  const int rows = s.batch * OH;
#pragma omp parallel for schedule(static) if (s.outputCount() * 4 > kParallelGrain)
  for (int r = 0; r < rows; ++r) {
    const int b = r / OH, oh = r % OH;
    const float* x0 = x + (static_cast<size_t>(b) * s.height + 2 * oh) * W * C;
    const float* x1 = x0 + static_cast<size_t>(W) * C;
    float* yr = y + static_cast<size_t>(r) * OW * C;
    uint8_t* ar = argmax + static_cast<size_t>(r) * OW * C;
    for (int ow = 0; ow < OW; ++ow) {
      const float* a = x0 + static_cast<size_t>(2 * ow) * C;
      const float* c = x1 + static_cast<size_t>(2 * ow) * C;
#pragma omp simd
      for (int ch = 0; ch < C; ++ch) {
        float m = a[ch];
        uint8_t i = 0;
        if (a[C + ch] > m) { m = a[C + ch]; i = 1; }
        if (c[ch] > m) { m = c[ch]; i = 2; }
        if (c[C + ch] > m) { m = c[C + ch]; i = 3; }
        yr[ow * C + ch] = m;
        ar[ow * C + ch] = i;
      }
    }
  }
}

void CpuBackend::maxPoolBackward(const PoolShape& s, const float* dy, const uint8_t* argmax,
                                 float* dx) {
  const int C = s.channels, W = s.width, OH = s.height / 2, OW = s.width / 2;
  const int rows = s.batch * OH;
#pragma omp parallel for schedule(static) if (s.outputCount() * 4 > kParallelGrain)
  for (int r = 0; r < rows; ++r) {
    const int b = r / OH, oh = r % OH;
    float* x0 = dx + (static_cast<size_t>(b) * s.height + 2 * oh) * W * C;
    float* x1 = x0 + static_cast<size_t>(W) * C;
    const float* dr = dy + static_cast<size_t>(r) * OW * C;
    const uint8_t* ar = argmax + static_cast<size_t>(r) * OW * C;
    for (int ow = 0; ow < OW; ++ow) {
      float* a = x0 + static_cast<size_t>(2 * ow) * C;
      float* c = x1 + static_cast<size_t>(2 * ow) * C;
#pragma omp simd
      for (int ch = 0; ch < C; ++ch) {
        const float g = dr[ow * C + ch];
        const uint8_t i = ar[ow * C + ch];
        a[ch] = i == 0 ? g : 0.0f;
        a[C + ch] = i == 1 ? g : 0.0f;
        c[ch] = i == 2 ? g : 0.0f;
        c[C + ch] = i == 3 ? g : 0.0f;
      }
    }
  }
}

void CpuBackend::reluForward(const float* x, float* y, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void CpuBackend::reluBackward(const float* y, const float* dy, float* dx, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void CpuBackend::dropoutForward(const float* x, float* y, size_t n, float p, uint64_t seed,
                                uint64_t stream) {
  const uint32_t thr = dropoutThreshold(p);
  const float sc = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) y[i] = dropoutKeep(seed, stream, i, thr) ? x[i] * sc : 0.0f;
}

void CpuBackend::dropoutBackward(const float* dy, float* dx, size_t n, float p, uint64_t seed,
                                 uint64_t stream) {
  dropoutForward(dy, dx, n, p, seed, stream);  // the same mask and scale
}

void CpuBackend::axpy(size_t n, float alpha, const float* x, float* y) {
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void CpuBackend::scale(size_t n, float alpha, float* x) {
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

LossResult CpuBackend::softmaxCrossEntropy(const float* logits, const int32_t* labels, int batch,
                                           int classes, float* dlogits) {
  LossResult r;
  const float invB = 1.0f / static_cast<float>(batch);
  for (int b = 0; b < batch; ++b) {
    const float* z = logits + static_cast<size_t>(b) * classes;
    const int y = labels[b];
    PHX_ENFORCE(y >= 0 && y < classes, "label ", y, " out of range [0,", classes, ")");
    int best = 0;
    float mx = z[0];
    for (int c = 1; c < classes; ++c)
      if (z[c] > mx) { mx = z[c]; best = c; }
    double sum = 0.0;
    for (int c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(z[c] - mx));
    const double logSum = std::log(sum);
    r.lossSum += logSum - static_cast<double>(z[y] - mx);
    r.correct += best == y;
    if (dlogits) {
      float* d = dlogits + static_cast<size_t>(b) * classes;
      for (int c = 0; c < classes; ++c) {
        const float pc = static_cast<float>(std::exp(static_cast<double>(z[c] - mx) - logSum));
        d[c] = (pc - (c == y ? 1.0f : 0.0f)) * invB;
      }
    }
  }
  return r;
}

void CpuBackend::sgdStep(float* w, const float* g, float* v, size_t n, const SgdParams& p) {
  const float lr = p.lr, mu = p.momentum, wd = p.weightDecay;
  if (mu == 0.0f) {
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
    for (size_t i = 0; i < n; ++i) w[i] -= lr * (g[i] + wd * w[i]);
    return;
  }
  const bool nest = p.nesterov;
#pragma omp parallel for simd schedule(static) if (n > kParallelGrain)
  for (size_t i = 0; i < n; ++i) {
    const float d = g[i] + wd * w[i];
    const float vi = mu * v[i] + d;
    v[i] = vi;
    w[i] -= lr * (nest ? d + mu * vi : vi);
  }
}

}  // namespace phx::kernels
