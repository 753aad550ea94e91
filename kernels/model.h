// A model is an ordered list of layers over one flat parameter vector and one flat gradient
// vector, both in the backend's memory. Workers compute gradients into the flat gradient vector;
// servers own contiguous slices of the flat parameter vector (see runtime/ps).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/layers.h"

namespace phx::kernels {

// The models Phoenix knows: "cnn" (the papers' Fashion-MNIST CNN), "mlp" (784-512-256-10) and
// "synthetic:N" (784-H-10 with H chosen so the model has about N parameters; compute grows with
// N). Throws UserError for anything else, listing what is accepted.
struct ModelSpec {
  std::string name;      // as given
  std::string kind;      // cnn | mlp | synthetic
  int64_t syntheticParams = 0;
};
ModelSpec parseModelSpec(const std::string& s);

class Model {
 public:
  // maxBatch bounds every later call's batch (buffers are allocated once, here).
  Model(Backend& backend, const ModelSpec& spec, int maxBatch, Dims input = Dims{28, 28, 1},
        int classes = 10);

  const ModelSpec& spec() const { return spec_; }
  size_t paramCount() const { return paramCount_; }
  int maxBatch() const { return maxBatch_; }
  int classes() const { return classes_; }
  Dims inputDims() const { return input_; }
  Backend& backend() { return *backend_; }
  std::string describe() const;  // one line per layer with its parameter slice
  double flopsPerSample() const;  // forward + backward multiply-adds x 2 (training step)

  float* params() { return extParams_ ? extParams_ : params_.data(); }
  float* grads() { return extGrads_ ? extGrads_ : grads_.data(); }
  const float* params() const { return extParams_ ? extParams_ : params_.data(); }
  const float* grads() const { return extGrads_ ? extGrads_ : grads_.data(); }
  // Compute with weights / into gradients the caller owns (paramCount floats in this backend's
  // memory; nullptr: the model's own). EPSP's lanes read the worker's weights without a copy.
  void bindParams(float* p) { extParams_ = p; }
  void bindGrads(float* g) { extGrads_ = g; }

  // Deterministic PyTorch-style initialisation from a seed.
  void initParams(uint64_t seed);
  void getParams(std::vector<float>& host) const;
  void setParams(const std::vector<float>& host);
  void getGrads(std::vector<float>& host) const;

  // One forward + backward pass on a batch in host memory (x: [batch, input], normalised).
  // Leaves d(mean loss)/d(params) in grads(). dropoutSeed/step select the dropout mask.
  // gradScale multiplies the gradient (not the returned loss): EPSP's shards are summed / K.
  // accumulate: add this batch's gradient to grads() instead of overwriting it (so a sum of
  // mean gradients over several batches builds up without an extra pass over the vector).
  // deferWeights (CPU backends; ignored elsewhere): the dense weight gradients are added by
  // flushDeferred, in one GEMM over every batch since the last flush; until then grads()
  // lacks them.
  LossResult forwardBackward(const float* x, const int32_t* labels, int batch, uint64_t dropoutSeed,
                             uint64_t step, bool accumulate = false, float gradScale = 1.0f,
                             bool deferWeights = false);
  void flushDeferred();
  // Forward only, evaluation mode (no dropout); returns loss sum and correct count.
  LossResult evaluate(const float* x, const int32_t* labels, int batch);
  // The logits of the last forward pass (device memory, [batch, classes]).
  const float* logits() const { return acts_.back(); }

 private:
  void forward(const PassContext& ctx, int batch);
  void upload(const float* x, const int32_t* labels, int batch);

  Backend* backend_;
  ModelSpec spec_;
  int maxBatch_;
  Dims input_;
  int classes_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Dims> dims_;  // dims_[i] = input of layer i; dims_.back() = output
  size_t paramCount_ = 0;
  DeviceArray<float> params_, grads_;
  std::vector<DeviceArray<float>> actStore_, gradStore_;
  std::vector<DeviceArray<uint8_t>> stateStore_;
  std::vector<float*> acts_, dacts_;  // acts_[i] = input of layer i (aliases resolved)
  std::vector<uint8_t*> states_;
  DeviceArray<int32_t> labels_;
  DeviceArray<float> accScratch_;
  float* extParams_ = nullptr;
  float* extGrads_ = nullptr;  // accumulate: gradients of conv weights and biases
};

}  // namespace phx::kernels
