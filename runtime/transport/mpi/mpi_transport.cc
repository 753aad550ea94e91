#include "runtime/transport/mpi/mpi_transport.h"

#include "runtime/transport/mpi/join.h"
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
// Cancels and frees a send's requests (to a dead peer: they would never complete).
void abandon(MPI_Request (&req)[2]) {
  for (MPI_Request& r : req)
    if (r != MPI_REQUEST_NULL) {
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
}
}  // namespace

void mpiFail(const char* call, int rc, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  char host[256] = "?";
  gethostname(host, sizeof host);
  int rank = -1, init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Comm_rank(jobComm(), &rank);
  detail::throwLibrary("MPI", file, line,
                       detail::concat(call, " failed on ", host, " rank ", rank, ": ", msg));
}

namespace {
int rankIn(MPI_Comm comm) {
  int r = 0;
  PHX_MPI_CHECK(MPI_Comm_rank(comm, &r));
  return r;
}
std::vector<int> identityOf(MPI_Comm comm) {
  int n = 0;
  PHX_MPI_CHECK(MPI_Comm_size(comm, &n));
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}
}  // namespace

MpiTransport::MpiTransport(MPI_Comm comm) : MpiTransport(comm, rankIn(comm), identityOf(comm)) {}

MpiTransport::MpiTransport(MPI_Comm comm, int logicalRank, const std::vector<int>& logicalOf) {
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  rank_ = logicalRank;
  size_ = 0;
  for (int l : logicalOf) size_ = std::max(size_, l + 1);
  links_.push_back(Link{comm, logicalOf});
  peerLink_.assign(size_, 0);
  peerRank_.assign(size_, -1);
  for (int c = 0; c < static_cast<int>(logicalOf.size()); ++c)
    if (logicalOf[c] >= 0) peerRank_[logicalOf[c]] = c;
  dead_.assign(size_, 0);
  told_.assign(size_, 0);
  for (int q = 0; q < size_; ++q)
    if (peerRank_[q] < 0) dead_[q] = 1;  // not reachable from here (yet)
}

int MpiTransport::linkOf(MPI_Comm comm, const std::vector<int>& logicalOf) {
  for (int i = 0; i < static_cast<int>(links_.size()); ++i)
    if (links_[i].comm == comm) return i;
  PHX_MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  links_.push_back(Link{comm, logicalOf});
  return static_cast<int>(links_.size()) - 1;
}

void MpiTransport::stageRoute(int logical, MPI_Comm comm, int rankThere,
                              const std::vector<int>& logicalOf) {
  std::lock_guard<std::mutex> lock(stagedMu_);
  staged_.push_back(Staged{logical, comm, rankThere, logicalOf});
}

