// Google Benchmark micro-benchmarks of per-step bookkeeping whose cost must stay negligible
// against a training step (docs/perf.md): the straggler projection on the worker and the
// servers' median per pull reply.
#include <benchmark/benchmark.h>

#include <vector>

#include "runtime/sync/projection.h"

namespace {

void BM_WorkerProjection(benchmark::State& state) {
  phx::sync::StragglerProjection p(0.2);
  double t = 0.001;
  for (auto _ : state) {
    t = t > 0.0012 ? 0.001 : t + 1e-6;
    benchmark::DoNotOptimize(p.observe(t));
    benchmark::DoNotOptimize(p.classify(0.0011));
  }
}
BENCHMARK(BM_WorkerProjection);

void BM_ServerMedianPerReply(benchmark::State& state) {
  std::vector<int32_t> micros(static_cast<size_t>(state.range(0)));
  for (size_t c = 0; c < micros.size(); ++c) micros[c] = 1000 + static_cast<int32_t>((c * 37) % 101);
  for (auto _ : state) benchmark::DoNotOptimize(phx::sync::medianOf(micros));
}
BENCHMARK(BM_ServerMedianPerReply)->Arg(4)->Arg(64)->Arg(1024);

}  // namespace

BENCHMARK_MAIN();
