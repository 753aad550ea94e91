// Parameter-server training: what every rank of `mpirun -n N phoenix train` runs. The rank's
// role comes from the RoleLayout (servers, replicas, spares, workers); servers run the shard
// event loop, workers run the training loop against the servers through a PsClient (group
// leaders) or their group leader (other group members). The chief worker (worker 0) evaluates,
// prints progress, writes the metrics CSV, collects every rank's counters at the end and
// writes the summary JSON. Works over any Transport (MPI in jobs, in-process in tests).
#pragma once

#include "recovery/detector.h"
#include "runtime/core/config.h"
#include "runtime/data/fashion_mnist.h"
#include "runtime/train/local_trainer.h"
#include "runtime/transport/transport.h"

namespace phx::train {

// Runs this rank's part of the job. data may be null for ranks that load it themselves (it is
// loaded only where needed: workers). Returns the summary on the chief, an empty result elsewhere.
// detectorT: a second transport over the same ranks for the failure detector's thread (null:
// no failure detection, as in the in-process tests of the protocol).
// membership (optional): how replacements are started when no spare is left (null respawn:
// never), and, in a replacement process, the view it joins at (it then takes over like a spare).
struct Membership {
  recovery::Respawner respawn;
  const recovery::View* joinView = nullptr;
  // Called on every surviving rank when its part of the job is done, with the ranks the final
  // view holds failed (main: ends those still there on this host, frozen ones).
  std::function<void(const std::vector<int>& failed)> atEnd;
};
TrainResult runDistributed(const Config& cfg, transport::Transport& t,
                           const data::FashionMnist* data = nullptr,
                           transport::Transport* detectorT = nullptr,
                           const Membership* membership = nullptr);

// CPU threads a worker rank should use when --threads is 0: the cores of this node shared
// among the ranks that compute on it, at least 1.
int workerThreads(int requested, int ranksOnNode);

}  // namespace phx::train
