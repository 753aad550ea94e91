#include "runtime/ps/client.h"

#include <algorithm>

#include "runtime/core/log.h"
#include "runtime/core/signals.h"

namespace phx::ps {

using transport::Header;
using transport::MsgType;

PsClient::PsClient(transport::Transport& t, const RoleLayout& layout,
                   std::vector<KeyRange> ranges, int client, int epoch, double timeoutS)
    : t_(t), layout_(layout), ranges_(std::move(ranges)), client_(client), epoch_(epoch),
      timeoutS_(timeoutS), versions_(ranges_.size(), -1), steps_(ranges_.size(), 0) {
  dir_.epoch = epoch;
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    dir_.rank.push_back(layout.serverRank(s));
    dir_.since.push_back(0);
  }
  out_.got.assign(ranges_.size(), 0);
}

void PsClient::refreshNow() {
  if (!refresh_) throw;
  retarget(refresh_());
}

void PsClient::retarget(const Directory& d) {
  const Directory old = dir_;
  dir_ = d;
  epoch_ = d.epoch;
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    if (d.rank[s] == old.rank[s]) continue;
    if (d.rank[s] == -1)
      PHX_USER_ERROR("shard ", s, " is lost: its server died and no spare is left to take over",
                     old.rank[s] == ps::kRespawningRank ? " (starting a replacement failed)" : "",
                     "; restart the job from the last snapshot with --resume DIR, or give --spares");
    const bool respawning = d.rank[s] == ps::kRespawningRank;
    const bool reborn = old.rank[s] == ps::kRespawningRank;  // its replacement is up
    if (respawning)
      log::info("client ", client_, ": shard ", s, " waits for a replacement process (epoch ",
                d.epoch, ")");
    else
      log::info("client ", client_, ": shard ", s, " now served by rank ", d.rank[s], " (epoch ",
                d.epoch, ")");
    // one move per failover (a replacement that was being started is the same failover)
    if (!reborn) moves_.push_back(Move{s, d.epoch, versions_[s]});
    if (respawning && !stateless_) continue;  // sent again once the replacement is named
    if (stateless_ && !doneSent_) {
      // Down until the new server's hello: keep the last pulled copy, buffer from now on (the
      // outstanding push too: the dead server may not have applied it).
      const int64_t n = ranges_[s].size();
      pollHandOvers();  // the dead server may have applied the hand-over before it died
      if (!down_[s] && handed_[s].open) {
        // The previous hand-over was never confirmed (its server died during its rejoin): the
        // same backlog goes to the next server, with what is buffered from now on.
        Handed& hd = handed_[s];
        down_[s] = 1;
        count_[s] = hd.count;
        pendingLabel_[s] = hd.label;
        copyVersion_[s] = hd.version;
        backlog_[s] = std::move(hd.data);
        hd = Handed{};
        log::warn("client ", client_, ": shard ", s, "'s server died before it confirmed the ",
                  count_[s] + (pendingLabel_[s] >= 0 ? 1 : 0),
                  " buffered update(s) handed to it; they go to the next server");
      } else if (!down_[s]) {
        down_[s] = 1;
        count_[s] = 0;
        pendingLabel_[s] = -1;
        copyVersion_[s] = versions_[s];
        backlog_[s].assign(3 * n, 0.0f);
        std::copy(params_ + ranges_[s].lo, params_ + ranges_[s].hi, backlog_[s].begin());
      }
      if (out_.active && !out_.got[s]) {
        if (out_.isPush && pendingLabel_[s] < 0 && count_[s] == 0) {
          pendingLabel_[s] = out_.clock;
          std::copy(out_.grads + ranges_[s].lo, out_.grads + ranges_[s].hi, backlog_[s].begin() + 2 * n);
        } else if (out_.isPush) {
          bufferGrad(s, out_.grads);
        }
        out_.got[s] = 1;
      }
      log::warn("client ", client_, ": shard ", s, " is down; training goes on locally (",
                count_[s], " update(s) buffered)");
      continue;
    }
    if (doneSent_) {  // finished: the new server must not wait for this client
      if (d.rank[s] < 0) continue;  // (told once the replacement is named)
      pending_.push_back(t_.send(dir_.rank[s], doneHeader(s), nullptr));
      continue;
    }
    if (!out_.active || out_.got[s]) continue;
    ++resends_;
    if (out_.isPush)
      sendPush(s);
    else
      sendPull(s);
  }
}

