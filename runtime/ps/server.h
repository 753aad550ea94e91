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
//
// Chain replication (docs/recovery.md): the shard's head forwards each applied update (sync) or
// its whole state every few updates (async) to the next rank of the chain, which applies it
// bit-identically and forwards it on; in sync mode the tail acknowledges to the head, and a
// push is acknowledged to its worker (the pull reply) only once the tail has applied it. A
// replica is a Server that is not the head: it takes only replicate messages until promoted.
//
// Stateless servers: a replacement first collects, from every client, the weights it last
// pulled and the updates it buffered while the shard was down (rejoin), rebuilds from the
// freshest copy, applies the backlog with the chosen rule, then serves as usual.
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
  // Called when a wait was interrupted by a membership change: it must install the view (so
  // that sends to dead ranks are abandoned) without touching the server; the tick acts on it.
  std::function<void()> onViewChanged;
  // Chain replication: none, sync (forward every update, acknowledge at the tail), async (the
  // whole state every replicateEvery updates).
  enum class Chain { kNone, kSync, kAsync } chain = Chain::kNone;
  int64_t replicateEvery = 100;
  // Asked after every applied update: true latches a stop (a stop signal), and every pull reply from
  // then on tells the worker to end after its step (BSP: all workers after the same round).
  std::function<bool()> stopRequested;
};

