// What the server side of a job learns from the workers: the length of the flat parameter
// vector, its initial values and the number of steps the run plans (the learning-rate schedule
// spans them). Servers, replicas and spares hold flat float vectors and optimizer state only:
// they never build the model or read the data. The chief worker sends the spec to every
// non-worker rank at start (MsgType::kSetup); a replacement process started later receives it
// with the view it joins at (recovery/respawn.h).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/ps/layout.h"
#include "runtime/transport/transport.h"

namespace phx::ps {

struct JobSpec {
  int64_t params = 0;      // length of the flat parameter vector
  int64_t totalSteps = 0;  // worker steps the run plans (the learning-rate schedule's length)
  std::vector<float> init; // the initial parameters (params values)

  bool valid() const { return params > 0 && totalSteps > 0 && static_cast<int64_t>(init.size()) == params; }
  // [params, totalSteps, init...] as bytes (a replacement's bootstrap), and back; parse throws
  // UserError on bytes that are not a valid spec.
  std::vector<unsigned char> serialize() const;
  static JobSpec parse(const unsigned char* p, size_t n);
};

// The chief sends `spec` to every rank before the first worker (servers, replicas, spares) and
// waits until each send is done or, per `alive` (the failure detector's view; none: all live),
// its rank has died: a spare killed at start must not hold the chief up (its send is cancelled).
void sendSpec(transport::Transport& t, const RoleLayout& layout, const JobSpec& spec, double timeoutS,
              const std::function<bool(int)>& alive = {});
// A server-side rank receives it from the chief (worker 0); throws PeerFailure after timeoutS
// and UserError on a malformed spec (naming the sender).
JobSpec receiveSpec(transport::Transport& t, const RoleLayout& layout, double timeoutS);

}  // namespace phx::ps
