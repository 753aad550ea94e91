#include "kernels/model.h"

#include <sstream>

#include "runtime/core/error.h"

namespace phx::kernels {

ModelSpec parseModelSpec(const std::string& s) {
  ModelSpec spec;
  spec.name = s;
  if (s == "cnn" || s == "mlp") {
    spec.kind = s;
    return spec;
  }
  const std::string prefix = "synthetic:";
  if (s.rfind(prefix, 0) == 0) {
    const std::string n = s.substr(prefix.size());
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(n, &used);
    } catch (...) {
      used = 0;
    }
    if (used == n.size() && !n.empty() && v >= 1000 && v <= 2'000'000'000LL) {
      spec.kind = "synthetic";
      spec.syntheticParams = v;
      return spec;
    }
    PHX_USER_ERROR("--model ", s, ": N in synthetic:N must be an integer from 1000 to 2000000000");
  }
  PHX_USER_ERROR("unknown --model '", s, "' (accepted: cnn, mlp, synthetic:N)");
}

Model::Model(Backend& backend, const ModelSpec& spec, int maxBatch, Dims input, int classes)
    : backend_(&backend), spec_(spec), maxBatch_(maxBatch), input_(input), classes_(classes) {
  PHX_ENFORCE(maxBatch > 0, "maxBatch must be positive");
  if (spec.kind == "cnn") {
    // The papers' model (shared/papers.md, part A).
    layers_.push_back(makeConv2d(16, 3));
    layers_.push_back(makeRelu());
    layers_.push_back(makeMaxPool2());
    layers_.push_back(makeConv2d(32, 3));
    layers_.push_back(makeRelu());
    layers_.push_back(makeMaxPool2());
    layers_.push_back(makeFlatten());
    layers_.push_back(makeDense(512));
    layers_.push_back(makeRelu());
    layers_.push_back(makeDropout(0.25f));
    layers_.push_back(makeDense(classes));
  } else if (spec.kind == "mlp") {
    layers_.push_back(makeFlatten());
    layers_.push_back(makeDense(512));
    layers_.push_back(makeRelu());
    layers_.push_back(makeDense(256));
    layers_.push_back(makeRelu());
    layers_.push_back(makeDense(classes));
  } else if (spec.kind == "synthetic") {
    const int64_t in = static_cast<int64_t>(input.count());
    const int64_t perHidden = in + 1 + classes;
    const int64_t hidden = std::max<int64_t>(1, (spec.syntheticParams - classes) / perHidden);
    layers_.push_back(makeFlatten());
    layers_.push_back(makeDense(static_cast<int>(hidden)));
    layers_.push_back(makeRelu());
    layers_.push_back(makeDense(classes));
  } else {
    PHX_ENFORCE(false, "unknown model kind ", spec.kind);
  }

  Dims d = input_;
  dims_.push_back(d);
  for (auto& l : layers_) {
    l->setParamOffset(paramCount_);
    d = l->configure(d);
    dims_.push_back(d);
    paramCount_ += l->paramCount();
  }
  PHX_ENFORCE(d.count() == static_cast<size_t>(classes), "model output has ", d.count(),
              " values, expected ", classes);
  params_ = DeviceArray<float>(backend, paramCount_);
  grads_ = DeviceArray<float>(backend, paramCount_);
  backend.fill(grads_.data(), paramCount_, 0.0f);

  // Activation i is the input of layer i; layers that alias their input share its buffers.
  const size_t n = layers_.size();
  acts_.assign(n + 1, nullptr);
  dacts_.assign(n + 1, nullptr);
  states_.assign(n, nullptr);
  for (size_t i = 0; i <= n; ++i) {
    if (i > 0 && layers_[i - 1]->aliasesInput()) {
      acts_[i] = acts_[i - 1];
      dacts_[i] = dacts_[i - 1];
      continue;
    }
    const size_t count = dims_[i].count() * static_cast<size_t>(maxBatch);
    actStore_.emplace_back(backend, count);
    acts_[i] = actStore_.back().data();
    if (i > 0) {  // no gradient is ever needed for the input
      gradStore_.emplace_back(backend, count);
      dacts_[i] = gradStore_.back().data();
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t bytes = layers_[i]->stateBytesPerSample() * maxBatch;
    if (bytes) {
      stateStore_.emplace_back(backend, bytes);
      states_[i] = stateStore_.back().data();
    }
  }
  labels_ = DeviceArray<int32_t>(backend, maxBatch);
}

std::string Model::describe() const {
  std::ostringstream os;
  os << spec_.name << ": " << paramCount_ << " parameters\n";
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    os << "  " << l->name() << "  out " << dims_[i + 1].h << "x" << dims_[i + 1].w << "x"
       << dims_[i + 1].c;
    if (l->paramCount())
      os << "  params [" << l->paramOffset() << ", " << l->paramOffset() + l->paramCount()
         << ")";
    os << "\n";
  }
  return os.str();
}

