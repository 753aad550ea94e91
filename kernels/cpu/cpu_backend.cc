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
  const char* conv = std::getenv("PHX_CPU_CONV");
  useDnnl_ = !(conv && std::string(conv) == "im2col");
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
  if (threads_ == 1 && !transA && transB && beta == 0.0f && m <= 64 && n >= 4 * m && ldc == n) {
    // On one thread, a short-and-wide A times B^T (a dense forward pass at small batch) runs
    // twice as fast in oneDNN as C^T = B A^T plus a small transpose (not so on two threads).
    if (scratchT_.size() < static_cast<size_t>(m) * n) scratchT_.resize(static_cast<size_t>(m) * n);
    float* ct = scratchT_.data();
    gemm(false, true, n, m, k, alpha, b, ldb, a, lda, 0.0f, ct, m);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[static_cast<size_t>(i) * ldc + j] = ct[static_cast<size_t>(j) * m + i];
    return;
  }
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
  if (useDirect(s)) {
    directConvForward(s, x, w, bias, y);
    return;
  }
  if (useDnnl_) {
    dnnlConv_.forward(s, x, w, bias, y);
    return;
  }
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
  if (useDnnl_ && !useDirect(s)) {
    dnnlConv_.backwardData(s, dy, w, dx);
    return;
  }
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
  if (useDirect(s)) {
    directConvBackwardWeights(s, x, dy, dw, dbias);
    return;
  }
  if (useDnnl_) {
    dnnlConv_.backwardWeights(s, x, dy, dw, dbias);
    return;
  }
  // dW = dY^T col is a reduction over pixels: each thread reduces its own range of images
  // into a private partial (a library GEMM parallelises this shape poorly), then the
  // partials are summed in thread order, which keeps the result deterministic.
  const int kk = s.kernel * s.kernel * s.cin;
  const size_t wsz = static_cast<size_t>(s.cout) * kk;
  const int nt = std::min(threads_, s.batch);
  const int perImage = s.height * s.width;
  const int maxImages = (s.batch + nt - 1) / nt;
  float* col = scratch(static_cast<size_t>(nt) * maxImages * perImage * kk + nt * wsz);
  float* parts = col + static_cast<size_t>(nt) * maxImages * perImage * kk;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int b0 = s.batch * t / nt, b1 = s.batch * (t + 1) / nt;
    float* myCol = col + static_cast<size_t>(t) * maxImages * perImage * kk;
    float* part = t == 0 ? dw : parts + static_cast<size_t>(t) * wsz;
    ConvShape sub = s;
    sub.batch = b1 - b0;
    if (sub.batch > 0) {
      const size_t off = static_cast<size_t>(b0) * perImage;
      im2col(sub, x + off * s.cin, myCol);
      gemm(true, false, s.cout, kk, sub.batch * perImage, 1.0f, dy + off * s.cout, s.cout, myCol,
           kk, 0.0f, part, kk);
    } else {
      std::fill(part, part + wsz, 0.0f);
    }
  }
  for (int t = 1; t < nt; ++t) {
    const float* part = parts + static_cast<size_t>(t) * wsz;
    for (size_t i = 0; i < wsz; ++i) dw[i] += part[i];
  }
  if (dbias) biasGrad(dy, dbias, static_cast<int>(s.pixels()), s.cout);
}

// Direct convolution for single-channel input (the first layer of an image model), where
// im2col would make a GEMM with k = 9 that no library runs fast. Weights are used transposed,
// wt[tap][co], and the output channels are a compile-time width so that each pixel's
// accumulators live in vector registers.
namespace {

template <int CO>
void directForward(const ConvShape& s, const float* __restrict x, const float* __restrict wt,
                   const float* __restrict bias, float* __restrict y) {
  const int k = s.kernel, pad = s.pad(), H = s.height, W = s.width;
  const int rows = s.batch * H;
#pragma omp parallel for schedule(static) if (s.pixels() * k * k * CO > kParallelGrain)
  for (int bh = 0; bh < rows; ++bh) {
    const int b = bh / H, oh = bh % H;
    for (int ow = 0; ow < W; ++ow) {
      float acc[CO];
      for (int co = 0; co < CO; ++co) acc[co] = bias ? bias[co] : 0.0f;
      for (int kh = 0; kh < k; ++kh) {
        const int ih = oh + kh - pad;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < k; ++kw) {
          const int iw = ow + kw - pad;
          if (iw < 0 || iw >= W) continue;
          const float xv = x[(static_cast<size_t>(b) * H + ih) * W + iw];
          const float* wr = wt + (kh * k + kw) * CO;
          for (int co = 0; co < CO; ++co) acc[co] += xv * wr[co];
        }
      }
      float* yp = y + (static_cast<size_t>(bh) * W + ow) * CO;
      for (int co = 0; co < CO; ++co) yp[co] = acc[co];
    }
  }
}