Header PsClient::header(MsgType type, int shard, int64_t clock) const {
  Header h;
  h.type = type;
  h.shard = shard;
  h.client = client_;
  h.epoch = epoch_;
  h.clock = clock;
  h.version = versions_[shard];
  return h;
}

int64_t PsClient::minVersion() const {
  return *std::min_element(versions_.begin(), versions_.end());
}

void PsClient::sendPull(int s) {
  if (dir_.rank[s] < 0) return;  // a replacement is being started: sent once it is named
  pending_.push_back(t_.send(dir_.rank[s], header(MsgType::kPull, s, out_.clock), nullptr));
}

void PsClient::sendPush(int s) {
  Header h = header(MsgType::kPush, s, out_.clock);
  h.flags = out_.pullAfter ? transport::kPullAfter : 0;
  // A stop signal to this worker (or to a member of its group): the servers decide the step.
  if (askStop_ || signals::stopRequested()) h.flags |= transport::kStop;
  h.offset = ranges_[s].lo;
  h.bytes = ranges_[s].size() * static_cast<int64_t>(sizeof(float));
  h.value = out_.loss;
  h.aux = stepMicros_;
  if (dir_.rank[s] < 0) return;  // a replacement is being started: sent once it is named
  pending_.push_back(t_.send(dir_.rank[s], h, out_.grads + ranges_[s].lo));
  bytesSent_ += static_cast<double>(h.bytes);
}

int64_t PsClient::minServerStep() const {
  return *std::min_element(steps_.begin(), steps_.end());
}

void PsClient::pull(int64_t clock, float* params) {
  out_ = Outstanding{true, false, false, clock, nullptr, 0, std::vector<char>(ranges_.size(), 0)};
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    if (isDown(s))
      out_.got[s] = 1;
    else
      sendPull(s);
  }
  awaitWeights(clock, params);
}

void PsClient::push(int64_t clock, const float* grads, bool pullAfter, double loss) {
  if (stateless_) pollHello();
  out_ = Outstanding{pullAfter, true, pullAfter, clock, grads, loss,
                     std::vector<char>(ranges_.size(), 0)};
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    if (isDown(s)) {
      bufferGrad(s, grads);
      out_.got[s] = 1;
    } else {
      sendPush(s);
    }
  }
}

void PsClient::setStateless(float* params, int64_t limit, bool stalenessWeights) {
  stateless_ = true;
  params_ = params;
  limit_ = limit;
  weighted_ = stalenessWeights;
  down_.assign(ranges_.size(), 0);
  count_.assign(ranges_.size(), 0);
  copyVersion_.assign(ranges_.size(), 0);
  pendingLabel_.assign(ranges_.size(), -1);
  backlog_.assign(ranges_.size(), {});
  lastSent_.assign(ranges_.size(), 0);
  handed_.assign(ranges_.size(), Handed{});
}

bool PsClient::anyDown() const {
  return std::find(down_.begin(), down_.end(), 1) != down_.end();
}

void PsClient::bufferGrad(int s, const float* grads) {
  if (count_[s] >= limit_) {
    ++overflow_;
    if (overflow_ == 1 || overflow_ % 100 == 0)
      log::warn("client ", client_, ": the buffer of shard ", s, " is full (--stateless-buffer ",
                limit_, "); ", overflow_, " update(s) dropped so far");
    return;
  }
  const int64_t n = ranges_[s].size();
  const float wgt = weighted_ ? 1.0f / static_cast<float>(1 + count_[s]) : 1.0f;
  float* sum = backlog_[s].data() + n;
  const float* g = grads + ranges_[s].lo;
  for (int64_t k = 0; k < n; ++k) sum[k] += wgt * g[k];
  ++count_[s];
}

