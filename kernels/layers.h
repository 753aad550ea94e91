// Layers: each one is written once against the Backend interface, so the same class runs on
// the CPU and the GPU (as LBANN does). A layer owns no parameters: it reads its slice of the
// model's flat parameter buffer and writes its slice of the flat gradient buffer, the vector
// that parameter servers shard.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "kernels/backend.h"

namespace phx::kernels {

// Per-sample activation dimensions (NHWC without the batch).
struct Dims {
  int h = 1, w = 1, c = 1;
  size_t count() const { return static_cast<size_t>(h) * w * c; }
  bool operator==(const Dims&) const = default;
};

// What a layer needs to run one pass.
struct PassContext {
  Backend* backend = nullptr;
  const float* params = nullptr;  // the whole flat parameter vector
  float* grads = nullptr;         // the whole flat gradient vector (backward only)
  bool training = true;
  uint64_t seed = 0;   // dropout seed
  uint64_t step = 0;   // dropout stream: the mask changes every step
  // Backward adds the parameter gradients to `grads` instead of overwriting them (EPSP's shards
  // accumulate on a lane); `scratch` then holds at least the largest non-dense-weight gradient.
  bool accumulate = false;
  float* scratch = nullptr;
  // CPU only: dense layers keep the batch's inputs and output gradients and add their weight
  // gradient later, in one GEMM over every batch kept (flushDeferred): a dense weight
  // gradient written once per iteration, not once per EPSP shard.
  bool deferWeights = false;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string name() const = 0;
  // Called once by the model with the input dims; returns the output dims.
  virtual Dims configure(Dims in) = 0;
  virtual size_t paramCount() const { return 0; }
  // Initialises this layer's parameter slice (host memory) the way PyTorch's defaults do.
  virtual void initParams(float* slice, std::mt19937_64& rng) const {}
  // A layer whose output is its input, reinterpreted (flatten): no buffer, no copy.
  virtual bool aliasesInput() const { return false; }
  // Bytes of per-sample state kept between forward and backward (pooling's argmax).
  virtual size_t stateBytesPerSample() const { return 0; }

  virtual void forward(const PassContext& ctx, const float* x, float* y, void* state,
                       int batch) = 0;
  // dx may be null (first layer: no input gradient is needed).
  virtual void backward(const PassContext& ctx, const float* x, const float* y, const float* dy,
                        float* dx, const void* state, int batch) = 0;
  // Writes the weight gradient of the batches kept since the last flush (deferWeights)
  // into ctx.grads, overwriting it; nothing if none was kept.
  virtual void flushDeferred(const PassContext& ctx) {}

  void setParamOffset(size_t off) { offset_ = off; }
  size_t paramOffset() const { return offset_; }

 protected:
  size_t offset_ = 0;
  Dims in_, out_;
};

std::unique_ptr<Layer> makeDense(int outFeatures);
std::unique_ptr<Layer> makeConv2d(int outChannels, int kernel);
std::unique_ptr<Layer> makeRelu();
std::unique_ptr<Layer> makeMaxPool2();
std::unique_ptr<Layer> makeDropout(float p);
std::unique_ptr<Layer> makeFlatten();

}  // namespace phx::kernels
