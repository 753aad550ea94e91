#include "kernels/layers.h"

#include <cmath>
#include <vector>

#include "runtime/core/error.h"

namespace phx::kernels {

namespace {

// PyTorch's default for Linear and Conv2d: kaiming_uniform(a = sqrt(5)) for the weights, which
// is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
void uniformInit(float* p, size_t n, float bound, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (size_t i = 0; i < n; ++i) p[i] = dist(rng);
}

class Dense final : public Layer {
 public:
  explicit Dense(int out) : outF_(out) {}
  std::string name() const override { return "dense(" + std::to_string(outF_) + ")"; }
  Dims configure(Dims in) override {
    in_ = in;
    inF_ = static_cast<int>(in.count());
    out_ = Dims{1, 1, outF_};
    return out_;
  }
  size_t paramCount() const override { return static_cast<size_t>(outF_) * inF_ + outF_; }
  void initParams(float* slice, std::mt19937_64& rng) const override {
    const float bound = 1.0f / std::sqrt(static_cast<float>(inF_));
    uniformInit(slice, paramCount(), bound, rng);
  }
  void forward(const PassContext& ctx, const float* x, float* y, void*, int batch) override {
    const float* w = ctx.params + offset_;
    const float* b = w + static_cast<size_t>(outF_) * inF_;
    ctx.backend->gemm(false, true, batch, outF_, inF_, 1.0f, x, inF_, w, inF_, 0.0f, y, outF_);
    ctx.backend->addBias(y, b, batch, outF_);
  }
  void backward(const PassContext& ctx, const float* x, const float*, const float* dy, float* dx,
                const void*, int batch) override {
    const float* w = ctx.params + offset_;
    float* dw = ctx.grads + offset_;
    float* db = dw + static_cast<size_t>(outF_) * inF_;
    if (ctx.deferWeights) {
      keptX_.insert(keptX_.end(), x, x + static_cast<size_t>(batch) * inF_);
      keptDy_.insert(keptDy_.end(), dy, dy + static_cast<size_t>(batch) * outF_);
    } else {
      ctx.backend->gemm(true, false, outF_, inF_, batch, 1.0f, dy, outF_, x, inF_,
                        ctx.accumulate ? 1.0f : 0.0f, dw, inF_);
    }
    if (ctx.accumulate) {
      ctx.backend->biasGrad(dy, ctx.scratch, batch, outF_);
      ctx.backend->axpy(static_cast<size_t>(outF_), 1.0f, ctx.scratch, db);
    } else {
      ctx.backend->biasGrad(dy, db, batch, outF_);
    }
    if (dx)
      ctx.backend->gemm(false, false, batch, inF_, outF_, 1.0f, dy, outF_, w, inF_, 0.0f, dx,
                        inF_);
  }
  void flushDeferred(const PassContext& ctx) override {
    const int rows = static_cast<int>(keptDy_.size() / static_cast<size_t>(outF_));
    if (rows == 0) return;
    ctx.backend->gemm(true, false, outF_, inF_, rows, 1.0f, keptDy_.data(), outF_, keptX_.data(), inF_, 0.0f,
                      ctx.grads + offset_, inF_);
    keptX_.clear();
    keptDy_.clear();
  }

 private:
  int outF_ = 0, inF_ = 0;
  std::vector<float> keptX_, keptDy_;  // deferWeights: rows of x and dy since the last flush
};

class Conv2d final : public Layer {
 public:
  Conv2d(int out, int kernel) : cout_(out), k_(kernel) {
    if (kernel % 2 == 0) PHX_USER_ERROR("conv2d kernel must be odd, got ", kernel);
  }
  std::string name() const override {
    return "conv2d(" + std::to_string(cout_) + ", " + std::to_string(k_) + "x" +
           std::to_string(k_) + ")";
  }
  Dims configure(Dims in) override {
    in_ = in;
    out_ = Dims{in.h, in.w, cout_};
    return out_;
  }
  size_t paramCount() const override {
    return static_cast<size_t>(cout_) * k_ * k_ * in_.c + cout_;
  }
  void initParams(float* slice, std::mt19937_64& rng) const override {
    const float bound = 1.0f / std::sqrt(static_cast<float>(k_ * k_ * in_.c));
    uniformInit(slice, paramCount(), bound, rng);
  }
  ConvShape shape(int batch) const { return ConvShape{batch, in_.h, in_.w, in_.c, cout_, k_}; }
  void forward(const PassContext& ctx, const float* x, float* y, void*, int batch) override {
    const ConvShape s = shape(batch);
    const float* w = ctx.params + offset_;
    ctx.backend->convForward(s, x, w, w + s.weightCount(), y);
  }
  void backward(const PassContext& ctx, const float* x, const float*, const float* dy, float* dx,
                const void*, int batch) override {
    const ConvShape s = shape(batch);
    const float* w = ctx.params + offset_;
    float* dw = ctx.grads + offset_;
    if (ctx.accumulate) {
      ctx.backend->convBackwardWeights(s, x, dy, ctx.scratch, ctx.scratch + s.weightCount());
      ctx.backend->axpy(paramCount(), 1.0f, ctx.scratch, dw);
    } else {
      ctx.backend->convBackwardWeights(s, x, dy, dw, dw + s.weightCount());
    }
    if (dx) ctx.backend->convBackwardData(s, dy, w, dx);
  }