// How a stateless replacement applies the clients' buffered updates (--backlog-rule).
enum class BacklogRule { kSum, kMean, kStaleness };
BacklogRule parseBacklogRule(const std::string& s);

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
  int64_t duplicates = 0;     // re-sent pushes already applied (after a chain promotion)
  int64_t replicated = 0;     // chain: updates or states received from the predecessor
  int64_t bufferedApplied = 0;  // stateless: buffered updates applied in backlog steps
  int64_t dropped = 0;        // Sync-opt: pushes that came after their round closed
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
  int activeClients() const { return opt_.clients - doneCount_; }
  // run() returns: every client done (the head), or released by the chief.
  bool finished() const { return released_ || (head_ && allDone()); }
  const std::vector<int64_t>& appliedPerClient() const { return applied_; }

  const ServerStats& stats() const { return stats_; }
  const std::vector<float>& weights() const { return w_; }
  const std::vector<float>& momentum() const { return v_; }
  int64_t round() const { return round_; }
  bool stopLatched() const { return stopLatched_; }
  const KeyRange& range() const { return opt_.range; }
  int shard() const { return opt_.shard; }

  // Recovery. restore(): state from a snapshot (or another copy). beginResync(): this server
  // replaces a dead one; it does not know the clients' clocks, so each client's first message
  // fixes the offset between that client's clock labels and this server's logical clocks
  // (every client restarts at the same logical clock, so BSP rounds and SSP bounds hold from
  // there on). dropClient(): the client's rank died; it leaves BSP membership and SSP bounds.
  void restore(int64_t version, int64_t round, std::vector<float> w, std::vector<float> v,
               int64_t gradients = 0);
  // The version a stateless rejoin rebuilt from (the restored one or a worker's copy), -1 before.
  int64_t rejoinBase() const { return rejoinBase_; }
  void beginResync();
  void dropClient(int client);
  bool clientActive(int client) const { return !done_[client]; }
  // Time of the first update applied since beginResync or markRecovery (steady seconds; 0:
  // none yet).
  double firstApplyAfterResync() const { return firstApply_; }
  void markRecovery() {
    resync_ = true;
    firstApply_ = 0;
  }

  // Chain replication. setChain: this rank's place in the chain (the head's rank, the next
  // rank or -1 at the tail); a new successor is sent the whole state first. A replica starts
  // without state (hasState false) until its predecessor sends it. promote: this replica
  // becomes the head at `epoch`; resync: its state may be older than the clients' (async).
  void setChain(int headRank, int successor);
  void setHead(bool head) { head_ = head; }
  void promote(int epoch, bool resync);
  bool isHead() const { return head_; }
  bool hasState() const { return hasState_; }
  void setHasState(bool s) { hasState_ = s; }
  int64_t chainAcked() const { return chainAcked_; }
  // Where the final weights go (the chief changes when the chief worker dies); sendFinal sends
  // them again (to a chief that took over after they were sent).
  void setReportTo(int rank) { reportTo_ = rank; }
  void sendFinal(int to);
  // Ends run() without a final report (the chief released this rank).
  bool released() const { return released_; }

  // Stateless rejoin: ask every active client for its copy and backlog; serving resumes once
  // all answered (or died). adoptCopies: a client's copy newer than this state replaces it.
  void beginRejoin(BacklogRule rule, bool adoptCopies);
  bool rejoining() const { return rejoin_; }
  void applyBacklog();  // (finishRejoinIfReady) the rejoin's backlog as one plain SGD step

 private:
  struct PendingPull {
    int client, src;
    int64_t clock;    // logical clock (this server's numbering)
    int64_t label;    // the clock as the client numbers it (echoed in the reply)
    int64_t need;     // chain sync: version the tail must have acknowledged first
    bool dropped = false;  // Sync-opt: the push it came with was dropped (flag kDropped)
  };
  bool validate(const transport::Header& h, int src, transport::MsgType expect,
                bool withPayload);
  void handlePush(const transport::Header& h, int src);
  void handlePull(const transport::Header& h, int src);
  void handleDone(const transport::Header& h, int src);
  void apply(float* grad, int64_t baseVersion);  // scales grad first (ConSGD, DynSGD)
  // Pushes that close a round: every active client, less Sync-opt's backup workers.
  int roundQuorum() const;
  // Applies one update with these SGD parameters (chain: forwarded with them).
  void applyWith(const float* grad, int64_t baseVersion, const kernels::SgdParams& p);
  void awaitSend(transport::SendId id);
  void closeRound();
  void serveDeferred();
  bool tryServe(const PendingPull& p);
  void waitReplies();  // before the weights change: pull replies still read them
  int64_t minActiveClock() const;
  // Chain replication helpers.
  size_t metaCount() const { return 4 + 5 * static_cast<size_t>(opt_.clients); }
  void packMeta(int64_t* m) const;
  void unpackMeta(const int64_t* m);
  void forward(const float* grad, const kernels::SgdParams& p, bool full);
  void forwardRaw(const transport::Header& h);
  void handleReplicate(const transport::Header& h, int src);
  void sendAck();
  void reapAcks();
  // Stateless rejoin.
  void handleBacklog(const transport::Header& h, int src);
  void finishRejoinIfReady();
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
  bool stopLatched_ = false;
  double firstApply_ = 0;
  bool resolveOffset(int client, int64_t label);
  std::vector<char> done_;
  int doneCount_ = 0;
  int roundPushes_ = 0;
  std::vector<char> inRound_;     // BSP: pushed into the open round (a dead client's push stays
                                  // in the sum but never stands in for a live client's)
  bool roundComplete() const;
  void clearRound();
  int64_t roundBaseMin_ = 0;
  std::vector<PendingPull> deferred_;
  std::vector<transport::SendId> inflight_;
  ServerStats stats_;
  std::vector<int64_t> applied_;  // pushes applied per client (replicated; lost-update counts)
  std::vector<int32_t> stepMicros_;  // straggler projection: each client's last reported step time
  int32_t medianStepMicros() const;
  // chain replication
  bool head_ = true, hasState_ = true, released_ = false;
  int reportTo_ = -1;
  int headRank_ = -1, successor_ = -1;
  int64_t chainAcked_ = 0;
  std::vector<char> fwd_, rbuf_;
  transport::SendId fwdId_ = -1;
  std::vector<transport::SendId> acks_;
  // stateless rejoin
  bool rejoin_ = false, adoptCopies_ = false;
  BacklogRule rule_ = BacklogRule::kSum;
  std::vector<char> answered_;
  std::vector<float> rejoinSum_, best_, bbuf_;
  int64_t rejoinCount_ = 0, bestVersion_ = -1, rejoinBase_ = -1;
};

}  // namespace phx::ps
