// The message layer every Phoenix role talks through. A message is a fixed 64-byte Header,
// optionally followed by a payload sent straight from the caller's buffer and received straight
// into the caller's buffer (no staging copies). Messages of one type between two ranks arrive in
// the order they were sent. Two implementations: mpi/ (point-to-point only, never a collective,
// so that a dead rank cannot hang anyone) and inproc/ (ranks as threads, for unit tests).
// Nothing here blocks without a deadline: a wait that outlives it throws PeerFailure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/core/error.h"

namespace phx::transport {

inline constexpr uint32_t kMagic = 0x50484e58;  // "PHNX"

enum class MsgType : uint16_t {
  kPush = 1,          // worker -> server: gradient slice for (clock)
  kPull = 2,          // worker -> server: weights wanted once (clock) is allowed
  kPullReply = 3,     // server -> worker: weights slice at (version)
  kDone = 4,          // worker -> server: no more pushes from this worker
  kStats = 5,         // any -> chief worker: end-of-run counters (payload: doubles)
  kGroupGrad = 6,     // group member -> leader: gradient to reduce
  kGroupWeights = 7,  // leader -> group member: weights after the pull
  kFinal = 8,         // server -> chief worker: final weights slice after every worker is done
  // Failure detection and recovery (recovery/): on the detector's own communicator ...
  kHeartbeat = 9,     // any -> coordinator, coordinator -> all: "alive at epoch e"
  kView = 10,         // coordinator -> all: the new membership view (payload: serialized View)
  kLeave = 11,        // any -> all: finished normally, stop watching me (not a failure)
  kDying = 12,        // injected kill: "I SIGKILL myself now" (value: wall time of the kill)
  // ... and on the training communicator:
  kEvent = 13,        // new server -> chief: recovery event (payload: doubles)
  // Chain replication and stateless servers (recovery/, docs/recovery.md):
  kReplicate = 14,    // chain member -> successor: an applied update or the full shard state
  kChainAck = 15,     // chain tail -> head: every update up to (version) is applied at the tail
  kHello = 16,        // stateless replacement -> client: send your weights copy and backlog
  kBacklog = 17,      // client -> stateless replacement: last pulled weights + buffered updates
  // EPSP / FlexRR task transfer between workers (header only, docs/architecture.md):
  kSteal = 18,        // pioneer -> worker: "give me shards" (clock: the pioneer's, value: its rate,
                      // kEarly + aux: still busy for aux microseconds)
  kGrant = 19,        // worker -> pioneer: shards [offset, version) of step clock (none: empty);
                      // value: its seconds of work left, aux: own shards it still holds back for others
  kFinished = 20,     // worker -> workers: no more steal requests from me; answer none from now
  // Worker groups of GPU workers (--group-reduce, docs/architecture.md "Worker groups"):
  kGroupSetup = 21,   // member -> leader: its GPU's identity (payload, text); leader -> member:
                      // value 1 = reduce over NCCL (payload: the NCCL id), 0 = over MPI, -1 = refused
  kHandOver = 22,     // stateless replacement -> client (header only): the backlog it handed over
                      // is applied (sent before any pull reply that holds it)
};
inline constexpr int kNumMsgTypes = 23;
const char* msgTypeName(MsgType t);

enum HeaderFlags : uint16_t {
  kPullAfter = 1,  // on a push: also a pull request for clock + 1
  kFullState = 2,  // on a replicate: the payload is the whole state, not one update
  kNoMomentum = 4, // on a replicate: the update was a plain SGD step (a stateless backlog)
  kLast = 8,       // on a backlog: the client is done after it (no separate done message)
  kStop = 16,      // on a pull reply / group weights: the job was asked to stop (a signal): the
                   // worker ends after this step and the servers write a snapshot; on a push
                   // or a group gradient: its sender was signalled to stop
  kDropped = 32,   // on a pull reply: the push of that step came after its round closed
                   // (Sync-opt's backup workers) and was dropped, not applied
  kEarly = 64,     // on a steal request: the requester still has own shards (aux: the
                   // microseconds they take); without it, it has none left this step
};

// Trivially copyable, sent as 64 raw bytes; both ends are the same binary.
struct Header {
  uint32_t magic = kMagic;
  MsgType type = MsgType::kPush;
  uint16_t flags = 0;
  int32_t shard = -1;   // parameter shard the message is about (-1: none)
  int32_t client = -1;  // logical worker/client index of the sender or addressee
  int32_t epoch = 0;    // recovery epoch (bumped on every communicator rebuild)
  // Straggler projection: on a push, the worker's step compute time (microseconds, EMA); on a
  // pull reply, the median of those over the shard's active clients (0: not known yet).
  int32_t aux = 0;
  int64_t clock = 0;    // the worker's iteration
  int64_t version = 0;  // shard version (updates applied) the payload is at / based on
  int64_t offset = 0;   // first key of the payload in the flat parameter vector
  int64_t bytes = 0;    // payload size in bytes (0: no payload)
  double value = 0;     // one scalar riding along (e.g. the worker's loss)
};
static_assert(sizeof(Header) == 64, "Header must stay 64 bytes");

// A peer did not answer within the deadline (dead, frozen, or the job is wedged).
class PeerFailure : public std::runtime_error {
 public:
  PeerFailure(std::vector<int> ranks, int epoch, const std::string& what)
      : std::runtime_error(what), ranks_(std::move(ranks)), epoch_(epoch) {}
  const std::vector<int>& ranks() const { return ranks_; }
  int epoch() const { return epoch_; }

