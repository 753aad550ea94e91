// Shared by the unit tests that run ranks as threads over the in-process transport.
#pragma once

#include <exception>
#include <thread>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/train/dist_trainer.h"
#include "runtime/transport/inproc/inproc_transport.h"

namespace phx::inproc_test {

using transport::Header;
using transport::InprocFabric;
using transport::InprocTransport;
using transport::MsgType;

// Deadline of any single wait in these tests (a hang fails instead of blocking ctest).
inline constexpr double kTimeout = 20.0;

// Whole training jobs over the in-process transport: every rank a thread running
// runDistributed, as mpirun would run them. Returns the chief's result.
inline train::TrainResult runJob(int ranks, const Config& cfg, const data::FashionMnist& fm) {
  InprocFabric fabric(ranks);
  std::vector<std::thread> th;
  std::vector<std::exception_ptr> errs(ranks);
  std::vector<train::TrainResult> res(ranks);
  for (int r = 0; r < ranks; ++r)
    th.emplace_back([&, r] {
      try {
        InprocTransport t(fabric, r);
        res[r] = train::runDistributed(cfg, t, &fm);
      } catch (...) {
        errs[r] = std::current_exception();
      }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
  return res[cfg.servers * (1 + cfg.replicas) + cfg.spares];
}

inline Config jobConfig() {
  Config c;
  c.model = "mlp";
  c.device = "cpu";
  c.threads = 1;
  c.batch = 16;
  c.steps = 30;
  c.evalBatch = 64;
  c.lr = 0.01;
  c.momentum = 0.9;
  c.logLevel = "warn";
  c.peerTimeoutS = kTimeout;
  return c;
}

}  // namespace phx::inproc_test