 private:
  int cout_ = 0, k_ = 3;
};

class Relu final : public Layer {
 public:
  std::string name() const override { return "relu"; }
  Dims configure(Dims in) override { return in_ = out_ = in; }
  void forward(const PassContext& ctx, const float* x, float* y, void*, int batch) override {
    ctx.backend->reluForward(x, y, batch * in_.count());
  }
  void backward(const PassContext& ctx, const float*, const float* y, const float* dy, float* dx,
                const void*, int batch) override {
    if (dx) ctx.backend->reluBackward(y, dy, dx, batch * in_.count());
  }
};

class MaxPool2 final : public Layer {
 public:
  std::string name() const override { return "maxpool(2x2)"; }
  Dims configure(Dims in) override {
    if (in.h % 2 || in.w % 2)
      PHX_USER_ERROR("maxpool 2x2 needs even height and width, got ", in.h, "x", in.w);
    in_ = in;
    out_ = Dims{in.h / 2, in.w / 2, in.c};
    return out_;
  }
  size_t stateBytesPerSample() const override { return out_.count(); }
  void forward(const PassContext& ctx, const float* x, float* y, void* state,
               int batch) override {
    ctx.backend->maxPoolForward(PoolShape{batch, in_.h, in_.w, in_.c}, x, y,
                                static_cast<uint8_t*>(state));
  }
  void backward(const PassContext& ctx, const float*, const float*, const float* dy, float* dx,
                const void* state, int batch) override {
    if (dx)
      ctx.backend->maxPoolBackward(PoolShape{batch, in_.h, in_.w, in_.c}, dy,
                                   static_cast<const uint8_t*>(state), dx);
  }
};

class Dropout final : public Layer {
 public:
  explicit Dropout(float p) : p_(p) {
    if (!(p >= 0.0f && p < 1.0f)) PHX_USER_ERROR("dropout probability must be in [0, 1), got ", p);
  }
  std::string name() const override { return "dropout(" + std::to_string(p_).substr(0, 4) + ")"; }
  Dims configure(Dims in) override { return in_ = out_ = in; }
  void forward(const PassContext& ctx, const float* x, float* y, void*, int batch) override {
    const size_t n = batch * in_.count();
    if (!ctx.training || p_ == 0.0f) {
      ctx.backend->copyOnDevice(y, x, n * sizeof(float));
      return;
    }
    ctx.backend->dropoutForward(x, y, n, p_, ctx.seed, ctx.step);
  }
  void backward(const PassContext& ctx, const float*, const float*, const float* dy, float* dx,
                const void*, int batch) override {
    if (!dx) return;
    const size_t n = batch * in_.count();
    if (p_ == 0.0f) {
      ctx.backend->copyOnDevice(dx, dy, n * sizeof(float));
      return;
    }
    ctx.backend->dropoutBackward(dy, dx, n, p_, ctx.seed, ctx.step);
  }

 private:
  float p_;
};

class Flatten final : public Layer {
 public:
  std::string name() const override { return "flatten"; }
  Dims configure(Dims in) override {
    in_ = in;
    out_ = Dims{1, 1, static_cast<int>(in.count())};
    return out_;
  }
  bool aliasesInput() const override { return true; }
  void forward(const PassContext&, const float*, float*, void*, int) override {}
  void backward(const PassContext&, const float*, const float*, const float*, float*,
                const void*, int) override {}
};

}  // namespace

std::unique_ptr<Layer> makeDense(int outFeatures) { return std::make_unique<Dense>(outFeatures); }
std::unique_ptr<Layer> makeConv2d(int outChannels, int kernel) {
  return std::make_unique<Conv2d>(outChannels, kernel);
}
std::unique_ptr<Layer> makeRelu() { return std::make_unique<Relu>(); }
std::unique_ptr<Layer> makeMaxPool2() { return std::make_unique<MaxPool2>(); }
std::unique_ptr<Layer> makeDropout(float p) { return std::make_unique<Dropout>(p); }
std::unique_ptr<Layer> makeFlatten() { return std::make_unique<Flatten>(); }

}  // namespace phx::kernels
