#include "runtime/ps/job_spec.h"

#include <chrono>
#include <cstring>
#include <utility>
#include <limits>

#include "runtime/core/error.h"

namespace phx::ps {

using transport::Header;
using transport::MsgType;

namespace {
// Far above any model this runtime trains (16 G floats = 64 GiB per copy): a larger count is
// a corrupt message, not a model.
constexpr int64_t kMaxParams = int64_t{1} << 34;
}  // namespace

std::vector<unsigned char> JobSpec::serialize() const {
  std::vector<unsigned char> b(2 * sizeof(int64_t) + init.size() * sizeof(float));
  std::memcpy(b.data(), &params, sizeof params);
  std::memcpy(b.data() + sizeof params, &totalSteps, sizeof totalSteps);
  if (!init.empty()) std::memcpy(b.data() + 2 * sizeof(int64_t), init.data(), init.size() * sizeof(float));
  return b;
}

JobSpec JobSpec::parse(const unsigned char* p, size_t n) {
  JobSpec s;
  if (n < 2 * sizeof(int64_t)) PHX_USER_ERROR("job setup of ", n, " bytes is too short (a truncated message)");
  std::memcpy(&s.params, p, sizeof s.params);
  std::memcpy(&s.totalSteps, p + sizeof s.params, sizeof s.totalSteps);
  if (s.params <= 0 || s.params > kMaxParams || s.totalSteps <= 0 ||
      n != 2 * sizeof(int64_t) + static_cast<size_t>(s.params) * sizeof(float))
    PHX_USER_ERROR("job setup is malformed: ", s.params, " parameters, ", s.totalSteps, " steps in ",
                   n, " bytes");
  s.init.resize(static_cast<size_t>(s.params));
  std::memcpy(s.init.data(), p + 2 * sizeof(int64_t), s.init.size() * sizeof(float));
  return s;
}

void sendSpec(transport::Transport& t, const RoleLayout& layout, const JobSpec& spec, double timeoutS,
              const std::function<bool(int)>& alive) {
  PHX_ENFORCE(spec.valid(), "sendSpec: an invalid job spec");
  std::vector<std::pair<int, transport::SendId>> pending;
  for (int r = 0; r < layout.firstWorkerRank(); ++r) {
    if (alive && !alive(r)) continue;
    Header h;
    h.type = MsgType::kSetup;
    h.offset = spec.params;
    h.clock = spec.totalSteps;
    h.bytes = spec.params * static_cast<int64_t>(sizeof(float));
    pending.emplace_back(r, t.send(r, h, spec.init.data()));
  }
  // Polled rather than waitSend: a view change (a rank died at start) must not end the wait.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutS);
  transport::Backoff b;
  while (!pending.empty()) {
    for (size_t i = 0; i < pending.size();) {
      const int r = pending[i].first;
      const bool dead = alive && !alive(r);
      if (dead) t.markDead(r);  // cancels its send
      if (dead || t.sendDone(pending[i].second)) {
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    if (pending.empty()) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw transport::PeerFailure({pending[0].first}, 0,
                                   detail::concat("rank ", t.rank(), " could not send the job's setup to rank ",
                                                  pending[0].first, " within ", timeoutS,
                                                  " s; that rank may have died or hung"));
    b.pause();
  }
}

JobSpec receiveSpec(transport::Transport& t, const RoleLayout& layout, double timeoutS) {
  Header h;
  int src = -1;
  t.waitHeader(MsgType::kSetup, &h, &src, timeoutS, "the job's setup (parameter count, initial weights)");
  if (h.magic != transport::kMagic || src != layout.chiefRank() || h.offset <= 0 ||
      h.offset > kMaxParams || h.clock <= 0 || h.bytes != h.offset * static_cast<int64_t>(sizeof(float))) {
    if (h.bytes > 0 && h.bytes <= kMaxParams * static_cast<int64_t>(sizeof(float)))
      t.discardPayload(src, MsgType::kSetup, static_cast<size_t>(h.bytes), timeoutS);
    PHX_USER_ERROR("a malformed job setup from rank ", src, " (", h.offset, " parameters, ", h.clock,
                   " steps, ", h.bytes, " bytes; the chief is rank ", layout.chiefRank(),
                   "): are all ranks the same Phoenix build?");
  }
  JobSpec s;
  s.params = h.offset;
  s.totalSteps = h.clock;
  s.init.resize(static_cast<size_t>(s.params));
  t.recvPayload(src, MsgType::kSetup, s.init.data(), static_cast<size_t>(h.bytes), timeoutS);
  return s;
}

}  // namespace phx::ps
