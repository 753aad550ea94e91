// In-process transport: N ranks as threads of one process sharing an InprocFabric. Used by the
// unit tests to pin down the protocol and the sync rules without MPI. Sends copy the payload
// into the receiver's queue and complete at once; per (sender, type) order is kept as in MPI.
// A test can also inject raw headers (malformed messages) through the fabric.
#pragma once

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/transport/transport.h"

namespace phx::transport {

class InprocFabric {
 public:
  explicit InprocFabric(int ranks);
  int size() const { return static_cast<int>(boxes_.size()); }

  struct Item {
    int src;
    Header h;
    std::vector<unsigned char> payload;
  };
  void deliver(int dst, Item item);
  // Takes the oldest header of `type` for dst (any source); its payload moves to the
  // per-source payload queue.
  bool take(int dst, MsgType type, Header* h, int* src);
  bool takePayload(int dst, int src, MsgType type, void* out, size_t bytes);

 private:
  struct Box {
    std::mutex mu;
    std::deque<Item> headers[kNumMsgTypes];
    // payloads of taken headers, per (source, type), in order
    std::vector<std::deque<std::vector<unsigned char>>> payloads;
  };
  std::vector<std::unique_ptr<Box>> boxes_;
};

class InprocTransport final : public Transport {
 public:
  InprocTransport(InprocFabric& fabric, int rank) : fabric_(fabric), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return fabric_.size(); }
  SendId send(int dst, const Header& h, const void* payload) override;
  bool sendDone(SendId) override { return true; }
  bool poll(MsgType type, Header* h, int* src) override;
  void recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) override;
  void markDead(int rank) override;

 private:
  std::vector<char> dead_;
  InprocFabric& fabric_;
  int rank_;
  SendId next_ = 0;
};

}  // namespace phx::transport
