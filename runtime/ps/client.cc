#include "runtime/ps/client.h"

#include <algorithm>

#include "runtime/core/log.h"

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
    if (d.rank[s] < 0)
      PHX_USER_ERROR("shard ", s, " is lost: its server died and no spare is left to take over; "
                     "restart the job from the last snapshot with --resume DIR, or give --spares");
    log::info("client ", client_, ": shard ", s, " now served by rank ", d.rank[s], " (epoch ",
              d.epoch, ")");
    moves_.push_back(Move{s, d.epoch, versions_[s]});
    if (doneSent_) {  // finished: the new server must not wait for this client
      pending_.push_back(t_.send(dir_.rank[s], header(MsgType::kDone, s, 0), nullptr));
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
  pending_.push_back(t_.send(dir_.rank[s], header(MsgType::kPull, s, out_.clock), nullptr));
}

void PsClient::sendPush(int s) {
  Header h = header(MsgType::kPush, s, out_.clock);
  h.flags = out_.pullAfter ? transport::kPullAfter : 0;
  h.offset = ranges_[s].lo;
  h.bytes = ranges_[s].size() * static_cast<int64_t>(sizeof(float));
  h.value = out_.loss;
  pending_.push_back(t_.send(dir_.rank[s], h, out_.grads + ranges_[s].lo));
  bytesSent_ += static_cast<double>(h.bytes);
}

int64_t PsClient::minServerStep() const {
  return *std::min_element(steps_.begin(), steps_.end());
}

void PsClient::pull(int64_t clock, float* params) {
  out_ = Outstanding{true, false, false, clock, nullptr, 0, std::vector<char>(ranges_.size(), 0)};
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) sendPull(s);
  awaitWeights(clock, params);
}

void PsClient::push(int64_t clock, const float* grads, bool pullAfter, double loss) {
  out_ = Outstanding{pullAfter, true, pullAfter, clock, grads, loss,
                     std::vector<char>(ranges_.size(), 0)};
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) sendPush(s);
}

void PsClient::awaitWeights(int64_t clock, float* params) {
  // A pull after a push answers clock + 1 of the push; the outstanding record says which
  // shards still owe their reply (re-sent to a new rank when a shard moves).
  std::vector<char>& got = out_.got;
  size_t missing = ranges_.size() - static_cast<size_t>(std::count(got.begin(), got.end(), 1));
  while (missing > 0) {
    Header h;
    int src = -1;
    try {
      t_.waitHeader(MsgType::kPullReply, &h, &src, timeoutS_,
                    detail::concat("the weights of clock ", clock));
    } catch (const transport::ViewChanged&) {
      refreshNow();
      continue;
    }
    const int s = h.shard;
    const bool ok = h.magic == transport::kMagic && s >= 0 &&
                    s < static_cast<int>(ranges_.size()) && src == dir_.rank[s] &&
                    h.epoch >= dir_.since[s] && h.client == client_ && h.clock == clock && !got[s] &&
                    h.offset == ranges_[s].lo &&
                    h.bytes == ranges_[s].size() * static_cast<int64_t>(sizeof(float));
    if (!ok) {
      log::error("client ", client_, " rejected a pull reply from rank ", src, " (shard ", s,
                 ", clock ", h.clock, ", expected clock ", clock, ")");
      if (h.bytes > 0) t_.discardPayload(src, MsgType::kPullReply, h.bytes, timeoutS_);
      continue;
    }
    try {
      t_.recvPayload(src, MsgType::kPullReply, params + ranges_[s].lo, h.bytes, timeoutS_);
    } catch (const transport::ViewChanged&) {
      refreshNow();  // the server died between header and payload: the shard was re-asked
      continue;
    }
    bytesReceived_ += static_cast<double>(h.bytes);
    versions_[s] = h.version;
    steps_[s] = static_cast<int64_t>(h.value);
    got[s] = 1;
    --missing;
  }
  out_.active = false;
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
  doneSent_ = true;
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s)
    if (dir_.rank[s] >= 0)
      pending_.push_back(t_.send(dir_.rank[s], header(MsgType::kDone, s, 0), nullptr));
  waitPushes();
}

}  // namespace phx::ps