void PsClient::localStep(float* params, float lr) {
  if (!stateless_ || !out_.grads) return;
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    if (!down_[s]) continue;
    const float* g = out_.grads + ranges_[s].lo;
    float* w = params + ranges_[s].lo;
    const int64_t n = ranges_[s].size();
    for (int64_t k = 0; k < n; ++k) w[k] -= lr * g[k];
  }
}

void PsClient::pollHello() {
  Header h;
  int src = -1;
  pollHandOvers();
  while (t_.poll(MsgType::kHello, &h, &src)) answerHello(h, src, false);
}

void PsClient::pollHandOvers() {
  Header h;
  int src = -1;
  while (t_.poll(MsgType::kHandOver, &h, &src)) {
    const int s = h.shard;
    if (h.magic != transport::kMagic || s < 0 || s >= static_cast<int>(handed_.size()) ||
        h.client != client_ || !handed_[s].open || src != handed_[s].rank)
      continue;  // not about this client's open hand-over (a stale or malformed one)
    confirmHandOver(s);
  }
}

// Sends shard h.shard's backlog to its new server (when the hello is from it). last: the client
// is done, the backlog says so.
bool PsClient::answerHello(const Header& h, int src, bool last) {
  const int s = h.shard;
  if (s < 0 || s >= static_cast<int>(ranges_.size()) || src != dir_.rank[s] || !down_[s])
    return false;  // from a server that has died or moved on since
  Header b = header(MsgType::kBacklog, s, pendingLabel_[s]);
  b.version = copyVersion_[s];
  b.value = static_cast<double>(count_[s]);
  b.flags = last ? transport::kLast : 0;
  b.bytes = static_cast<int64_t>(backlog_[s].size() * sizeof(float));
  try {
    t_.waitSend(t_.send(src, b, backlog_[s].data()), timeoutS_);
  } catch (const transport::ViewChanged&) {
    refreshNow();  // the new server died too: keep the backlog for the next one
    return false;
  }
  const int64_t handed = count_[s] + (pendingLabel_[s] >= 0 ? 1 : 0);
  log::warn("client ", client_, ": shard ", s, " is back on rank ", src, "; sent ", handed,
            " buffered update(s)", last ? " (and done)" : "");
  if (last) {  // no pull follows: counted as delivered now
    buffered_ += handed;
    if (s == 0) acked0_ += handed;
    backlog_[s].clear();
  } else {
    handed_[s] = Handed{true, std::move(backlog_[s]), count_[s], pendingLabel_[s], copyVersion_[s], src};
    backlog_[s] = {};
  }
  down_[s] = 0;
  count_[s] = 0;
  pendingLabel_[s] = -1;
  lastSent_[s] = last ? 1 : 0;
  return true;
}

// The new server answered a pull, so it has applied every client's backlog: this client's
// hand-over counts as delivered.
void PsClient::confirmHandOver(int s) {
  if (handed_.empty() || !handed_[s].open) return;
  const int64_t n = handed_[s].count + (handed_[s].label >= 0 ? 1 : 0);
  buffered_ += n;
  if (s == 0) acked0_ += n;
  handed_[s] = Handed{};
}

void PsClient::awaitWeights(int64_t clock, float* params) {
  // A pull after a push answers clock + 1 of the push; the outstanding record says which
  // shards still owe their reply (re-sent to a new rank when a shard moves).
  std::vector<char>& got = out_.got;
  // (recounted each time: a shard that goes down meanwhile owes nothing any more)
  while (std::count(got.begin(), got.end(), 1) < static_cast<std::ptrdiff_t>(ranges_.size())) {
    Header h;
    int src = -1;
    try {
      t_.waitHeader(MsgType::kPullReply, &h, &src, timeoutS_,
                    detail::concat("the weights of clock ", clock));
    } catch (const transport::ViewChanged&) {
      refreshNow();
      continue;
    }
    takeReply(h, src, clock, params);
  }
  out_.active = false;
}

