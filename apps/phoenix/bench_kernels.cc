#include "apps/phoenix/bench_kernels.h"

#include <chrono>
#include <cstdio>
#include <random>

#include "kernels/model.h"
#include "runtime/core/metrics.h"

namespace phx::apps {

namespace {
using Clock = std::chrono::steady_clock;
}

int runKernelBench(const KernelBenchOptions& opt) {
  std::printf("%-10s %6s %8s %14s %10s %12s\n", "model", "batch", "threads", "samples/s",
              "GFLOP/s", "ms/step");
  std::string json = "[";
  for (const std::string& m : opt.models) {
    const kernels::ModelSpec spec = kernels::parseModelSpec(m);
    for (int threads : opt.threads) {
      auto be = kernels::makeBackend(opt.device, threads);
      for (int batch : opt.batches) {
        kernels::Model model(*be, spec, batch);
        model.initParams(1);
        kernels::DeviceArray<float> vel(*be, model.paramCount());
        be->fill(vel.data(), vel.size(), 0.0f);
        const kernels::SgdParams sgd{0.01f, 0.9f, 0.0f, false};
        // Benchmark input: random pixels in the normalised range, random labels.
        std::mt19937 rng(7);
        std::uniform_real_distribution<float> px(-1.0f, 1.0f);
        std::vector<float> x(static_cast<size_t>(batch) * model.inputDims().count());
        std::vector<int32_t> y(batch);
        for (auto& v : x) v = px(rng);
        for (auto& v : y) v = static_cast<int32_t>(rng() % model.classes());
        auto step = [&](uint64_t s) {
          model.forwardBackward(x.data(), y.data(), batch, 1, s);
          be->sgdStep(model.params(), model.grads(), vel.data(), model.paramCount(), sgd);
        };
        for (int i = 0; i < 10; ++i) step(i);
        be->synchronize();
        int64_t steps = 0;
        const auto t0 = Clock::now();
        double el = 0;
        while (el < opt.seconds) {
          for (int i = 0; i < 10; ++i) step(steps + i);
          steps += 10;
          be->synchronize();
          el = std::chrono::duration<double>(Clock::now() - t0).count();
        }
        const double sps = steps * batch / el;
        const double gflops = sps * model.flopsPerSample() / 1e9;
        std::printf("%-10s %6d %8d %14.0f %10.1f %12.3f\n", m.c_str(), batch, threads, sps, gflops,
                    1e3 * el / steps);
        std::fflush(stdout);
        char row[256];
        std::snprintf(row, sizeof row,
                      "%s\n  {\"model\": %s, \"batch\": %d, \"threads\": %d, \"samples_per_s\": "
                      "%.1f, \"gflops\": %.2f, \"device\": %s}",
                      json.size() > 1 ? "," : "", jsonString(m).c_str(), batch, threads, sps, gflops,
                      jsonString(be->describe()).c_str());
        json += row;
      }
    }
  }
  json += "\n]\n";
  if (!opt.jsonPath.empty()) writeFileAtomic(opt.jsonPath, json);
  return 0;
}

}  // namespace phx::apps
