#include "runtime/ps/client.h"

#include <algorithm>

#include "runtime/core/log.h"

namespace phx::ps {

using transport::Header;
using transport::MsgType;

PsClient::PsClient(transport::Transport& t, const RoleLayout& layout,
                   std::vector<KeyRange> ranges, int client, int epoch, double timeoutS)
    : t_(t), layout_(layout), ranges_(std::move(ranges)), client_(client), epoch_(epoch),
      timeoutS_(timeoutS), versions_(ranges_.size(), -1) {}

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

void PsClient::pull(int64_t clock, float* params) {
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s)
    pending_.push_back(t_.send(layout_.serverRank(s), header(MsgType::kPull, s, clock), nullptr));
  awaitWeights(clock, params);
}

void PsClient::push(int64_t clock, const float* grads, bool pullAfter, double loss) {
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s) {
    Header h = header(MsgType::kPush, s, clock);
    h.flags = pullAfter ? transport::kPullAfter : 0;
    h.offset = ranges_[s].lo;
    h.bytes = ranges_[s].size() * static_cast<int64_t>(sizeof(float));
    h.value = loss;
    pending_.push_back(t_.send(layout_.serverRank(s), h, grads + ranges_[s].lo));
    bytesSent_ += static_cast<double>(h.bytes);
  }
}

void PsClient::awaitWeights(int64_t clock, float* params) {
  std::vector<char> got(ranges_.size(), 0);
  size_t missing = ranges_.size();
  while (missing > 0) {
    Header h;
    int src = -1;
    t_.waitHeader(MsgType::kPullReply, &h, &src, timeoutS_,
                  detail::concat("the weights of clock ", clock));
    const int s = h.shard;
    const bool ok = h.magic == transport::kMagic && s >= 0 &&
                    s < static_cast<int>(ranges_.size()) && src == layout_.serverRank(s) &&
                    h.epoch == epoch_ && h.client == client_ && h.clock == clock && !got[s] &&
                    h.offset == ranges_[s].lo &&
                    h.bytes == ranges_[s].size() * static_cast<int64_t>(sizeof(float));
    if (!ok) {
      log::error("client ", client_, " rejected a pull reply from rank ", src, " (shard ", s,
                 ", clock ", h.clock, ", expected clock ", clock, ")");
      if (h.bytes > 0) t_.discardPayload(src, MsgType::kPullReply, h.bytes, timeoutS_);
      continue;
    }
    t_.recvPayload(src, MsgType::kPullReply, params + ranges_[s].lo, h.bytes, timeoutS_);
    bytesReceived_ += static_cast<double>(h.bytes);
    versions_[s] = h.version;
    got[s] = 1;
    --missing;
  }
}

void PsClient::waitPushes() {
  for (transport::SendId id : pending_) t_.waitSend(id, timeoutS_);
  pending_.clear();
}

void PsClient::done() {
  waitPushes();
  for (int s = 0; s < static_cast<int>(ranges_.size()); ++s)
    pending_.push_back(t_.send(layout_.serverRank(s), header(MsgType::kDone, s, 0), nullptr));
  waitPushes();
}

}  // namespace phx::ps
