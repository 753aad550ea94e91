// The worker's exchange of one step (runtime/train/worker_loop.h): its group's reduction
// (MPI point-to-point, or NCCL on GPUs: the group-setup agreement), the push and pull of the
// group leader, and the weights shared back with the group; also the initial weights.
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/group_reduce.h"
#include "runtime/core/log.h"
#include "runtime/ps/client.h"
#include "runtime/core/signals.h"
#include "runtime/train/worker_loop.h"

namespace phx::train {

void WorkerLoop::setupGroupReduce() {
  const int members = layout_.groupEnd(group_) - leader_;
  // (--device cpu everywhere: nothing to agree on; auto may differ between nodes)
  if (members < 2 || cfg_.groupReduce == "mpi" || cfg_.device == "cpu") return;
  if (!kernels::ncclBuilt()) {
    if (cfg_.groupReduce == "nccl")
      PHX_USER_ERROR("--group-reduce nccl: this build of Phoenix has no NCCL (configure with "
                     "PHX_WITH_NCCL=ON); use --group-reduce mpi");
    return;  // the same binary everywhere: every member decides the same way
  }
  // Every member tells the leader its GPU ("" = none, e.g. --device auto on a node without
  // one); NCCL needs a GPU per rank, each its own.
  const std::string mine = be_->kind() == kernels::DeviceKind::kCuda ? kernels::gpuIdentity() : "";
  if (!isLeader()) {
    Header h;
    h.type = MsgType::kGroupSetup;
    h.client = w_;
    h.bytes = static_cast<int64_t>(mine.size());
    t_.waitSend(t_.send(layout_.workerRank(leader_), h, mine.empty() ? nullptr : mine.data()),
                cfg_.peerTimeoutS);
    Header r;
    int src = -1;
    waitFor(MsgType::kGroupSetup, &r, &src, "the group's reduction setup");
    if (r.value < 0)
      PHX_USER_ERROR("--group-reduce nccl: the leader of worker group ", group_,
                     " refused NCCL (its error names why); use --group-reduce mpi");
    if (r.value == 0) return;
    PHX_ENFORCE(r.bytes == static_cast<int64_t>(kernels::NcclGroup::kIdBytes), "NCCL id of ", r.bytes, " bytes");
    std::vector<uint8_t> id(static_cast<size_t>(r.bytes));
    t_.recvPayload(src, MsgType::kGroupSetup, id.data(), id.size(), cfg_.peerTimeoutS);
    nccl_ = std::make_unique<kernels::NcclGroup>(id, members, w_ - leader_, cfg_.peerTimeoutS);
    return;
  }
  std::vector<std::string> ids(static_cast<size_t>(members));
  ids[0] = mine;
  for (int i = 1; i < members; ++i) {
    Header h;
    int src = -1;
    waitFor(MsgType::kGroupSetup, &h, &src, "the group members' GPU identities");
    PHX_ENFORCE(h.client > leader_ && h.client < leader_ + members && h.bytes >= 0 && h.bytes < 4096,
                "group setup from worker ", h.client, " of ", h.bytes, " bytes");
    std::string s(static_cast<size_t>(h.bytes), '\0');
    if (h.bytes > 0) t_.recvPayload(src, MsgType::kGroupSetup, s.data(), s.size(), cfg_.peerTimeoutS);
    ids[static_cast<size_t>(h.client - leader_)] = s;
  }
  std::string why;  // why not NCCL
  for (int i = 0; i < members && why.empty(); ++i) {
    if (ids[i].empty()) {
      why = detail::concat("worker ", leader_ + i, " has no usable GPU");
      break;
    }
    for (int j = i + 1; j < members; ++j)
      if (ids[i] == ids[j]) {
        why = detail::concat("workers ", leader_ + i, " and ", leader_ + j, " share GPU ", ids[i],
                             "; NCCL needs one GPU per rank (start one worker per GPU)");
        break;
      }
  }
  const double decision = !why.empty() ? (cfg_.groupReduce == "nccl" ? -1.0 : 0.0) : 1.0;
  const std::vector<uint8_t> id = decision > 0 ? kernels::NcclGroup::newId() : std::vector<uint8_t>{};
  std::vector<transport::SendId> sends;
  for (int m = leader_ + 1; m < leader_ + members; ++m) {
    Header r;
    r.type = MsgType::kGroupSetup;
    r.client = m;
    r.value = decision;
    r.bytes = static_cast<int64_t>(id.size());
    sends.push_back(t_.send(layout_.workerRank(m), r, id.empty() ? nullptr : id.data()));
  }
  for (auto sid : sends) t_.waitSend(sid, cfg_.peerTimeoutS);
  if (decision < 0) PHX_USER_ERROR("--group-reduce nccl: ", why, " -- or use --group-reduce mpi");
  if (decision == 0) {
    if (!mine.empty()) log::info("worker group ", group_, " reduces over MPI: ", why);
    return;
  }
  nccl_ = std::make_unique<kernels::NcclGroup>(id, members, 0, cfg_.peerTimeoutS);
  log::info("worker group ", group_, " (", members, " GPUs) reduces over NCCL");
}

void WorkerLoop::shareWeights(int64_t clock) {
  // NCCL: the members get a header (clock, versions, stop) and the weights by broadcast from
  // the leader's device copy; MPI: the weights ride the message.
  if (nccl_) uploadParams();
  std::vector<transport::SendId> ids;
  for (int m = leader_ + 1; m < layout_.groupEnd(group_); ++m) {
    Header h;
    h.type = MsgType::kGroupWeights;
    h.client = m;
    h.clock = clock;
    h.version = client_.minVersion();
    h.value = static_cast<double>(client_.minServerStep());
    if (client_.stopRequested()) h.flags |= transport::kStop;
    h.bytes = nccl_ ? 0 : static_cast<int64_t>(n_ * sizeof(float));
    ids.push_back(t_.send(layout_.workerRank(m), h, nccl_ ? nullptr : paramBuf()));
  }
  for (auto id : ids) t_.waitSend(id, cfg_.peerTimeoutS);
  if (nccl_) nccl_->broadcast(model_.params(), n_);
  else uploadParams();
}

Header WorkerLoop::receiveWeights(const std::string& what) {
  Header h;
  int src = -1;
  waitFor(MsgType::kGroupWeights, &h, &src, what);
  if (nccl_) {
    PHX_ENFORCE(h.bytes == 0, "group weights of ", h.bytes, " bytes in an NCCL group");
    nccl_->broadcast(model_.params(), n_);
    // the host copy stays current (evaluation after a chief takeover, the final weights)
    if (!hostParams_.empty()) be_->copyToHost(hostParams_.data(), model_.params(), n_ * 4);
  } else {
    t_.recvPayload(src, MsgType::kGroupWeights, paramBuf(), n_ * sizeof(float), cfg_.peerTimeoutS);
    uploadParams();
  }
  return h;
}

void WorkerLoop::initialWeights() {
  setupGroupReduce();
  if (isLeader()) {
    client_.pull(0, paramBuf());
    shareWeights(0);
    if (!cfg_.resumeDir.empty()) startStep_ = client_.minServerStep();
  } else {
    const Header h = receiveWeights("the initial weights");
    if (!cfg_.resumeDir.empty()) startStep_ = static_cast<int64_t>(h.value);
  }
}

void WorkerLoop::exchange(int64_t clock, double loss) {
  const size_t bytes = n_ * sizeof(float);
  const int members = layout_.groupEnd(group_) - leader_;
  // Every member sends the leader a group-gradient: with the gradient (MPI: point-to-point, so a
  // dead member cannot hang a collective) or header only (NCCL: the loss, and proof of life for
  // the leader's view-following wait; the gradients are summed on the GPUs afterwards).
  const size_t payload = nccl_ ? 0 : bytes;
  if (nccl_) be_->synchronize();
  // (EPSP's lanes already summed their gradients into the host buffer)
  else if (!epsp_ && !hostGrads_.empty()) be_->copyToHost(hostGrads_.data(), model_.grads(), bytes);
  transport::SendId sent{};
  if (!isLeader()) {
    Header g;
    g.type = MsgType::kGroupGrad;
    g.client = w_;
    g.clock = clock;
    g.bytes = static_cast<int64_t>(payload);
    g.value = loss;
    if (signals::stopRequested()) g.flags |= transport::kStop;  // a signal to this member
    sent = t_.send(layout_.workerRank(leader_), g, payload ? gradBuf() : nullptr);
  } else {
    for (int i = 1; i < members; ++i) {
      Header h;
      int src = -1;
      waitFor(MsgType::kGroupGrad, &h, &src, detail::concat("group gradients of clock ", clock));
      PHX_ENFORCE(h.clock == clock && h.bytes == static_cast<int64_t>(payload),
                  "group gradient for clock ", h.clock, " of ", h.bytes, " bytes, expected clock ",
                  clock, " of ", payload);
      loss += h.value;
      if (h.flags & transport::kStop) client_.requestStop();  // a member was signalled
      if (!payload) continue;
      t_.recvPayload(src, MsgType::kGroupGrad, recv_.data(), bytes, cfg_.peerTimeoutS);
      // gradBuf() is host memory on every backend (GPU workers stage through it), so the sum
      // is a host loop, not a backend kernel.
      float* g = gradBuf();
      const float* r = recv_.data();
#pragma omp simd
      for (size_t k = 0; k < n_; ++k) g[k] += r[k];
    }
  }
  if (nccl_) {
    nccl_->reduceSum(model_.grads(), n_);
    if (isLeader() && !hostGrads_.empty()) be_->copyToHost(hostGrads_.data(), model_.grads(), bytes);
  }
  if (isLeader()) {
    if (members > 1 && cfg_.aggregate == "mean") {
      float* g = gradBuf();
      const float inv = 1.0f / static_cast<float>(members);
      for (size_t k = 0; k < n_; ++k) g[k] *= inv;
    }
    client_.push(clock, gradBuf(), true, loss / members);
    // Slack EPSP / FlexRR: while the weights are not here (this worker is ahead), compute
    // unstarted shards of the workers that hold it back.
    if (epsp_ && !enforced_)
      epsp_->stealRound(clock, [&] { return client_.weightsArrived(clock + 1, paramBuf()); },
                        [this](int r) { return alive(r); });
    client_.awaitWeights(clock + 1, paramBuf());
    client_.waitPushes();
    stopRequested_ = client_.stopRequested();
    // Stateless: the slices of shards that are down train on locally.
    if (client_.anyDown())
      client_.localStep(paramBuf(), static_cast<float>(learningRate(cfg_, clock, totalSteps_)));
    shareWeights(clock + 1);  // (and uploads them to this worker's device)
    if (epsp_) epsp_->publish(paramBuf());
  } else {
    const Header h = receiveWeights(detail::concat("the group's weights of clock ", clock + 1));
    stopRequested_ = (h.flags & transport::kStop) != 0;
    t_.waitSend(sent, cfg_.peerTimeoutS);
  }
}

}  // namespace phx::train
