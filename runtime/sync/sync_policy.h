// Consistency models, as seen by one server shard. Each client (a worker, or a worker group's
// leader) has a clock: the number of gradients it has pushed. A policy answers two questions:
// is a push summed into a round with the other clients' pushes of the same clock (BSP), or
// applied on its own as it arrives (ASP, SSP); and may a client that asks for the weights of
// clock k (to compute its k-th gradient) have them now?
//   BSP:     rounds; weights of clock k once round k-1 is applied (version >= k).
//   ASP:     no rounds; always.
//   SSP(s):  no rounds; once the slowest active client has pushed k - s gradients, so that no
//            client is ever more than s clocks ahead of the slowest (Ho et al., NIPS 2013).
//   Sync-opt(b): BSP rounds that close with the first N = clients - b pushes; the late ones
//            are dropped (counted) and their workers go on with the next round (Chen et al.).
//   ConSGD / DynSGD: ASP (or SSP) whose updates are scaled before they are applied: by 1/M for
//            M clients (constant), or by 1/(tau + 1) for an update of staleness tau.
// EPSP and FlexRR (issue 5) attach here too.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace phx::sync {

enum class Aggregate { kSum, kMean };  // how a BSP round combines its gradients
enum class Scaling { kNone, kConstant, kStaleness };  // --scale-updates (ConSGD, DynSGD)

class SyncPolicy {
 public:
  virtual ~SyncPolicy() = default;
  virtual std::string name() const = 0;
  virtual bool roundBased() const = 0;
  // version: updates the shard has applied; minClock: smallest clock over active clients.
  virtual bool mayStart(int64_t clock, int64_t version, int64_t minClock) const = 0;
  // Backup workers of a round (Sync-opt): a round closes with `clients - backupWorkers()` pushes.
  virtual int backupWorkers() const { return 0; }
  Scaling scaling() const { return scaling_; }
  void setScaling(Scaling s) { scaling_ = s; }

 private:
  Scaling scaling_ = Scaling::kNone;
};

// "bsp" | "asp" | "ssp" (with staleness >= 0) | "syncopt" (with backupWorkers) | "consgd" |
// "dynsgd"; scaling "none" | "constant" | "staleness" for asp/ssp ("" = the name's own: constant
// for consgd, staleness for dynsgd). Throws UserError for anything else.
std::unique_ptr<SyncPolicy> makePolicy(const std::string& name, int staleness, int backupWorkers = 0,
                                       const std::string& scaling = "");
Aggregate parseAggregate(const std::string& s);

}  // namespace phx::sync