 private:
  std::vector<int> ranks_;
  int epoch_;
};

// The others declared this rank failed (it was frozen too long): it must leave on its own,
// without taking the job down.
class Excluded : public PeerFailure {
 public:
  using PeerFailure::PeerFailure;
};

// The membership changed (a rank failed and the survivors installed a new view) while this rank
// was waiting: the caller re-reads the view, re-targets and resumes.
class ViewChanged : public std::runtime_error {
 public:
  explicit ViewChanged(int epoch)
      : std::runtime_error("membership view changed"), epoch_(epoch) {}
  int epoch() const { return epoch_; }

 private:
  int epoch_;
};

using SendId = int64_t;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Starts sending h (h.bytes set by the caller) and then the payload, without blocking. The
  // payload must stay valid and unchanged until sendDone(id) is true or waitSend(id) returns.
  virtual SendId send(int dst, const Header& h, const void* payload) = 0;
  virtual bool sendDone(SendId id) = 0;
  // The destination rank of a send still in flight (-1 when it is complete or unknown).
  virtual int destinationOf(SendId id) const { return -1; }
  // Waits for a send to complete (or throws PeerFailure after timeoutS).
  void waitSend(SendId id, double timeoutS);

  // Non-blocking: when a header of this type is waiting (from any rank), takes it and returns
  // true. Its payload (h->bytes) must be taken next with recvPayload or discardPayload before
  // another header of this type from the same rank.
  virtual bool poll(MsgType type, Header* h, int* src) = 0;
  // Receives the payload of the header last polled of this type from src into dst, waiting up
  // to timeoutS. bytes must equal the header's.
  virtual void recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) = 0;
  void discardPayload(int src, MsgType type, size_t bytes, double timeoutS);

  // Waits for a header of this type, sleeping between polls (never spinning); throws
  // PeerFailure naming `waitingFor` after timeoutS.
  void waitHeader(MsgType type, Header* h, int* src, double timeoutS, const std::string& what);

  // Failure handling. The interrupt hook is called inside every wait loop with the peer waited
  // on (-1: any peer); it may throw ViewChanged to end the wait (recovery installs it).
  void setInterrupt(std::function<void(int peer)> hook) { interrupt_ = std::move(hook); }
  void checkInterrupt(int peer) {
    if (interrupt_) interrupt_(peer);
    if (service_ && !inService_) {
      inService_ = true;
      try {
        service_();
      } catch (...) {
        inService_ = false;
        throw;
      }
      inService_ = false;
    }
  }
  // Work a rank must keep doing while it waits for anything (EPSP workers answer steal
  // requests); called from every wait loop, never re-entered. It must not wait itself.
  void setService(std::function<void()> service) { service_ = std::move(service); }
  // A rank declared dead: headers from it are dropped unread and sends to it are abandoned
  // (a large send to a dead rank would never complete).
  virtual void markDead(int rank) {}
  // A rank alive in a newly installed view: if a replacement process was started under that
  // number, messages to and from it take its new route from now on (mpi/; no-op elsewhere).
  virtual void revive(int rank) {}
  // Ranks the communication library itself reported failed since the last call (ULFM's
  // MPIX_ERR_PROC_FAILED; never, with MPIs that do not report failures). The failure
  // detector declares them without waiting for the heartbeat timeout.
  virtual std::vector<int> reportedFailures() { return {}; }

 private:
  std::function<void(int)> interrupt_;
  std::function<void()> service_;
  bool inService_ = false;
};

// Poll loop pacing shared by every wait: a few immediate retries, then sleeps growing from
// 20 us to 500 us. An idle rank stays at a few percent of a core (shared/infra-notes.md),
// while a message that arrives while the rank is busy is seen within half a millisecond.
class Backoff {
 public:
  void pause();
  void reset() { n_ = 0; }

 private:
  int n_ = 0;
};

}  // namespace phx::transport