Header PsClient::doneHeader(int s) const {
  Header d = header(MsgType::kDone, s, 0);
  // A stop (a signal) that some shard announced: every shard snapshots.
  if (stop_) d.flags |= transport::kStop;
  return d;
}

bool PsClient::weightsArrived(int64_t clock, float* params) {
  std::vector<char>& got = out_.got;
  Header h;
  int src = -1;
  while (std::count(got.begin(), got.end(), 1) < static_cast<std::ptrdiff_t>(ranges_.size()) &&
         t_.poll(MsgType::kPullReply, &h, &src))
    takeReply(h, src, clock, params);
  return std::count(got.begin(), got.end(), 1) == static_cast<std::ptrdiff_t>(ranges_.size());
}

void PsClient::takeReply(const Header& h, int src, int64_t clock, float* params) {
  std::vector<char>& got = out_.got;
  const int s = h.shard;
  const bool ok = h.magic == transport::kMagic && s >= 0 && s < static_cast<int>(ranges_.size()) &&
                  src == dir_.rank[s] && h.epoch >= dir_.since[s] && h.client == client_ &&
                  h.clock == clock && !got[s] && h.offset == ranges_[s].lo &&
                  h.bytes == ranges_[s].size() * static_cast<int64_t>(sizeof(float));
  if (!ok) {
    log::error("client ", client_, " rejected a pull reply from rank ", src, " (shard ", s,
               ", clock ", h.clock, ", expected clock ", clock, ")");
    if (h.bytes > 0) t_.discardPayload(src, MsgType::kPullReply, h.bytes, timeoutS_);
    return;
  }
  try {
    t_.recvPayload(src, MsgType::kPullReply, params + ranges_[s].lo, h.bytes, timeoutS_);
  } catch (const transport::ViewChanged&) {
    refreshNow();  // the server died between header and payload: the shard was re-asked
    return;
  }
  bytesReceived_ += static_cast<double>(h.bytes);
  confirmHandOver(s);
  versions_[s] = h.version;
  steps_[s] = static_cast<int64_t>(h.value);
  if (s == 0 && h.aux > 0) medianMicros_ = h.aux;
  if (h.flags & transport::kStop) stop_ = true;
  got[s] = 1;
  // (a Sync-opt push that came too late was dropped: the reply says so, it is not acknowledged)
  if (s == 0 && out_.isPush) ++((h.flags & transport::kDropped) ? dropped0_ : acked0_);
}

void PsClient::waitPushes() {
  for (;;) {
    try {
      for (transport::SendId id : pending_) t_.waitSend(id, timeoutS_);
      pending_.clear();
      return;
    } catch (const transport::ViewChanged&) {
      refreshNow();  // sends to a dead rank are abandoned by the transport: the retry passes
    }
  }
}

void PsClient::done() {
  waitPushes();
  out_.active = false;
  // Stateless: a shard still down gets this client's backlog first (every buffered update is
  // applied), with the "done" riding on it.
  while (stateless_ && anyDown()) {
    Header h;
    int src = -1;
    try {
      t_.waitHeader(MsgType::kHello, &h, &src, timeoutS_,
                    "the replacement server's hello (to hand over the buffered updates)");
    } catch (const transport::ViewChanged&) {
      refreshNow();
      continue;
    }
    answerHello(h, src, true);
  }
  doneSent_ = true;
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s)
    if (dir_.rank[s] >= 0 && (lastSent_.empty() || !lastSent_[s])) {
      pending_.push_back(t_.send(dir_.rank[s], doneHeader(s), nullptr));
    }
  waitPushes();
}

}  // namespace phx::ps
