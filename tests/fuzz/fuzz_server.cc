// libFuzzer harness: a parameter server (runtime/ps/server.cc) receiving arbitrary messages
// from a worker's rank: the 64-byte header as the fuzzer writes it (type, shard, client,
// epoch, clock, offset, bytes...) and the rest of the input as its payload, over the in-process
// transport. Each must be applied, answered or rejected (Server::validate), never crash, hang
// or write outside the shard. The server lives across inputs, as a real one does.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "runtime/core/error.h"
#include "runtime/ps/layout.h"
#include "runtime/ps/server.h"
#include "runtime/sync/sync_policy.h"
#include "runtime/transport/inproc/inproc_transport.h"

namespace {
using namespace phx;
struct Bed {
  ps::RoleLayout layout{3, 1, 0, 0, 1};  // server 0, workers 1 and 2
  transport::InprocFabric fabric{3};
  std::vector<std::unique_ptr<transport::InprocTransport>> ts;
  std::unique_ptr<sync::SyncPolicy> policy = sync::makePolicy("asp", 0);
  kernels::CpuBackend backend{1};
  std::unique_ptr<ps::Server> server;
  Bed() {
    for (int r = 0; r < 3; ++r) ts.push_back(std::make_unique<transport::InprocTransport>(fabric, r));
    ps::ServerOptions o;
    o.shard = 0;
    o.range = ps::splitKeys(6, 1)[0];
    o.clients = 2;
    o.sgd = kernels::SgdParams{0.5f, 0.0f, 0.0f, false};
    o.timeoutS = 0.05;
    server = std::make_unique<ps::Server>(*ts[0], layout, o, *policy, backend, std::vector<float>(6, 0.0f));
  }
  void drain() {  // what the server sent to the workers, dropped
    transport::Header h;
    int src = -1;
    for (int w = 1; w < 3; ++w)
      for (auto t : {transport::MsgType::kPullReply, transport::MsgType::kFinal, transport::MsgType::kEvent})
        while (ts[w]->poll(t, &h, &src))
          if (h.bytes > 0) ts[w]->discardPayload(src, t, static_cast<size_t>(h.bytes), 0.05);
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Bed bed;
  if (size < sizeof(transport::Header)) return 0;
  transport::Header h;
  std::memcpy(&h, data, sizeof h);
  if (data[0] & 1) h.magic = transport::kMagic;  // half the inputs get past the magic check
  // a message type is the MPI tag it travels under: one outside the protocol never arrives
  h.type = static_cast<transport::MsgType>(1 + static_cast<uint16_t>(h.type) % (transport::kNumMsgTypes - 1));
  const size_t rest = size - sizeof h;
  // the transport carries exactly h.bytes of payload: the fuzzer's bytes, cut or padded
  std::vector<unsigned char> payload;
  if (h.bytes > 0) {
    if (h.bytes > (1 << 16)) h.bytes = static_cast<int64_t>(rest);
    payload.assign(data + sizeof h, data + size);
    payload.resize(static_cast<size_t>(h.bytes));
  }
  const int from = 1 + (data[1] & 1);
  try {
    bed.ts[from]->send(0, h, payload.empty() ? nullptr : payload.data());
    bed.server->step();
  } catch (const UserError&) {
  } catch (const transport::PeerFailure&) {
  }
  bed.drain();
  if (bed.server->weights().size() != 6) __builtin_trap();
  return 0;
}
