#include "runtime/transport/mpi/mpi_transport.h"

#include "runtime/transport/mpi/ulfm.h"

#include <algorithm>

#include <unistd.h>

#include <chrono>
#include <climits>

#include "runtime/core/log.h"

namespace phx::transport {

namespace {
constexpr int kPayloadTagBase = 100;
int headerTag(MsgType t) { return static_cast<int>(t); }
int payloadTag(MsgType t) { return kPayloadTagBase + static_cast<int>(t); }
using Clock = std::chrono::steady_clock;
}  // namespace

void mpiFail(const char* call, int rc, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  char host[256] = "?";
  gethostname(host, sizeof host);
  int rank = -1, init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  detail::throwLibrary("MPI", file, line,
                       detail::concat(call, " failed on ", host, " rank ", rank, ": ", msg));
}

MpiTransport::MpiTransport(MPI_Comm comm) : comm_(comm) {
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  PHX_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  PHX_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  dead_.assign(size_, 0);
  told_.assign(size_, 0);
}

int MpiTransport::destinationOf(SendId id) const {
  auto it = sends_.find(id);
  return it == sends_.end() ? -1 : it->second->dst;
}

void MpiTransport::markDead(int rank) {
  if (rank < 0 || rank >= size_ || dead_[rank]) return;
  dead_[rank] = 1;
  // Abandon what is still going to it: cancel and free (a large message to a dead rank never
  // completes); the buffers stay owned by the callers, who stop waiting on these ids.
  for (auto it = sends_.begin(); it != sends_.end();) {
    if (it->second->dst != rank) {
      ++it;
      continue;
    }
    for (MPI_Request& r : it->second->req)
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    it = sends_.erase(it);
  }
}

MpiTransport::~MpiTransport() {
  // Sends still pending at teardown go to ranks that stopped listening (or died): cancel them
  // rather than wait, and never throw from here.
  for (auto& [id, s] : sends_)
    for (MPI_Request& r : s->req)
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
  if (!sends_.empty()) log::debug("transport closed with ", sends_.size(), " sends pending");
}

SendId MpiTransport::send(int dst, const Header& h, const void* payload) {
  PHX_ENFORCE(dst >= 0 && dst < size_, "send to rank ", dst, " of ", size_);
  PHX_ENFORCE(h.bytes >= 0 && h.bytes <= INT_MAX,
              "payload of ", h.bytes, " bytes exceeds one MPI message (2 GiB); use more servers");
  auto slot = std::make_unique<Slot>();
  slot->h = h;
  slot->dst = dst;
  if (dead_[dst]) {  // never talk to a dead rank: the send "completes" at once, to nobody
    const SendId id = next_++;
    return id;
  }
  PHX_MPI_CHECK(MPI_Isend(&slot->h, sizeof(Header), MPI_BYTE, dst, headerTag(h.type), comm_,
                          &slot->req[0]));
  if (h.bytes > 0)
    PHX_MPI_CHECK(MPI_Isend(payload, static_cast<int>(h.bytes), MPI_BYTE, dst,
                            payloadTag(h.type), comm_, &slot->req[1]));
  const SendId id = next_++;
  sends_.emplace(id, std::move(slot));
  return id;
}

bool MpiTransport::sendDone(SendId id) {
  auto it = sends_.find(id);
  if (it == sends_.end()) return true;
  int flag = 0;
  const int rc = MPI_Testall(2, it->second->req, &flag, MPI_STATUSES_IGNORE);
  if (rc != MPI_SUCCESS && !failedProcess(rc)) mpiFail("MPI_Testall", rc, __FILE__, __LINE__);
  if (flag) sends_.erase(it);
  return flag != 0;
}

bool MpiTransport::poll(MsgType type, Header* h, int* src) {
  int flag = 0;
  MPI_Message msg;
  MPI_Status st;
  const int rc = MPI_Improbe(MPI_ANY_SOURCE, headerTag(type), comm_, &flag, &msg, &st);
  if (rc != MPI_SUCCESS) {
    if (failedProcess(rc)) return false;
    mpiFail("MPI_Improbe", rc, __FILE__, __LINE__);
  }
  if (!flag) return false;
  if (dead_[st.MPI_SOURCE]) {
    // From a rank declared dead: drop the header; its payload (if any) stays unread.
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    std::vector<unsigned char> junk(count > 0 ? count : 1);
    PHX_MPI_CHECK(MPI_Mrecv(junk.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE));
    return false;
  }
  int count = 0;
  PHX_MPI_CHECK(MPI_Get_count(&st, MPI_BYTE, &count));
  if (count != static_cast<int>(sizeof(Header))) {
    // Not one of ours: take it off the queue and report it as a malformed header.
    std::vector<unsigned char> junk(count > 0 ? count : 1);
    PHX_MPI_CHECK(MPI_Mrecv(junk.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE));
    *h = Header{};
    h->magic = 0;
    h->type = type;
    *src = st.MPI_SOURCE;
    return true;
  }
  PHX_MPI_CHECK(MPI_Mrecv(h, sizeof(Header), MPI_BYTE, &msg, MPI_STATUS_IGNORE));
  *src = st.MPI_SOURCE;
  return true;
}

void MpiTransport::recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) {
  if (bytes == 0) return;
  PHX_ENFORCE(bytes <= INT_MAX, "payload of ", bytes, " bytes exceeds one MPI message");
  MPI_Request req;
  PHX_MPI_CHECK(MPI_Irecv(dst, static_cast<int>(bytes), MPI_BYTE, src, payloadTag(type), comm_,
                          &req));
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeoutS);
  Backoff b;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    const int rc = MPI_Test(&req, &flag, &st);
    if (rc != MPI_SUCCESS) {
      if (!failedProcess(rc)) mpiFail("MPI_Test", rc, __FILE__, __LINE__);
      flag = 0;
    }
    if (!flag && dead_[src]) {
      MPI_Cancel(&req);
      MPI_Request_free(&req);
      throw ViewChanged(-1);
    }
    if (flag) {
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      PHX_ENFORCE(static_cast<size_t>(count) == bytes, "payload from rank ", src, " had ", count,
                  " bytes, its header said ", bytes);
      return;
    }
    try {
      checkInterrupt(src);
    } catch (...) {
      MPI_Cancel(&req);
      MPI_Request_free(&req);
      throw;
    }
    if (Clock::now() > deadline) {
      MPI_Cancel(&req);
      MPI_Request_free(&req);
      throw PeerFailure({src}, 0,
                        detail::concat("rank ", rank_, " waited ", timeoutS, " s for the ",
                                       msgTypeName(type), " payload of rank ", src,
                                       " in vain; that rank may have died"));
    }
    b.pause();
  }
}

bool MpiTransport::failedProcess(int rc) {
  if (!ulfm::isProcessFailure(rc)) return false;
  for (int r : ulfm::failedRanks(comm_))
    if (std::find(reported_.begin(), reported_.end(), r) == reported_.end()) reported_.push_back(r);
  return true;
}

std::vector<int> MpiTransport::reportedFailures() {
  // Ask the library (ULFM) which processes it knows have failed, even when no operation of
  // ours involved them; each rank is reported once.
  if (ulfm::kCompiled)
    for (int r : ulfm::failedRanks(comm_))
      if (std::find(reported_.begin(), reported_.end(), r) == reported_.end()) reported_.push_back(r);
  std::vector<int> out;
  for (int r : reported_)
    if (r >= 0 && r < size_ && !told_[r]) {
      told_[r] = 1;
      out.push_back(r);
    }
  reported_.clear();
  return out;
}

}  // namespace phx::transport