void MpiTransport::revive(int rank) {
  std::vector<Staged> mine;
  {
    std::lock_guard<std::mutex> lock(stagedMu_);
    for (auto it = staged_.begin(); it != staged_.end();) {
      if (it->logical == rank) {
        mine.push_back(std::move(*it));
        it = staged_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const Staged& st : mine) {
    peerLink_[rank] = linkOf(st.comm, st.logicalOf);
    peerRank_[rank] = st.rankThere;
    dead_[rank] = 0;  // a new process under the dead one's number
    told_[rank] = 0;
    log::debug("rank ", rank, " is reached over a new communicator (rank ", st.rankThere, " there)");
  }
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
    abandon(it->second->req);
    it = sends_.erase(it);
  }
}

MpiTransport::~MpiTransport() {
  // Sends still pending at teardown go to ranks that stopped listening (or died): cancel them
  // rather than wait, and never throw from here.
  for (auto& [id, s] : sends_) abandon(s->req);
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
  const MPI_Comm comm = links_[peerLink_[dst]].comm;
  const int to = peerRank_[dst];
  // With ULFM a send to a process the library knows has failed fails at once: it goes to
  // nobody, like a send to a rank declared dead (the detector hears of the failure).
  int rc = MPI_Isend(&slot->h, sizeof(Header), MPI_BYTE, to, headerTag(h.type), comm, &slot->req[0]);
  if (rc == MPI_SUCCESS && h.bytes > 0)
    rc = MPI_Isend(payload, static_cast<int>(h.bytes), MPI_BYTE, to, payloadTag(h.type), comm,
                   &slot->req[1]);
  if (rc != MPI_SUCCESS) {
    if (!failedProcess(rc)) mpiFail("MPI_Isend", rc, __FILE__, __LINE__);
    abandon(slot->req);
    return next_++;
  }
  const SendId id = next_++;
  sends_.emplace(id, std::move(slot));
  return id;
}

bool MpiTransport::sendDone(SendId id) {
  auto it = sends_.find(id);
  if (it == sends_.end()) return true;
  int flag = 0;
  MPI_Status st[2];
  const int rc = MPI_Testall(2, it->second->req, &flag, st);
  if (rc != MPI_SUCCESS) {
    // MPI_ERR_IN_STATUS: the per-request errors say why (ULFM: a peer failed)
    bool peerFailed = failedProcess(rc);
    if (rc == MPI_ERR_IN_STATUS)
      for (const MPI_Status& x : st)
        if (x.MPI_ERROR != MPI_SUCCESS && x.MPI_ERROR != MPI_ERR_PENDING && failedProcess(x.MPI_ERROR))
          peerFailed = true;
    if (!peerFailed) mpiFail("MPI_Testall", rc, __FILE__, __LINE__);
    // ULFM: the peer failed; the send went to nobody (as to a rank declared dead).
    abandon(it->second->req);
    flag = 1;
  }
  if (flag) sends_.erase(it);
  return flag != 0;
}

bool MpiTransport::poll(MsgType type, Header* h, int* src) {
  for (int l = 0; l < static_cast<int>(links_.size()); ++l)
    if (pollLink(l, type, h, src)) return true;
  return false;
}

bool MpiTransport::pollLink(int link, MsgType type, Header* h, int* src) {
  const MPI_Comm comm = links_[link].comm;
  int flag = 0;
  MPI_Message msg;
  MPI_Status st;
  const int rc = MPI_Improbe(MPI_ANY_SOURCE, headerTag(type), comm, &flag, &msg, &st);
  if (rc != MPI_SUCCESS) {
    if (failedProcess(rc)) return false;
    mpiFail("MPI_Improbe", rc, __FILE__, __LINE__);
  }
  if (!flag) return false;
  const std::vector<int>& lo = links_[link].logicalOf;
  const int from = st.MPI_SOURCE < static_cast<int>(lo.size()) ? lo[st.MPI_SOURCE] : -1;
  // From a rank declared dead, or from a predecessor of a peer that now lives on another
  // link: drop the header; its payload (if any) stays unread. A recovery report is the
  // exception, and so is a hand-over confirmation: they tell of the past (a takeover that
  // completed, a backlog applied, before that server died too) and are kept when they came over
  // the dead rank's own route.
  const bool sameRoute = from >= 0 && peerLink_[from] == link && peerRank_[from] == st.MPI_SOURCE;
  const bool ofThePast = type == MsgType::kEvent || type == MsgType::kHandOver;
  if (from < 0 || !sameRoute || (dead_[from] && !ofThePast)) {
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
    *src = from;
    return true;
  }
  PHX_MPI_CHECK(MPI_Mrecv(h, sizeof(Header), MPI_BYTE, &msg, MPI_STATUS_IGNORE));
  *src = from;
  return true;
}

void MpiTransport::recvPayload(int src, MsgType type, void* dst, size_t bytes, double timeoutS) {
  if (bytes == 0) return;
  PHX_ENFORCE(bytes <= INT_MAX, "payload of ", bytes, " bytes exceeds one MPI message");
  PHX_ENFORCE(src >= 0 && src < size_, "payload from rank ", src, " of ", size_);
  MPI_Request req = MPI_REQUEST_NULL;
  const int posted = MPI_Irecv(dst, static_cast<int>(bytes), MPI_BYTE, peerRank_[src],
                               payloadTag(type), links_[peerLink_[src]].comm, &req);
  // ULFM: a receive from a failed process fails at once; wait for the view that says so.
  if (posted != MPI_SUCCESS && !failedProcess(posted)) mpiFail("MPI_Irecv", posted, __FILE__, __LINE__);
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeoutS);
  Backoff b;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (req != MPI_REQUEST_NULL) {
      const int rc = MPI_Test(&req, &flag, &st);
      if (rc != MPI_SUCCESS) {
        if (!failedProcess(rc)) mpiFail("MPI_Test", rc, __FILE__, __LINE__);
        flag = 0;
        if (req != MPI_REQUEST_NULL) {  // a failed request is complete: nothing will arrive
          MPI_Request_free(&req);
          req = MPI_REQUEST_NULL;
        }
      }
    }
    auto drop = [&req] {
      if (req == MPI_REQUEST_NULL) return;
      MPI_Cancel(&req);
      MPI_Request_free(&req);
    };
    if (!flag && dead_[src]) {
      drop();
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
      drop();
      throw;
    }
    if (Clock::now() > deadline) {
      drop();
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
  collectFailures();
  return true;
}

void MpiTransport::collectFailures() {
  // The library's failed group of each link, in logical ranks; a rank counts only while its
  // current route is on that link (the dead predecessor of a replacement stays failed there).
  for (int l = 0; l < static_cast<int>(links_.size()); ++l) {
    const std::vector<int>& lo = links_[l].logicalOf;
    for (int c : ulfm::failedRanks(links_[l].comm)) {
      const int q = c < static_cast<int>(lo.size()) ? lo[c] : -1;
      if (q < 0 || peerLink_[q] != l || peerRank_[q] != c) continue;
      if (std::find(reported_.begin(), reported_.end(), q) == reported_.end()) reported_.push_back(q);
    }
  }
}

std::vector<int> MpiTransport::reportedFailures() {
  // Ask the library (ULFM) which processes it knows have failed, even when no operation of
  // ours involved them; each incarnation of a rank is reported once.
  if (ulfm::active()) collectFailures();
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
