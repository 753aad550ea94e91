// The worker side of the push/pull protocol (ps-lite's KVWorker): one client per worker group,
// talking to every server shard. Gradients are sent straight from the model's gradient buffer
// and weights received straight into the model's parameter buffer, slice by slice; the caller
// must not overwrite the gradients before waitPushes() (the next backward pass does).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/ps/layout.h"
#include "runtime/transport/transport.h"

namespace phx::ps {

class PsClient {
 public:
  PsClient(transport::Transport& t, const RoleLayout& layout, std::vector<KeyRange> ranges,
           int client, int epoch, double timeoutS);

  // Asks every shard for the weights of `clock` and waits for all of them (into params).
  void pull(int64_t clock, float* params);
  // Sends this client's gradient of `clock` to every shard; with pullAfter the same message
  // asks for the weights of clock + 1 (collect them with awaitWeights).
  void push(int64_t clock, const float* grads, bool pullAfter, double loss = 0);
  // Waits for every shard's reply for `clock` and writes it into params.
  void awaitWeights(int64_t clock, float* params);
  void waitPushes();
  // Tells every shard this client is finished.
  void done();

  int64_t version(int shard) const { return versions_[shard]; }
  int64_t minVersion() const;
  double bytesSent() const { return bytesSent_; }
  double bytesReceived() const { return bytesReceived_; }

 private:
  transport::Header header(transport::MsgType type, int shard, int64_t clock) const;

  transport::Transport& t_;
  const RoleLayout& layout_;
  std::vector<KeyRange> ranges_;
  int client_, epoch_;
  double timeoutS_;
  std::vector<int64_t> versions_;
  std::vector<transport::SendId> pending_;
  double bytesSent_ = 0, bytesReceived_ = 0;
};

}  // namespace phx::ps
