#include "apps/phoenix/bench_checkpoint.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>

#include "kernels/model.h"
#include "recovery/checkpoint.h"
#include "runtime/core/error.h"
#include "runtime/core/metrics.h"

namespace phx::apps {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

int runCheckpointBench(const CheckpointBenchOptions& opt) {
  if (opt.every < 1 || opt.steps < opt.every || opt.rounds < 1 || opt.ioRepeats < 1)
    PHX_USER_ERROR("phoenix bench checkpoint: --every must be >= 1 and <= --steps, --rounds and "
                   "--io-repeats >= 1");
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove_all(opt.dir, ec);
  fs::create_directories(opt.dir, ec);
  if (ec) PHX_USER_ERROR("phoenix bench checkpoint: cannot create --dir ", opt.dir, ": ", ec.message());

  auto be = kernels::makeBackend("cpu", opt.threads);
  kernels::Model model(*be, kernels::parseModelSpec(opt.model), opt.batch);
  model.initParams(1);
  const size_t n = model.paramCount();
  std::vector<float> vel(n, 0.0f);
  const kernels::SgdParams sgd{0.01f, 0.9f, 0.0f, false};
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> px(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(opt.batch) * model.inputDims().count());
  std::vector<int32_t> y(opt.batch);
  for (auto& v : x) v = px(rng);
  for (auto& v : y) v = static_cast<int32_t>(rng() % model.classes());

  int64_t version = 0;
  auto snap = [&] {
    recovery::ShardSnapshot s;
    s.shard = 0;
    s.lo = 0;
    s.hi = static_cast<int64_t>(n);
    s.version = version;
    s.weights.assign(model.params(), model.params() + n);
    s.momentum = vel;
    s.model = opt.model;
    s.config = "phoenix bench checkpoint";
    return s;
  };

  // 1. Bandwidth: whole atomic writes (tmp, fsync, rename, marker) and validated reads.
  double writeS = 0, readS = 0, bytes = 0;
  std::string last;
  for (int i = 0; i < opt.ioRepeats; ++i) {
    ++version;
    const recovery::ShardSnapshot s = snap();
    const auto t0 = Clock::now();
    recovery::writeSnapshot(opt.dir + "/io", s, 2);
    writeS += since(t0);
    last = recovery::snapshotPath(opt.dir + "/io", 0, version);
    bytes = static_cast<double>(fs::file_size(last));
    const auto t1 = Clock::now();
    const recovery::ShardSnapshot r = recovery::readSnapshot(last);
    readS += since(t1);
    PHX_ENFORCE(r.weights == s.weights, "snapshot read back differs");
  }
  const double mb = bytes / 1e6;
  const double writeMBs = mb * opt.ioRepeats / writeS, readMBs = mb * opt.ioRepeats / readS;
  std::printf("snapshot of %s: %.2f MB (weights + momentum, %zu floats each)\n", opt.model.c_str(), mb, n);
  std::printf("write (atomic, fsync'ed): %.1f MB/s  %.1f ms each\n", writeMBs, 1e3 * writeS / opt.ioRepeats);
  std::printf("read (validated):         %.1f MB/s  %.1f ms each\n", readMBs, 1e3 * readS / opt.ioRepeats);

  // 2. Step time with a snapshot every `every` steps: none, sync, async, alternating.
  auto step = [&](uint64_t s) {
    model.forwardBackward(x.data(), y.data(), opt.batch, 1, s);
    be->sgdStep(model.params(), model.grads(), vel.data(), n, sgd);
  };
  for (int i = 0; i < 20; ++i) step(i);
  const char* modes[3] = {"none", "sync", "async"};
  double total[3] = {0, 0, 0}, blocked[3] = {0, 0, 0};
  int64_t snaps[3] = {0, 0, 0};
  for (int round = 0; round < opt.rounds; ++round)
    for (int m = 0; m < 3; ++m) {
      std::unique_ptr<recovery::AsyncSnapshotWriter> writer;
      if (m == 2) writer = std::make_unique<recovery::AsyncSnapshotWriter>(opt.dir + "/" + modes[m], 3);
      const auto t0 = Clock::now();
      for (int i = 1; i <= opt.steps; ++i) {
        step(static_cast<uint64_t>(i));
        ++version;
        if (m == 0 || i % opt.every != 0) continue;
        const auto tb = Clock::now();
        if (m == 1)
          recovery::writeSnapshot(opt.dir + "/" + modes[m], snap(), 3);
        else
          writer->submit(snap());
        blocked[m] += since(tb);
        ++snaps[m];
      }
      if (writer) writer->flush();  // the last write must finish inside the measured time
      total[m] += since(t0);
      if (writer && !writer->lastError().empty())
        PHX_USER_ERROR("async snapshot failed: ", writer->lastError());
    }
  const double steps = static_cast<double>(opt.steps) * opt.rounds;
  const double base = total[0] / steps;
  std::printf("\nsnapshot every %d steps, %s batch %d, %d thread(s), %d x %d steps per mode\n",
              opt.every, opt.model.c_str(), opt.batch, opt.threads, opt.rounds, opt.steps);
  std::printf("%-6s %12s %12s %20s\n", "mode", "ms/step", "overhead", "blocked ms/snapshot");
  std::string json = "{\n";
  for (int m = 0; m < 3; ++m) {
    const double ms = 1e3 * total[m] / steps;
    const double over = 100.0 * (total[m] / steps - base) / base;
    const double per = snaps[m] ? 1e3 * blocked[m] / static_cast<double>(snaps[m]) : 0.0;
    std::printf("%-6s %12.3f %11.2f%% %20.2f\n", modes[m], ms, over, per);
    char row[200];
    std::snprintf(row, sizeof row, "  \"%s\": {\"ms_per_step\": %.4f, \"overhead_percent\": %.3f, \"blocked_ms_per_snapshot\": %.3f},\n",
                  modes[m], ms, over, per);
    json += row;
  }
  char tail[200];
  std::snprintf(tail, sizeof tail, "  \"snapshot_mb\": %.3f, \"write_mb_s\": %.1f, \"read_mb_s\": %.1f, \"every\": %d\n}\n",
                mb, writeMBs, readMBs, opt.every);
  json += tail;
  if (!opt.jsonPath.empty()) writeFileAtomic(opt.jsonPath, json);
  fs::remove_all(opt.dir, ec);
  return 0;
}

}  // namespace phx::apps
