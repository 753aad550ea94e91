// The worker side of the push/pull protocol (ps-lite's KVWorker): one client per worker group,
// talking to every server shard. Gradients are sent straight from the model's gradient buffer
// and weights received straight into the model's parameter buffer, slice by slice; the caller
// must not overwrite the gradients before waitPushes() (the next backward pass does).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/ps/layout.h"
#include "runtime/transport/transport.h"

namespace phx::ps {

// Where each shard is served now (recovery moves shards to spares): the rank and the epoch
// from which that rank serves it (replies of older epochs are not from it).
struct Directory {
  int epoch = 0;
  std::vector<int> rank;   // -1: the shard is lost (no one serves it); kRespawningRank: a
                           // replacement process is being started for it
  std::vector<int> since;
};

class PsClient {
 public:
  PsClient(transport::Transport& t, const RoleLayout& layout, std::vector<KeyRange> ranges,
           int client, int epoch, double timeoutS);

  // Asks every shard for the weights of `clock` and waits for all of them (into params).
  void pull(int64_t clock, float* params);
  // Sends this client's gradient of `clock` to every shard; with pullAfter the same message
  // asks for the weights of clock + 1 (collect them with awaitWeights).
  void push(int64_t clock, const float* grads, bool pullAfter, double loss = 0);
  // Straggler projection: this client's step time (seconds, a moving average) sent with every
  // push, and the median over the clients that the servers send back (0: not known yet).
  void setStepSeconds(double s) { stepMicros_ = static_cast<int32_t>(std::min(s * 1e6, 2e9)); }
  double medianStepSeconds() const { return medianMicros_ * 1e-6; }
  // Waits for every shard's reply for `clock` and writes it into params.
  void awaitWeights(int64_t clock, float* params);
  // Non-blocking: takes the replies for `clock` that are here; true once all have arrived
  // (awaitWeights then returns at once). EPSP/FlexRR workers do other work meanwhile.
  bool weightsArrived(int64_t clock, float* params);
  void waitPushes();
  // Tells every shard this client is finished.
  void done();

  // Recovery: `refresh` is called when a wait was interrupted by a view change; it returns the
  // new directory (and acknowledges the view). The client then re-sends to every moved shard
  // what that shard still owes an answer to: the outstanding push (the gradient buffer is still
  // intact while the caller waits) or pull.
  void setRefresh(std::function<Directory()> refresh) { refresh_ = std::move(refresh); }
  void refreshNow();
  int serverRankOf(int shard) const { return dir_.rank[shard]; }
  int64_t resends() const { return resends_; }
  // Each time a shard moved: the epoch and the last version this client had seen from the
  // previous server (updates past the restored version were lost).
  struct Move {
    int shard, epoch;
    int64_t lastVersion;
  };
  const std::vector<Move>& moves() const { return moves_; }

  // Stateless workers (--recovery stateless|hybrid): a shard that moves is "down" until its new
  // server says hello; meanwhile the caller trains on its local weights (localStep) and this
  // client buffers the gradients (at most `limit` per shard, weighted 1/(1+i) with
  // stalenessWeights; more are counted as overflow). params: the weights buffer the caller
  // pulls into (its slice of a shard is kept as the "last pulled copy" when the shard goes down).
  void setStateless(float* params, int64_t limit, bool stalenessWeights);
  bool isDown(int shard) const { return !down_.empty() && down_[shard]; }
  bool anyDown() const;
  // One plain SGD step of the down shards' slices with the last pushed gradient.
  void localStep(float* params, float lr);
  int64_t buffered() const { return buffered_; }
  int64_t overflow() const { return overflow_; }
  // Pushes to shard 0 acknowledged by a reply, plus buffered updates delivered in a backlog.
  int64_t acknowledged() const { return acked0_; }
  // Pushes of shard 0 that the server dropped (Sync-opt, late for their round) and said so.
  int64_t droppedPushes() const { return dropped0_; }

  // A server said the job is stopping (a stop signal somewhere in the job): end after this step.
  bool stopRequested() const { return stop_; }
  // Ask the servers to stop the job (a member of this worker's group was signalled): the next
  // pushes carry the request, as they do when this process itself was signalled.
  void requestStop() { askStop_ = true; }
  int64_t version(int shard) const { return versions_[shard]; }
  int64_t minVersion() const;
  // Smallest server position (in worker steps) over the shards' last replies.
  int64_t minServerStep() const;
  double bytesSent() const { return bytesSent_; }
  double bytesReceived() const { return bytesReceived_; }

 private:
  transport::Header header(transport::MsgType type, int shard, int64_t clock) const;
  void sendPush(int shard);
  void sendPull(int shard);
  void retarget(const Directory& d);
  void takeReply(const transport::Header& h, int src, int64_t clock, float* params);
  transport::Header doneHeader(int shard) const;
  void pollHello();
  bool answerHello(const transport::Header& h, int src, bool last);
  void bufferGrad(int shard, const float* grads);

  transport::Transport& t_;
  const RoleLayout& layout_;
  std::vector<KeyRange> ranges_;
  int client_, epoch_;
  double timeoutS_;
  std::vector<int64_t> versions_, steps_;
  std::vector<transport::SendId> pending_;
  Directory dir_;
  std::function<Directory()> refresh_;
  // The exchange in flight: what each shard still owes.
  struct Outstanding {
    bool active = false, isPush = false, pullAfter = false;
    int64_t clock = 0;
    const float* grads = nullptr;
    double loss = 0;
    std::vector<char> got;
  } out_;
  int64_t resends_ = 0;
  bool doneSent_ = false;
  std::vector<Move> moves_;
  // stateless
  bool stateless_ = false, weighted_ = false;
  float* params_ = nullptr;
  int64_t limit_ = 0, buffered_ = 0, overflow_ = 0, acked0_ = 0, dropped0_ = 0;
  std::vector<char> down_;
  std::vector<int64_t> count_, copyVersion_, pendingLabel_;
  // per shard: [last pulled copy | buffered sum | the push in flight when the shard went down
  // (the dead server may have applied it: the replacement decides from its clocks)]
  std::vector<std::vector<float>> backlog_;
  std::vector<char> lastSent_;  // the backlog told the server this client is done
  // A backlog handed over but not confirmed yet: the new server applies it only when every
  // client has handed over, and serves pulls only after that. Until its first pull reply the
  // backlog is kept here; if that server dies too, it becomes the next outage's backlog again.
  struct Handed {
    bool open = false;
    std::vector<float> data;
    int64_t count = 0, label = -1, version = 0;
    int rank = -1;  // the server it was handed to
  };
  std::vector<Handed> handed_;
  void confirmHandOver(int shard);
  void pollHandOvers();  // the servers' kHandOver confirmations (also from one that died since)
  double bytesSent_ = 0, bytesReceived_ = 0;
  int32_t stepMicros_ = 0, medianMicros_ = 0;
  bool stop_ = false;
  bool askStop_ = false;
};

}  // namespace phx::ps
