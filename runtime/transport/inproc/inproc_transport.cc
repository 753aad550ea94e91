#include "runtime/transport/inproc/inproc_transport.h"

#include <chrono>
#include <cstring>

namespace phx::transport {

InprocFabric::InprocFabric(int ranks) {
  PHX_ENFORCE(ranks > 0, "an in-process fabric needs ranks");
  for (int r = 0; r < ranks; ++r) {
    boxes_.push_back(std::make_unique<Box>());
    boxes_.back()->payloads.resize(static_cast<size_t>(ranks) * kNumMsgTypes);
  }
}

void InprocFabric::deliver(int dst, Item item) {
  PHX_ENFORCE(dst >= 0 && dst < size(), "send to rank ", dst, " of ", size());
  const int t = static_cast<int>(item.h.type);
  PHX_ENFORCE(t > 0 && t < kNumMsgTypes, "bad message type ", t);
  Box& b = *boxes_[dst];
  std::lock_guard<std::mutex> lock(b.mu);
  b.headers[t].push_back(std::move(item));
}

bool InprocFabric::take(int dst, MsgType type, Header* h, int* src) {
  Box& b = *boxes_[dst];
  const int t = static_cast<int>(type);
  std::lock_guard<std::mutex> lock(b.mu);
  auto& q = b.headers[t];
  if (q.empty()) return false;
  Item it = std::move(q.front());
  q.pop_front();
  *h = it.h;
  *src = it.src;
  if (!it.payload.empty())
    b.payloads[static_cast<size_t>(it.src) * kNumMsgTypes + t].push_back(std::move(it.payload));
  return true;
}

bool InprocFabric::takePayload(int dst, int src, MsgType type, void* out, size_t bytes) {
  Box& b = *boxes_[dst];
  std::lock_guard<std::mutex> lock(b.mu);
  auto& q = b.payloads[static_cast<size_t>(src) * kNumMsgTypes + static_cast<int>(type)];
  if (q.empty()) return false;
  PHX_ENFORCE(q.front().size() == bytes, "payload of ", q.front().size(), " bytes, expected ",
              bytes);
  std::memcpy(out, q.front().data(), bytes);
  q.pop_front();
  return true;
}

SendId InprocTransport::send(int dst, const Header& h, const void* payload) {
  if (!dead_.empty() && dead_[dst]) return next_++;
  InprocFabric::Item it{rank_, h, {}};
  if (h.bytes > 0) {
    const auto* p = static_cast<const unsigned char*>(payload);
    it.payload.assign(p, p + h.bytes);
  }
  fabric_.deliver(dst, std::move(it));
  return next_++;
}

bool InprocTransport::poll(MsgType type, Header* h, int* src) {
  if (!fabric_.take(rank_, type, h, src)) return false;
  if (dead_.empty() || !dead_[*src]) return true;
  if (h->bytes > 0) {  // drop it with its payload (which travels with the header here)
    std::vector<unsigned char> junk(static_cast<size_t>(h->bytes));
    fabric_.takePayload(rank_, *src, type, junk.data(), junk.size());
  }
  return false;
}

void InprocTransport::markDead(int rank) {
  if (dead_.empty()) dead_.assign(size(), 0);
  dead_[rank] = 1;
}

void InprocTransport::recvPayload(int src, MsgType type, void* dst, size_t bytes,
                                  double timeoutS) {
  if (bytes == 0) return;
  // The payload travels with its header here, so it is always present once the header was
  // taken; a miss is a protocol bug.
  PHX_ENFORCE(fabric_.takePayload(rank_, src, type, dst, bytes), "no ", msgTypeName(type),
              " payload from rank ", src, " at rank ", rank_);
  (void)timeoutS;
}

}  // namespace phx::transport
