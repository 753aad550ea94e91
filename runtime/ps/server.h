// One parameter-server shard: owns the key range [lo, hi) of the flat parameter vector, its
// optimizer state (SGD momentum) and its version (updates applied). It runs one event loop on
// one thread: take pushes, pulls and "done" messages, validate each (a malformed one is
// counted, logged and never applied), apply gradients under the sync policy, answer pulls when
// the policy allows. When every client is done it sends the final weights and its counters to
// the chief worker and returns.
//
// Protocol (all messages carry shard, client, clock, version, offset, bytes, epoch):
//   push(client c, clock k, grad[lo,hi))     k must be c's next clock; kPullAfter flag = also a
//                                            pull for clock k+1
//   pull(client c, clock k)               -> pull-reply(clock k, version v, weights[lo,hi))
//   done(client c)                           c pushes no more; rounds and SSP bounds stop
//                                            waiting for it
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/backend.h"
#include "runtime/ps/layout.h"
#include "runtime/sync/sync_policy.h"
#include "runtime/transport/transport.h"

namespace phx::ps {

struct ServerOptions {
  int shard = 0;
  KeyRange range;
  int clients = 1;        // worker groups talking to this server
  int epoch = 0;
  sync::Aggregate aggregate = sync::Aggregate::kSum;
  kernels::SgdParams sgd;
  std::function<double(int64_t version)> lrAt;  // learning rate of the update at a version
  double timeoutS = 120;  // deadline for any single wait on a peer
  // Called once per event-loop pass (recovery: view changes, kill injection, time-based
  // checkpoints) and after every applied update (update-based checkpoints).
  std::function<void()> tick;
  std::function<void()> afterApply;
};

struct ServerStats {
  int64_t version = 0;        // updates applied
  int64_t gradients = 0;      // pushes accepted (a BSP round applies several at once)
  int64_t pullsServed = 0;
  int64_t rejected = 0;       // malformed or out-of-order messages dropped
  int64_t maxLead = 0;        // largest (clock - slowest clock) of a granted pull
  int64_t maxStaleness = 0;   // largest (version at apply - version the gradient was based on)
  double stalenessSum = 0;
  double bytesIn = 0, bytesOut = 0;
  int64_t clientsLost = 0;    // clients dropped because their rank died
};

class Server {
 public:
  // initial: the shard's initial weights (range.size() floats). backend: for the update kernels.
  Server(transport::Transport& t, const RoleLayout& layout, const ServerOptions& opt,
         const sync::SyncPolicy& policy, kernels::Backend& backend, std::vector<float> initial);

  // Serves until every client is done; then sends final weights + stats to `reportTo` (a rank,
  // or -1 for nobody).
  void run(int reportTo);
  // One pass over the waiting messages; returns whether anything happened (tests drive this).
  bool step();
  bool allDone() const { return doneCount_ == opt_.clients; }

  const ServerStats& stats() const { return stats_; }
  const std::vector<float>& weights() const { return w_; }
  const std::vector<float>& momentum() const { return v_; }
  int64_t round() const { return round_; }
  const KeyRange& range() const { return opt_.range; }
  int shard() const { return opt_.shard; }

  // Recovery. restore(): state from a snapshot (or another copy). beginResync(): this server
  // replaces a dead one; it does not know the clients' clocks, so each client's first message
  // fixes the offset between that client's clock labels and this server's logical clocks
  // (every client restarts at the same logical clock, so BSP rounds and SSP bounds hold from
  // there on). dropClient(): the client's rank died; it leaves BSP membership and SSP bounds.
  void restore(int64_t version, int64_t round, std::vector<float> w, std::vector<float> v);
  void beginResync();
  void dropClient(int client);
  bool clientActive(int client) const { return !done_[client]; }
  // Time of the first update applied since beginResync (steady seconds; 0: none yet).
  double firstApplyAfterResync() const { return firstApply_; }

 private:
  struct PendingPull {
    int client, src;
    int64_t clock;    // logical clock (this server's numbering)
    int64_t label;    // the clock as the client numbers it (echoed in the reply)
  };
  bool validate(const transport::Header& h, int src, transport::MsgType expect,
                bool withPayload);
  void handlePush(const transport::Header& h, int src);
  void handlePull(const transport::Header& h, int src);
  void handleDone(const transport::Header& h, int src);
  void apply(const float* grad, int64_t baseVersion);
  void closeRound();
  void serveDeferred();
  bool tryServe(const PendingPull& p);
  void waitReplies();  // before the weights change: pull replies still read them
  int64_t minActiveClock() const;
  void reject(const transport::Header& h, int src, const std::string& why);

  transport::Transport& t_;
  const RoleLayout& layout_;
  ServerOptions opt_;
  const sync::SyncPolicy& policy_;
  kernels::Backend& be_;
  std::vector<float> w_, v_, acc_, recv_;
  std::vector<int64_t> clocks_;   // logical clock per client (pushes accepted)
  std::vector<int64_t> offset_;   // client's clock label - logical clock
  std::vector<char> known_;       // offset known (false only during a resync)
  int64_t round_ = 0;             // BSP: rounds closed (= the open round's logical clock)
  bool resync_ = false;
  double firstApply_ = 0;
  bool resolveOffset(int client, int64_t label);
  std::vector<char> done_;
  int doneCount_ = 0;
  int roundPushes_ = 0;
  int64_t roundBaseMin_ = 0;
  std::vector<PendingPull> deferred_;
  std::vector<transport::SendId> inflight_;
  ServerStats stats_;
};

}  // namespace phx::ps
