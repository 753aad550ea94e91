#include "runtime/ps/server.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "runtime/core/log.h"
#include "runtime/core/signals.h"
#include "runtime/sync/projection.h"

namespace phx::ps {

using transport::Header;
using transport::MsgType;


Server::Server(transport::Transport& t, const RoleLayout& layout, const ServerOptions& opt,
               const sync::SyncPolicy& policy, kernels::Backend& backend,
               std::vector<float> initial)
    : t_(t), layout_(layout), opt_(opt), policy_(policy), be_(backend), w_(std::move(initial)) {
  const size_t n = static_cast<size_t>(opt_.range.size());
  PHX_ENFORCE(w_.size() == n, "shard ", opt_.shard, " got ", w_.size(), " initial weights for ",
              n, " keys");
  PHX_ENFORCE(opt_.clients >= 1, "a server needs clients");
  v_.assign(n, 0.0f);
  recv_.resize(n);
  if (policy_.roundBased()) acc_.assign(n, 0.0f);
  clocks_.assign(opt_.clients, 0);
  offset_.assign(opt_.clients, 0);
  known_.assign(opt_.clients, 1);
  done_.assign(opt_.clients, 0);
  inRound_.assign(opt_.clients, 0);
  applied_.assign(opt_.clients, 0);
  stepMicros_.assign(opt_.clients, 0);
  headRank_ = t_.rank();
}

void Server::awaitSend(transport::SendId id) {
  for (;;) {
    try {
      t_.waitSend(id, opt_.timeoutS);
      return;
    } catch (const transport::ViewChanged&) {
      if (!opt_.onViewChanged) throw;
      opt_.onViewChanged();  // the dead peer's sends are abandoned: the retry returns
    }
  }
}

void Server::restore(int64_t version, int64_t round, std::vector<float> w, std::vector<float> v,
                     int64_t gradients) {
  PHX_ENFORCE(w.size() == w_.size() && v.size() == v_.size(), "restored state of ", w.size(),
              " keys for a shard of ", w_.size());
  w_ = std::move(w);
  v_ = std::move(v);
  stats_.version = version;
  stats_.gradients = gradients;
  round_ = round;
}

void Server::beginResync() {
  resync_ = true;
  firstApply_ = 0;
  clearRound();
  for (int c = 0; c < opt_.clients; ++c) {
    clocks_[c] = policy_.roundBased() ? round_ : 0;
    known_[c] = 0;
  }
}

bool Server::resolveOffset(int c, int64_t label) {
  if (known_[c]) return true;
  offset_[c] = label - clocks_[c];
  known_[c] = 1;
  return true;
}

void Server::dropClient(int c) {
  if (c < 0 || c >= opt_.clients || done_[c]) return;
  done_[c] = 1;
  ++doneCount_;
  ++stats_.clientsLost;
  log::warn("shard ", opt_.shard, ": client ", c, " lost (its rank died); ",
            opt_.clients - doneCount_, " client(s) go on");
  if (roundComplete()) closeRound();
  finishRejoinIfReady();
  serveDeferred();
}

void Server::reject(const Header& h, int src, const std::string& why) {
  ++stats_.rejected;
  log::error("shard ", opt_.shard, " rejected a ", transport::msgTypeName(h.type),
             " message from rank ", src, ": ", why, " (not applied)");
}

bool Server::validate(const Header& h, int src, MsgType expect, bool withPayload) {
  std::string why;
  const int64_t wantBytes = withPayload ? opt_.range.size() * int64_t{sizeof(float)} : 0;
  if (h.magic != transport::kMagic) {
    why = "bad magic number (not a Phoenix message)";
  } else if (h.type != expect) {
    why = "wrong message type";
  } else if (h.epoch < opt_.epoch) {
    why = detail::concat("epoch ", h.epoch, " is older than this server's epoch ", opt_.epoch);
  } else if (h.shard != opt_.shard) {
    why = detail::concat("addressed to shard ", h.shard, ", this is shard ", opt_.shard);
  } else if (h.client < 0 || h.client >= opt_.clients) {
    why = detail::concat("client ", h.client, " is not in 0..", opt_.clients - 1);
  } else if (src != layout_.workerRank(layout_.leaderOf(h.client))) {
    why = detail::concat("client ", h.client, " speaks from rank ",
                         layout_.workerRank(layout_.leaderOf(h.client)), ", not ", src);
  } else if (withPayload && (h.offset != opt_.range.lo || h.bytes != wantBytes)) {
    // (a malformed header's end key can overflow int64: UBSan found it through tests/fuzz)
    int64_t end = 0;
    const bool over = __builtin_add_overflow(h.offset, h.bytes / 4, &end);
    why = detail::concat("payload covers keys [", h.offset, ", ",
                         over ? std::string("overflow") : std::to_string(end), ") in ", h.bytes,
                         " bytes; this shard owns [", opt_.range.lo, ", ", opt_.range.hi, ")");
  } else if (!withPayload && h.bytes != 0) {
    why = "unexpected payload";
  } else if (h.clock < 0) {
    why = detail::concat("negative clock ", h.clock);
  }
  if (why.empty()) return true;
  if (h.bytes > 0 && h.bytes <= wantBytes + (1 << 20))
    t_.discardPayload(src, h.type, static_cast<size_t>(h.bytes), opt_.timeoutS);
  reject(h, src, why);
  return false;
}

bool Server::step() {
  bool any = false;
  Header h;
  int src = -1;
  reapAcks();
  // The chief's release (a header without client) ends a replica or spare-turned-server.
  // Client "done" messages are handled below (a replica may see one just before promotion).
  auto takeDones = [&] {
    while (t_.poll(MsgType::kDone, &h, &src)) {
      any = true;
      if (h.client < 0 && src == (reportTo_ >= 0 ? reportTo_ : layout_.chiefRank())) {
        // the chief's release (the final weights were collected): header only (a payload
        // left unread would be taken as the next such message's; found by tests/fuzz)
        if (h.magic != transport::kMagic || h.bytes != 0) {
          if (h.bytes > 0 && h.bytes <= (1 << 20))
            t_.discardPayload(src, MsgType::kDone, static_cast<size_t>(h.bytes), opt_.timeoutS);
          reject(h, src, "malformed release message (bad magic number or a payload)");
          continue;
        }
        released_ = true;
        continue;
      }
      handleDone(h, src);
    }
  };
  if (!head_) {
    for (int n = 0; n < 8 && t_.poll(MsgType::kReplicate, &h, &src); ++n) {
      any = true;
      handleReplicate(h, src);
    }
    takeDones();
    return any;
  }
  while (t_.poll(MsgType::kChainAck, &h, &src)) {
    any = true;
    if (h.shard == opt_.shard && h.version > chainAcked_) chainAcked_ = h.version;
  }
  if (rejoin_) {
    while (t_.poll(MsgType::kBacklog, &h, &src)) {
      any = true;
      handleBacklog(h, src);
    }
    takeDones();
    finishRejoinIfReady();
    if (rejoin_) return any;
  }
  // Pushes first: a pull that waits on a round is then answered in the same pass. A pass
  // takes a bounded number of messages, so that the caller's tick (failure handling, kill
  // injection, checkpoints) runs even while clients keep the server busy.
  const int budget = 2 * opt_.clients;
  for (int n = 0; n < budget && t_.poll(MsgType::kPush, &h, &src); ++n) {
    any = true;
    handlePush(h, src);
  }
  for (int n = 0; n < budget && t_.poll(MsgType::kPull, &h, &src); ++n) {
    any = true;
    handlePull(h, src);
  }
  takeDones();
  if (any) serveDeferred();
  return any;
}

void Server::handlePush(const Header& h, int src) {
  if (!validate(h, src, MsgType::kPush, true)) return;
  const int c = h.client;
  if ((h.flags & transport::kStop) && !stopLatched_) {
    stopLatched_ = true;  // a stop signal reached that worker: the job stops at this round
    log::warn("shard ", opt_.shard, ": client ", c, " was asked to stop (a signal) at version ",
              stats_.version, "; the workers end after this step");
  }
  if (h.aux > 0) stepMicros_[c] = h.aux;  // straggler projection (also from a late push)
  std::string why;
  if (!done_[c]) resolveOffset(c, h.clock);
  const int64_t logical = h.clock - offset_[c];
  if (!done_[c] && opt_.chain == ServerOptions::Chain::kSync && logical >= 0 && logical < clocks_[c]) {
    // A push re-sent after a promotion that the chain had already applied: not applied again;
    // its pull is answered once the tail has everything applied so far.
    t_.discardPayload(src, h.type, static_cast<size_t>(h.bytes), opt_.timeoutS);
    ++stats_.duplicates;
    if (h.flags & transport::kPullAfter) {
      const PendingPull p{c, src, logical + 1, h.clock + 1, stats_.version};
      if (!tryServe(p)) deferred_.push_back(p);
    }
    return;
  }
  if (done_[c])
    why = detail::concat("client ", c, " already said it was done");
  else if (logical != clocks_[c])
    why = detail::concat("clock ", h.clock, " out of order (client ", c, " is at clock ",
                         clocks_[c] + offset_[c], ")");
  else if (policy_.roundBased() && policy_.backupWorkers() > 0 && logical >= 0 && logical < round_) {
    // Sync-opt: this round closed without it (a backup worker's push). Dropped and counted;
    // the worker goes on with the open round.
    t_.discardPayload(src, h.type, static_cast<size_t>(h.bytes), opt_.timeoutS);
    ++stats_.dropped;
    ++clocks_[c];
    if (h.flags & transport::kPullAfter) {
      const PendingPull p{c, src, logical + 1, h.clock + 1, stats_.version, true};
      if (!tryServe(p)) deferred_.push_back(p);
    }
    return;
  } else if (policy_.roundBased() && logical != round_)
    why = detail::concat("clock ", h.clock, " is not the open round ", round_ + offset_[c]);
  if (!why.empty()) {
    t_.discardPayload(src, h.type, static_cast<size_t>(h.bytes), opt_.timeoutS);
    reject(h, src, why);
    return;
  }
  // Straight into place: a round's first gradient lands in the accumulator itself, the others
  // in the receive buffer to be summed in; ASP/SSP gradients are applied from there.
  const bool firstOfRound = policy_.roundBased() && roundPushes_ == 0;
  t_.recvPayload(src, MsgType::kPush, firstOfRound ? acc_.data() : recv_.data(),
                 static_cast<size_t>(h.bytes), opt_.timeoutS);
  stats_.bytesIn += static_cast<double>(h.bytes);
  ++stats_.gradients;
  ++clocks_[c];
  ++applied_[c];
  if (policy_.roundBased()) {
    if (firstOfRound) {
      roundBaseMin_ = h.version;
    } else {
      be_.axpy(acc_.size(), 1.0f, recv_.data(), acc_.data());
      roundBaseMin_ = std::min(roundBaseMin_, h.version);
    }
    ++roundPushes_;
    inRound_[c] = 1;
    if (roundComplete()) closeRound();
  } else {
    apply(recv_.data(), h.version);
  }
  if (h.flags & transport::kPullAfter) {
    const PendingPull p{c, src, logical + 1, h.clock + 1, stats_.version};
    if (!tryServe(p)) deferred_.push_back(p);
  }
}

void Server::closeRound() {
  if (opt_.aggregate == sync::Aggregate::kMean && roundPushes_ > 1)
    be_.scale(acc_.size(), 1.0f / static_cast<float>(roundPushes_), acc_.data());
  clearRound();
  ++round_;  // before apply: a snapshot taken after the update records the closed round
  apply(acc_.data(), roundBaseMin_);
}

int32_t Server::medianStepMicros() const {
  std::vector<int32_t> v;
  for (int c = 0; c < opt_.clients; ++c)
    if (!done_[c] && stepMicros_[c] > 0) v.push_back(stepMicros_[c]);
  return sync::medianOf(std::move(v));
}

void Server::clearRound() {
  roundPushes_ = 0;
  std::fill(inRound_.begin(), inRound_.end(), 0);
}

// A round closes when the live clients' pushes reach the quorum. Pushes of clients that died or
// said done since stay in the sum but do not count: when a whole host of workers is lost after
// they pushed, the round still waits for the survivors (it once closed on the dead's pushes and
// rejected the survivor's push for the round it was computing).
bool Server::roundComplete() const {
  if (!policy_.roundBased() || roundPushes_ == 0) return false;
  int live = 0;
  for (int c = 0; c < opt_.clients; ++c) live += (inRound_[c] && !done_[c]) ? 1 : 0;
  return live >= roundQuorum();
}

int Server::roundQuorum() const {
  return std::max(1, opt_.clients - doneCount_ - policy_.backupWorkers());
}

void Server::apply(float* grad, int64_t baseVersion) {
  // ConSGD: every update scaled by 1/M; DynSGD: by 1/(staleness + 1).
  const sync::Scaling sc = policy_.scaling();
  if (sc != sync::Scaling::kNone) {
    const float f = sc == sync::Scaling::kConstant
                        ? 1.0f / static_cast<float>(opt_.clients)
                        : 1.0f / static_cast<float>(std::max<int64_t>(0, stats_.version - baseVersion) + 1);
    if (f != 1.0f) be_.scale(w_.size(), f, grad);
  }
  kernels::SgdParams p = opt_.sgd;
  if (opt_.lrAt) p.lr = static_cast<float>(opt_.lrAt(stats_.version));
  applyWith(grad, baseVersion, p);
}

void Server::applyWith(const float* grad, int64_t baseVersion, const kernels::SgdParams& p) {
  waitReplies();
  be_.sgdStep(w_.data(), grad, v_.data(), w_.size(), p);
  const int64_t staleness = stats_.version - baseVersion;
  stats_.maxStaleness = std::max(stats_.maxStaleness, staleness);
  stats_.stalenessSum += static_cast<double>(staleness);
  ++stats_.version;
  if (resync_ && firstApply_ == 0)
    firstApply_ = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (opt_.chain == ServerOptions::Chain::kSync) {
    if (successor_ >= 0)
      forward(grad, p, false);
    else
      chainAcked_ = stats_.version;  // this head is the whole chain
  } else if (opt_.chain == ServerOptions::Chain::kAsync && successor_ >= 0 &&
             opt_.replicateEvery > 0 && stats_.version % opt_.replicateEvery == 0) {
    forward(nullptr, p, true);
  }
  if (!stopLatched_ && opt_.stopRequested && opt_.stopRequested()) {
    stopLatched_ = true;
    log::warn("shard ", opt_.shard, ": stop requested (", signals::stopSignalName(), ") at version ",
              stats_.version, "; the workers end after this step");
  }
  if (opt_.afterApply) opt_.afterApply();
}

void Server::handlePull(const Header& h, int src) {
  if (!validate(h, src, MsgType::kPull, false)) return;
  // A client whose numbering is not known yet (after a resync) wants the current weights: it
  // stands at the common logical clock; its first push will fix its offset.
  const int c = h.client;
  const int64_t logical = known_[c] ? h.clock - offset_[c] : clocks_[c];
  const PendingPull p{c, src, logical, h.clock, stats_.version};
  if (!tryServe(p)) deferred_.push_back(p);
}

void Server::handleDone(const Header& h, int src) {
  if (!validate(h, src, MsgType::kDone, false)) return;
  if (done_[h.client]) return;
  done_[h.client] = 1;
  if ((h.flags & transport::kStop) && !stopLatched_) {
    stopLatched_ = true;  // the job stops on another shard's word: snapshot this one too
    log::warn("shard ", opt_.shard, ": client ", h.client, " stopped on a stop signal at version ", stats_.version);
  }
  ++doneCount_;
  log::debug("shard ", opt_.shard, ": client ", h.client, " done at clock ", clocks_[h.client]);
  // A round that was only waiting for this client can close now.
  if (roundComplete()) closeRound();
}

int64_t Server::minActiveClock() const {
  int64_t m = std::numeric_limits<int64_t>::max();
  for (int c = 0; c < opt_.clients; ++c)
    if (!done_[c]) m = std::min(m, clocks_[c]);
  return m;
}

bool Server::tryServe(const PendingPull& p) {
  const int64_t minClock = minActiveClock();
  if (!policy_.mayStart(p.clock, policy_.roundBased() ? round_ : stats_.version, minClock))
    return false;
  // Chain sync: the reply acknowledges the client's push, so the tail must have it (BSP: the
  // round that closed, i.e. everything applied so far).
  if (opt_.chain == ServerOptions::Chain::kSync &&
      chainAcked_ < (policy_.roundBased() ? stats_.version : p.need))
    return false;
  if (minClock != std::numeric_limits<int64_t>::max())
    stats_.maxLead = std::max(stats_.maxLead, p.clock - minClock);
  Header r;
  r.type = MsgType::kPullReply;
  r.shard = opt_.shard;
  r.client = p.client;
  r.epoch = opt_.epoch;
  r.clock = p.label;
  r.version = opt_.chain == ServerOptions::Chain::kSync ? std::min(stats_.version, chainAcked_)
                                                       : stats_.version;
  // The server's position in worker steps (a resumed job's workers start from it).
  r.value = static_cast<double>(policy_.roundBased() ? round_ : stats_.version / opt_.clients);
  r.aux = medianStepMicros();
  if (stopLatched_) r.flags |= transport::kStop;
  if (p.dropped) r.flags |= transport::kDropped;
  r.offset = opt_.range.lo;
  r.bytes = static_cast<int64_t>(w_.size() * sizeof(float));
  inflight_.push_back(t_.send(p.src, r, w_.data()));
  ++stats_.pullsServed;
  stats_.bytesOut += static_cast<double>(r.bytes);
  return true;
}

void Server::serveDeferred() {
  // Serving one pull never unblocks another (only pushes and dones do), so one pass suffices.
  auto keep = std::remove_if(deferred_.begin(), deferred_.end(),
                             [&](const PendingPull& p) { return tryServe(p); });
  deferred_.erase(keep, deferred_.end());
}

void Server::waitReplies() {
  for (transport::SendId id : inflight_) awaitSend(id);
  inflight_.clear();
}

void Server::run(int reportTo) {
  reportTo_ = reportTo;
  transport::Backoff idle;
  while (!finished()) {
    try {
      if (opt_.tick) opt_.tick();
      if (finished()) break;
      if (step())
        idle.reset();
      else
        idle.pause();
    } catch (const transport::ViewChanged&) {
      // A peer died in the middle of a message (nothing of it was applied): install the view;
      // the next tick acts on it.
      if (!opt_.onViewChanged) throw;
      opt_.onViewChanged();
    }
  }
  waitReplies();
  if (fwdId_ >= 0) awaitSend(fwdId_);
  fwdId_ = -1;
  for (transport::SendId id : acks_) awaitSend(id);
  acks_.clear();
  if (reportTo_ < 0 || released_ || !head_) return;
  sendFinal(reportTo_);
}

void Server::sendFinal(int to) {
  Header f;
  f.type = MsgType::kFinal;
  f.shard = opt_.shard;
  f.epoch = opt_.epoch;
  f.version = stats_.version;
  f.value = static_cast<double>(stats_.gradients);
  f.offset = opt_.range.lo;
  f.bytes = static_cast<int64_t>(w_.size() * sizeof(float));
  inflight_.push_back(t_.send(to, f, w_.data()));
  waitReplies();
}

}  // namespace phx::ps
