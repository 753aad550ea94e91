// A model Phoenix's kernels know nothing of, trained through Phoenix's servers with the library
// API: a 2-layer tanh network (32 -> 64 -> 4, 2,372 parameters in one flat vector, its own
// forward and backward) on its own data (a teacher network's labels for Gaussian inputs,
// generated here). Every flag is one of `phoenix train`'s except --task-seed (this program's).
//   mpirun --enable-recovery -n 5 own_model --servers 1 --spares 1 --recovery checkpoint \
//     --checkpoint-every 20 --kill-server 150 --summary s.json
#include <phoenix/phoenix.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kIn = 32, kHidden = 64, kOut = 4, kBatch = 32;
constexpr int kParams = kIn * kHidden + kHidden + kHidden * kOut + kOut;

struct Data {
  std::vector<float> x;
  std::vector<int> y;
  int count = 0;
};

// Labels from a fixed random teacher: argmax of a random linear map of the inputs.
Data makeData(int count, unsigned seed) {
  std::mt19937 teacherRng(12345);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> teacher(kIn * kOut);
  for (float& t : teacher) t = n01(teacherRng);
  std::mt19937 rng(seed);
  Data d;
  d.count = count;
  d.x.resize(static_cast<size_t>(count) * kIn);
  d.y.resize(count);
  for (int i = 0; i < count; ++i) {
    float best = -1e30f;
    for (int k = 0; k < kIn; ++k) d.x[i * kIn + k] = n01(rng);
    for (int c = 0; c < kOut; ++c) {
      float s = 0;
      for (int k = 0; k < kIn; ++k) s += teacher[c * kIn + k] * d.x[i * kIn + k];
      if (s > best) best = s, d.y[i] = c;
    }
  }
  return d;
}

// Mean cross-entropy of samples [first, first + n) and, if grad is given, its gradient.
double lossAndGradient(const float* w, const Data& d, int first, int n, float* grad, int* correct) {
  const float* W1 = w;
  const float* b1 = W1 + kIn * kHidden;
  const float* W2 = b1 + kHidden;
  const float* b2 = W2 + kHidden * kOut;
  if (grad)
    for (int k = 0; k < kParams; ++k) grad[k] = 0;
  double loss = 0;
  float h[kHidden], p[kOut], dh[kHidden];
  for (int i = first; i < first + n; ++i) {
    const float* x = &d.x[static_cast<size_t>(i) * kIn];
    for (int j = 0; j < kHidden; ++j) {
      float s = b1[j];
      for (int k = 0; k < kIn; ++k) s += W1[j * kIn + k] * x[k];
      h[j] = std::tanh(s);
    }
    float mx = -1e30f;
    int arg = 0;
    for (int c = 0; c < kOut; ++c) {
      float s = b2[c];
      for (int j = 0; j < kHidden; ++j) s += W2[c * kHidden + j] * h[j];
      p[c] = s;
      if (s > mx) mx = s, arg = c;
    }
    float z = 0;
    for (int c = 0; c < kOut; ++c) {
      p[c] = std::exp(p[c] - mx);
      z += p[c];
    }
    for (int c = 0; c < kOut; ++c) p[c] /= z;
    loss -= std::log(std::max(p[d.y[i]], 1e-12f));
    if (correct && arg == d.y[i]) ++*correct;
    if (!grad) continue;
    float* gW1 = grad;
    float* gb1 = gW1 + kIn * kHidden;
    float* gW2 = gb1 + kHidden;
    float* gb2 = gW2 + kHidden * kOut;
    for (int j = 0; j < kHidden; ++j) dh[j] = 0;
    for (int c = 0; c < kOut; ++c) {
      const float dz = (p[c] - (c == d.y[i] ? 1.0f : 0.0f)) / n;
      gb2[c] += dz;
      for (int j = 0; j < kHidden; ++j) {
        gW2[c * kHidden + j] += dz * h[j];
        dh[j] += dz * W2[c * kHidden + j];
      }
    }
    for (int j = 0; j < kHidden; ++j) {
      const float da = dh[j] * (1 - h[j] * h[j]);
      gb1[j] += da;
      for (int k = 0; k < kIn; ++k) gW1[j * kIn + k] += da * x[k];
    }
  }
  return loss / n;
}

}  // namespace

int main(int argc, char** argv) {
  // This program's own flag; the rest are Phoenix's.
  std::vector<std::string> flags = phoenix::flags(argc, argv);
  unsigned taskSeed = 7;
  for (size_t i = 0; i + 1 < flags.size(); ++i)
    if (flags[i] == "--task-seed") {
      taskSeed = static_cast<unsigned>(std::stoul(flags[i + 1]));
      flags.erase(flags.begin() + static_cast<long>(i), flags.begin() + static_cast<long>(i) + 2);
      break;
    }
  return phoenix::run(flags, [taskSeed](phoenix::Worker& w) {
    const Data train = makeData(8192, taskSeed);
    const Data test = makeData(2048, taskSeed + 1);
    std::vector<float> init(kParams);
    std::mt19937 rng(42);  // the same initial weights on every worker (the chief's are used)
    std::normal_distribution<float> n01(0.0f, 1.0f);
    for (int k = 0; k < kParams; ++k) init[k] = 0.15f * n01(rng);
    const int64_t steps = 400;
    w.start(kParams, init.data(), steps, [&test](const float* weights) {
      int correct = 0;
      const double loss = lossAndGradient(weights, test, 0, test.count, nullptr, &correct);
      return phoenix::Eval{static_cast<double>(correct) / test.count, loss};
    }, "own-mlp-32-64-4");
    // Each worker trains on its own part of the data, in order.
    const int part = train.count / w.count();
    for (int64_t s = w.firstStep(); s < w.steps(); ++s) {
      const int first = w.index() * part + static_cast<int>((s * kBatch) % (part - kBatch));
      const double loss = lossAndGradient(w.weights(), train, first, kBatch, w.gradient(), nullptr);
      if (!w.step(s, loss, kBatch)) break;
    }
  });
}
