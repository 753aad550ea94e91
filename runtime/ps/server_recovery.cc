// ps::Server's recovery side: chain replication (forwarding, replicas, acknowledgements,
// promotion) and the stateless rejoin (hello, backlogs, rebuild). The protocol is described in
// server.h and docs/recovery.md.
#include <cstring>

#include "runtime/core/log.h"
#include "runtime/core/test_hooks.h"
#include "runtime/ps/server.h"

namespace phx::ps {

using transport::Header;
using transport::MsgType;

BacklogRule parseBacklogRule(const std::string& s) {
  if (s == "sum") return BacklogRule::kSum;
  if (s == "mean") return BacklogRule::kMean;
  if (s == "staleness") return BacklogRule::kStaleness;
  PHX_USER_ERROR("--backlog-rule '", s, "' is not known (accepted: sum, mean, staleness)");
}

// ---------------------------------------------------------------- chain replication

void Server::packMeta(int64_t* m) const {
  m[0] = stats_.version;
  m[1] = round_;
  m[2] = stats_.gradients;
  m[3] = opt_.clients;
  int64_t* q = m + 4;
  for (int c = 0; c < opt_.clients; ++c) {
    *q++ = clocks_[c];
    *q++ = offset_[c];
    *q++ = known_[c];
    *q++ = done_[c];
    *q++ = applied_[c];
  }
}

void Server::unpackMeta(const int64_t* m) {
  stats_.version = m[0];
  round_ = m[1];
  stats_.gradients = m[2];
  const int64_t* q = m + 4;
  doneCount_ = 0;
  for (int c = 0; c < opt_.clients; ++c) {
    clocks_[c] = *q++;
    offset_[c] = *q++;
    known_[c] = static_cast<char>(*q++);
    done_[c] = static_cast<char>(*q++);
    applied_[c] = *q++;
    doneCount_ += done_[c] ? 1 : 0;
  }
}

void Server::forward(const float* grad, const kernels::SgdParams& p, bool full) {
  if (successor_ < 0) return;
  if (fwdId_ >= 0) awaitSend(fwdId_);
  fwdId_ = -1;
  if (successor_ < 0) return;  // the successor died while we waited
  const size_t n = w_.size();
  const size_t floats = (full ? 2 : 1) * n;
  fwd_.resize(floats * sizeof(float) + metaCount() * sizeof(int64_t));
  auto* f = reinterpret_cast<float*>(fwd_.data());
  if (full) {
    std::memcpy(f, w_.data(), n * sizeof(float));
    std::memcpy(f + n, v_.data(), n * sizeof(float));
  } else {
    std::memcpy(f, grad, n * sizeof(float));
  }
  std::vector<int64_t> meta(metaCount());
  packMeta(meta.data());
  std::memcpy(fwd_.data() + floats * sizeof(float), meta.data(), meta.size() * sizeof(int64_t));
  Header h;
  h.type = MsgType::kReplicate;
  h.flags = full ? transport::kFullState
                 : (p.momentum == 0.0f && opt_.sgd.momentum != 0.0f ? transport::kNoMomentum : 0);
  h.shard = opt_.shard;
  h.epoch = opt_.epoch;
  h.version = stats_.version;
  h.value = p.lr;
  h.bytes = static_cast<int64_t>(fwd_.size());
  fwdId_ = t_.send(successor_, h, fwd_.data());
}

void Server::forwardRaw(const Header& in) {
  if (fwdId_ >= 0) awaitSend(fwdId_);
  fwdId_ = -1;
  if (successor_ < 0) return;
  std::swap(fwd_, rbuf_);
  Header h = in;
  h.epoch = opt_.epoch;
  fwdId_ = t_.send(successor_, h, fwd_.data());
}

void Server::handleReplicate(const Header& h, int src) {
  const size_t n = w_.size();
  const bool full = (h.flags & transport::kFullState) != 0;
  const size_t floats = (full ? 2 : 1) * n;
  const size_t want = floats * sizeof(float) + metaCount() * sizeof(int64_t);
  if (h.magic != transport::kMagic || h.shard != opt_.shard || h.bytes != static_cast<int64_t>(want)) {
    if (h.bytes > 0 && h.bytes <= static_cast<int64_t>(2 * want))
      t_.discardPayload(src, MsgType::kReplicate, static_cast<size_t>(h.bytes), opt_.timeoutS);
    reject(h, src, detail::concat("replicate message of ", h.bytes, " bytes for shard ", h.shard,
                                  ", expected ", want, " for shard ", opt_.shard));
    return;
  }
  rbuf_.resize(want);
  t_.recvPayload(src, MsgType::kReplicate, rbuf_.data(), want, opt_.timeoutS);
  std::vector<int64_t> meta(metaCount());
  std::memcpy(meta.data(), rbuf_.data() + floats * sizeof(float), meta.size() * sizeof(int64_t));
  if (meta[3] != opt_.clients) {
    reject(h, src, detail::concat("replicated state for ", meta[3], " clients, this shard has ", opt_.clients));
    return;
  }
  const auto* a = reinterpret_cast<const float*>(rbuf_.data());
  if (full) {
    if (h.epoch > 0) testhooks::killPoint("tail-join");  // (epoch 0: the job's first state)
    std::memcpy(w_.data(), a, n * sizeof(float));
    std::memcpy(v_.data(), a + n, n * sizeof(float));
    unpackMeta(meta.data());
    hasState_ = true;
  } else {
    if (!hasState_ || h.version <= stats_.version) return;  // the whole state comes first / seen
    if (h.version != stats_.version + 1) {
      log::error("shard ", opt_.shard, " replica: update ", h.version, " after ", stats_.version,
                 " (a gap; waiting for the whole state)");
      hasState_ = false;
      return;
    }
    kernels::SgdParams p = opt_.sgd;
    p.lr = static_cast<float>(h.value);
    if (h.flags & transport::kNoMomentum) p.momentum = 0.0f;
    be_.sgdStep(w_.data(), a, v_.data(), n, p);
    unpackMeta(meta.data());
  }
  ++stats_.replicated;
  if (successor_ >= 0)
    forwardRaw(h);
  else if (opt_.chain == ServerOptions::Chain::kSync)
    sendAck();
}

void Server::sendAck() {
  if (head_ || headRank_ < 0 || !hasState_) return;
  Header a;
  a.type = MsgType::kChainAck;
  a.shard = opt_.shard;
  a.epoch = opt_.epoch;
  a.version = stats_.version;
  acks_.push_back(t_.send(headRank_, a, nullptr));
}

void Server::reapAcks() {
  std::erase_if(acks_, [&](transport::SendId id) { return t_.sendDone(id); });
}

void Server::setChain(int headRank, int successor) {
  const bool newSuccessor = successor != successor_;
  headRank_ = headRank;
  successor_ = successor;
  if (newSuccessor && successor_ >= 0 && hasState_) forward(nullptr, opt_.sgd, true);
  if (head_ && successor_ < 0) {
    chainAcked_ = stats_.version;
    serveDeferred();
  }
  if (!head_ && successor_ < 0 && opt_.chain == ServerOptions::Chain::kSync) sendAck();
}

void Server::promote(int epoch, bool resync) {
  head_ = true;
  opt_.epoch = epoch;
  headRank_ = t_.rank();
  clearRound();
  deferred_.clear();
  chainAcked_ = successor_ < 0 ? stats_.version : 0;  // else the tail acknowledges again
  if (resync)
    beginResync();
  else
    markRecovery();
}

// ---------------------------------------------------------------- stateless rejoin

void Server::beginRejoin(BacklogRule rule, bool adoptCopies) {
  rejoin_ = true;
  rule_ = rule;
  adoptCopies_ = adoptCopies;
  answered_.assign(opt_.clients, 0);
  rejoinSum_.assign(w_.size(), 0.0f);
  rejoinCount_ = 0;
  bestVersion_ = -1;
  for (int c = 0; c < opt_.clients; ++c) {
    if (done_[c]) continue;
    Header h;
    h.type = MsgType::kHello;
    h.shard = opt_.shard;
    h.client = c;
    h.epoch = opt_.epoch;
    h.version = stats_.version;
    acks_.push_back(t_.send(layout_.workerRank(layout_.leaderOf(c)), h, nullptr));
  }
  finishRejoinIfReady();
}

void Server::handleBacklog(const Header& h, int src) {
  const size_t n = w_.size();
  const int64_t want = static_cast<int64_t>(3 * n * sizeof(float));
  const int c = h.client;
  if (h.shard != opt_.shard || c < 0 || c >= opt_.clients ||
      src != layout_.workerRank(layout_.leaderOf(c)) || h.bytes != want || h.epoch < opt_.epoch) {
    if (h.bytes > 0 && h.bytes <= 2 * want)
      t_.discardPayload(src, MsgType::kBacklog, static_cast<size_t>(h.bytes), opt_.timeoutS);
    reject(h, src, "malformed backlog message");
    return;
  }
  bbuf_.resize(3 * n);
  t_.recvPayload(src, MsgType::kBacklog, bbuf_.data(), static_cast<size_t>(want), opt_.timeoutS);
  if (answered_[c] || done_[c]) return;
  answered_[c] = 1;
  if (h.version > bestVersion_) {
    bestVersion_ = h.version;
    best_.assign(bbuf_.begin(), bbuf_.begin() + static_cast<std::ptrdiff_t>(n));
  }
  auto count = static_cast<int64_t>(h.value);
  if (count > 0) be_.axpy(n, 1.0f, bbuf_.data() + n, rejoinSum_.data());
  // The push that was in flight when the shard went down: applied already when this state has
  // it (a promoted replica's clocks say so), else it joins the backlog.
  if (h.clock >= 0) {
    if (known_[c] && h.clock - offset_[c] < clocks_[c]) {
      ++stats_.duplicates;
    } else {
      be_.axpy(n, 1.0f, bbuf_.data() + 2 * n, rejoinSum_.data());
      ++count;
    }
  }
  if (h.flags & transport::kLast) {
    done_[c] = 1;
    ++doneCount_;
  }
  rejoinCount_ += count;
  applied_[c] += count;
  log::info("shard ", opt_.shard, ": client ", c, " rejoins with ", count,
            " buffered update(s), its copy at version ", h.version);
  testhooks::killPoint("backlog");  // one client's backlog taken, the others' still to come
}

void Server::finishRejoinIfReady() {
  if (!rejoin_) return;
  for (int c = 0; c < opt_.clients; ++c)
    if (!done_[c] && !answered_[c]) return;
  rejoin_ = false;
  if (adoptCopies_ && bestVersion_ > stats_.version) {
    log::warn("shard ", opt_.shard, " rebuilt from a worker's copy at version ", bestVersion_,
              " (newer than the restored version ", stats_.version, "); momentum restarts at 0");
    w_ = best_;
    std::fill(v_.begin(), v_.end(), 0.0f);
    // The pushes in that copy are not known here: estimated from the versions (one push per
    // update, one per client per BSP round).
    stats_.gradients += (bestVersion_ - stats_.version) * (policy_.roundBased() ? opt_.clients : 1);
    stats_.version = bestVersion_;
  }
  rejoinBase_ = stats_.version;
  beginResync();
  applyBacklog();
  // Every client that handed a backlog over hears that it is applied before any pull reply
  // that holds it (one route, in order): a client whose server dies after this keeps nothing
  // to hand over again, and one whose server died before it hands the same backlog to the next.
  for (int c = 0; c < opt_.clients; ++c) {
    if (!answered_[c] || done_[c]) continue;
    Header h;
    h.type = MsgType::kHandOver;
    h.shard = opt_.shard;
    h.client = c;
    h.epoch = opt_.epoch;
    h.version = stats_.version;
    acks_.push_back(t_.send(layout_.workerRank(layout_.leaderOf(c)), h, nullptr));
  }
}

void Server::applyBacklog() {
  if (rejoinCount_ == 0) return;
  kernels::SgdParams p = opt_.sgd;
  p.momentum = 0.0f;  // one plain step for the whole backlog (the paper's rule)
  if (opt_.lrAt) p.lr = static_cast<float>(opt_.lrAt(stats_.version));
  if (rule_ == BacklogRule::kSum && rejoinCount_ > 50) p.lr *= 0.1f;
  if (rule_ == BacklogRule::kMean)
    be_.scale(rejoinSum_.size(), 1.0f / static_cast<float>(rejoinCount_), rejoinSum_.data());
  stats_.gradients += rejoinCount_;
  stats_.bufferedApplied += rejoinCount_;
  log::warn("shard ", opt_.shard, " applies a backlog of ", rejoinCount_, " buffered update(s) (rule ",
            rule_ == BacklogRule::kSum ? "sum" : rule_ == BacklogRule::kMean ? "mean" : "staleness",
            ", lr ", p.lr, ")");
  applyWith(rejoinSum_.data(), stats_.version, p);
}

}  // namespace phx::ps