// Accumulates dW (as wt[tap][co]) and the bias gradient of rows [r0, r1) into out.
template <int CO>
void directBackwardWeights(const ConvShape& s, const float* __restrict x,
                           const float* __restrict dy, int r0, int r1, float* __restrict out) {
  constexpr int kMaxTaps = 9;  // k * k with k <= 3 and cin = 1
  const int k = s.kernel, pad = s.pad(), H = s.height, W = s.width;
  const int taps = k * k;
  float acc[kMaxTaps + 1][CO] = {};
  for (int bh = r0; bh < r1; ++bh) {
    const int b = bh / H, oh = bh % H;
    for (int ow = 0; ow < W; ++ow) {
      float g[CO];
      const float* gp = dy + (static_cast<size_t>(bh) * W + ow) * CO;
      for (int co = 0; co < CO; ++co) g[co] = gp[co];
      for (int co = 0; co < CO; ++co) acc[kMaxTaps][co] += g[co];
      for (int kh = 0; kh < k; ++kh) {
        const int ih = oh + kh - pad;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < k; ++kw) {
          const int iw = ow + kw - pad;
          if (iw < 0 || iw >= W) continue;
          const float xv = x[(static_cast<size_t>(b) * H + ih) * W + iw];
          float* a = acc[kh * k + kw];
          for (int co = 0; co < CO; ++co) a[co] += xv * g[co];
        }
      }
    }
  }
  for (int t = 0; t < taps; ++t)
    for (int co = 0; co < CO; ++co) out[t * CO + co] = acc[t][co];
  for (int co = 0; co < CO; ++co) out[taps * CO + co] = acc[kMaxTaps][co];
}

}  // namespace

bool CpuBackend::useDirect(const ConvShape& s) const {
  return s.cin == 1 && s.kernel <= 3 && (s.cout == 8 || s.cout == 16 || s.cout == 32);
}

void CpuBackend::directConvForward(const ConvShape& s, const float* x, const float* w,
                                   const float* bias, float* y) {
  const int taps = s.kernel * s.kernel * s.cin, CO = s.cout;
  if (scratch2_.size() < static_cast<size_t>(taps) * CO) scratch2_.resize(taps * CO);
  float* wt = scratch2_.data();
  for (int co = 0; co < CO; ++co)
    for (int t = 0; t < taps; ++t) wt[t * CO + co] = w[co * taps + t];
  switch (CO) {
    case 8: directForward<8>(s, x, wt, bias, y); break;
    case 16: directForward<16>(s, x, wt, bias, y); break;
    default: directForward<32>(s, x, wt, bias, y); break;
  }
}

void CpuBackend::directConvBackwardWeights(const ConvShape& s, const float* x, const float* dy,
                                           float* dw, float* dbias) {
  const int taps = s.kernel * s.kernel * s.cin, CO = s.cout;
  const size_t wsz = static_cast<size_t>(taps + 1) * CO;  // + 1 row for the bias
  const int rows = s.batch * s.height;
  const int nt = s.pixels() * wsz > kParallelGrain ? std::min(threads_, rows) : 1;
  float* parts = scratch(static_cast<size_t>(nt) * wsz);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    float* out = parts + static_cast<size_t>(t) * wsz;
    switch (CO) {
      case 8: directBackwardWeights<8>(s, x, dy, r0, r1, out); break;
      case 16: directBackwardWeights<16>(s, x, dy, r0, r1, out); break;
      default: directBackwardWeights<32>(s, x, dy, r0, r1, out); break;
    }
  }
  for (int t = 1; t < nt; ++t) {
    const float* p = parts + static_cast<size_t>(t) * wsz;
    for (size_t i = 0; i < wsz; ++i) parts[i] += p[i];
  }
  for (int co = 0; co < CO; ++co)
    for (int tp = 0; tp < taps; ++tp) dw[co * taps + tp] = parts[tp * CO + co];
  if (dbias)
    for (int co = 0; co < CO; ++co) dbias[co] = parts[static_cast<size_t>(taps) * CO + co];
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