double Model::flopsPerSample() const {
  // Multiply-adds of the weight layers: forward once, backward twice (data and weights).
  double macs = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const size_t p = layers_[i]->paramCount();
    if (!p) continue;
    const Dims& out = dims_[i + 1];
    const double perPixelWeights = static_cast<double>(p - out.c);  // minus the bias
    macs += perPixelWeights * out.h * out.w;
  }
  return macs * 2.0 * 3.0;
}

void Model::initParams(uint64_t seed) {
  std::vector<float> host(paramCount_);
  std::mt19937_64 rng(seed);
  for (auto& l : layers_)
    if (l->paramCount()) l->initParams(host.data() + l->paramOffset(), rng);
  setParams(host);
}

void Model::getParams(std::vector<float>& host) const {
  host.resize(paramCount_);
  backend_->copyToHost(host.data(), params(), paramCount_ * sizeof(float));
}

void Model::setParams(const std::vector<float>& host) {
  PHX_ENFORCE(host.size() == paramCount_, "setParams with ", host.size(), " values, model has ",
              paramCount_);
  backend_->copyToDevice(params(), host.data(), paramCount_ * sizeof(float));
}

void Model::getGrads(std::vector<float>& host) const {
  host.resize(paramCount_);
  backend_->copyToHost(host.data(), grads(), paramCount_ * sizeof(float));
}

void Model::upload(const float* x, const int32_t* labels, int batch) {
  PHX_ENFORCE(batch > 0 && batch <= maxBatch_, "batch ", batch, " outside [1, ", maxBatch_, "]");
  backend_->copyToDevice(acts_[0], x, input_.count() * batch * sizeof(float));
  backend_->copyToDevice(labels_.data(), labels, batch * sizeof(int32_t));
}

void Model::forward(const PassContext& ctx, int batch) {
  for (size_t i = 0; i < layers_.size(); ++i)
    layers_[i]->forward(ctx, acts_[i], acts_[i + 1], states_[i], batch);
}

LossResult Model::forwardBackward(const float* x, const int32_t* labels, int batch,
                                  uint64_t dropoutSeed, uint64_t step, bool accumulate,
                                  float gradScale, bool deferWeights) {
  upload(x, labels, batch);
  PassContext ctx{backend_, params(), grads(), true, dropoutSeed, step};
  ctx.deferWeights = deferWeights && backend_->kind() == DeviceKind::kCpu;
  if (accumulate) {
    if (accScratch_.size() == 0) {
      // Dense weights accumulate in the GEMM (beta = 1); everything else goes through scratch.
      size_t most = 1;
      for (auto& l : layers_) most = std::max(most, l->paramCount());
      accScratch_ = DeviceArray<float>(*backend_, most);
    }
    ctx.accumulate = true;
    ctx.scratch = accScratch_.data();
  }
  forward(ctx, batch);
  const size_t n = layers_.size();
  const LossResult r =
      backend_->softmaxCrossEntropy(acts_.back(), labels_.data(), batch, classes_, dacts_[n]);
  if (gradScale != 1.0f) backend_->scale(static_cast<size_t>(batch) * classes_, gradScale, dacts_[n]);
  for (size_t i = n; i-- > 0;)
    layers_[i]->backward(ctx, acts_[i], acts_[i + 1], dacts_[i + 1], i == 0 ? nullptr : dacts_[i],
                         states_[i], batch);
  return r;
}

void Model::flushDeferred() {
  PassContext ctx{backend_, params(), grads(), true, 0, 0};
  for (auto& l : layers_) l->flushDeferred(ctx);
}

LossResult Model::evaluate(const float* x, const int32_t* labels, int batch) {
  upload(x, labels, batch);
  PassContext ctx{backend_, params(), nullptr, false, 0, 0};
  forward(ctx, batch);
  return backend_->softmaxCrossEntropy(acts_.back(), labels_.data(), batch, classes_, nullptr);
}

}  // namespace phx::kernels
