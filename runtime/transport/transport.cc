#include "runtime/transport/transport.h"

#include <chrono>
#include <thread>

namespace phx::transport {

const char* msgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kPush: return "push";
    case MsgType::kPull: return "pull";
    case MsgType::kPullReply: return "pull-reply";
    case MsgType::kDone: return "done";
    case MsgType::kStats: return "stats";
    case MsgType::kGroupGrad: return "group-gradient";
    case MsgType::kGroupWeights: return "group-weights";
    case MsgType::kFinal: return "final-weights";
    case MsgType::kHeartbeat: return "heartbeat";
    case MsgType::kView: return "view";
    case MsgType::kLeave: return "leave";
    case MsgType::kDying: return "dying";
    case MsgType::kEvent: return "event";
    case MsgType::kReplicate: return "replicate";
    case MsgType::kChainAck: return "chain-ack";
    case MsgType::kHello: return "hello";
    case MsgType::kBacklog: return "backlog";
    case MsgType::kSteal: return "steal";
    case MsgType::kGrant: return "grant";
    case MsgType::kFinished: return "finished";
    case MsgType::kGroupSetup: return "group-setup";
    case MsgType::kHandOver: return "hand-over";
  }
  return "unknown";
}

void Backoff::pause() {
  ++n_;
  if (n_ <= 3) {
    std::this_thread::yield();
    return;
  }
  const int us = n_ < 8 ? 20 : n_ < 16 ? 100 : n_ < 32 ? 250 : 500;
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

namespace {
using Clock = std::chrono::steady_clock;
}

void Transport::waitSend(SendId id, double timeoutS) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeoutS);
  Backoff b;
  const int dst = destinationOf(id);
  while (!sendDone(id)) {
    checkInterrupt(dst < 0 ? -2 : dst);
    if (Clock::now() > deadline)
      throw PeerFailure({}, 0,
                        detail::concat("a send from rank ", rank(), " did not complete within ",
                                       timeoutS, " s; the receiving rank may have died"));
    b.pause();
  }
}

void Transport::discardPayload(int src, MsgType type, size_t bytes, double timeoutS) {
  if (bytes == 0) return;
  std::vector<unsigned char> sink(bytes);
  recvPayload(src, type, sink.data(), bytes, timeoutS);
}

void Transport::waitHeader(MsgType type, Header* h, int* src, double timeoutS,
                           const std::string& what) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeoutS);
  Backoff b;
  while (!poll(type, h, src)) {
    checkInterrupt(-1);
    if (Clock::now() > deadline)
      throw PeerFailure({}, 0,
                        detail::concat("rank ", rank(), " waited ", timeoutS, " s for ", what,
                                       " (", msgTypeName(type),
                                       ") in vain; the rank that owes it may have died or hung"));
    b.pause();
  }
}

}  // namespace phx::transport
