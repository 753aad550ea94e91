#include "recovery/detector.h"

#include <chrono>

#include "runtime/core/log.h"
#include "runtime/core/test_hooks.h"

namespace phx::recovery {

using transport::Header;
using transport::MsgType;

namespace {
double steadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

FailureDetector::FailureDetector(transport::Transport& t, const ps::RoleLayout& layout,
                                 DetectorOptions opt)
    : t_(t), layout_(layout), opt_(opt), me_(t.rank()), view_(initialView(layout)) {
  const int n = t.size();
  PHX_ENFORCE(n == layout.worldSize(), "detector transport has ", n, " ranks, the job ",
              layout.worldSize());
  lastHeard_.assign(n, steadyNow());
  lastHeardUnix_.assign(n, unixNow());
  lastFresh_.assign(n, steadyNow());
  killUnix_.assign(n, 0);
  aliveSince_.assign(n, 0);
  resentEpoch_.assign(n, -1);
  resentAt_.assign(n, 0);
  left_ranks_.assign(n, 0);
  suspect_.assign(n, 0);
  mpiFailed_.assign(n, 0);
}

FailureDetector::~FailureDetector() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void FailureDetector::adopt(const View& v) {
  std::lock_guard<std::mutex> lock(mu_);
  view_ = v;
  epoch_.store(v.epoch);
}

void FailureDetector::start() {
  if (started_) return;
  started_ = true;
  lastTick_ = steadyNow();
  for (double& h : lastHeard_) h = lastTick_;
  thread_ = std::thread([this] { loop(); });
}

View FailureDetector::view() const {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

void FailureDetector::checkInterrupt(int peer, int acked) const {
  const int e = epoch_.load();
  if (e == acked || peer == -2) return;
  if (peer == -1) throw transport::ViewChanged(e);
  std::lock_guard<std::mutex> lock(mu_);
  if (!view_.isAlive(peer)) throw transport::ViewChanged(e);
}

void FailureDetector::announceDeath() {
  if (!started_ || stop_.load()) return;
  dyingUnix_.store(unixNow());
  dying_.store(true);
  for (int i = 0; i < 200 && !dyingSent_.load(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void FailureDetector::leave() {
  if (!started_ || left_) return;
  left_ = true;
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  // Tell every live rank that this is not a failure (small sends, bounded wait).
  const View v = view();
  std::vector<transport::SendId> ids;
  for (int r = 0; r < t_.size(); ++r)
    if (r != me_ && v.isAlive(r)) {
      Header h;
      h.type = MsgType::kLeave;
      h.epoch = v.epoch;
      ids.push_back(t_.send(r, h, nullptr));
    }
  const double deadline = steadyNow() + 1.0;
  for (auto id : ids)
    while (!t_.sendDone(id) && steadyNow() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
}

void FailureDetector::haltForTest() {
  halt_.store(true);
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void FailureDetector::loop() {
  while (!stop_.load()) {
    const double f = freezeS_.exchange(0);
    if (f > 0) std::this_thread::sleep_for(std::chrono::duration<double>(f));
    const double t0 = steadyNow();
    const int e0 = epoch_.load();
    try {
      tick();
    } catch (const std::exception& e) {
      log::error("failure detector: ", e.what());
    }
    // A tick held up in the MPI (a send or a receive that did not return) silences this rank's
    // heartbeats: said, so that a false declaration that follows has its cause in the log (a
    // view change, which may start a replacement process, takes its time and is not reported).
    const double took = steadyNow() - t0;
    if (took > opt_.timeoutS / 2 && epoch_.load() == e0)
      log::warn("failure detector: one round took ", static_cast<int64_t>(took * 1000),
                " ms (held up in the MPI); heartbeats were not sent meanwhile");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int FailureDetector::candidate() const {
  for (int r = 0; r < static_cast<int>(view_.alive.size()); ++r)
    if (view_.alive[r] && !left_ranks_[r] && !suspect_[r]) return r;
  return me_;
}

void FailureDetector::sendView(int dst, const View& v) {
  std::vector<unsigned char> buf = v.serialize();
  Header h;
  h.type = MsgType::kView;
  h.epoch = v.epoch;
  h.bytes = static_cast<int64_t>(buf.size());
  const auto id = t_.send(dst, h, buf.data());
  sends_.emplace_back(id, std::move(buf));
}

void FailureDetector::reapSends() {
  // Sends to live ranks complete; those to ranks marked dead are abandoned by the transport
  // (sendDone is then true), so every entry goes eventually.
  std::erase_if(sends_, [&](const auto& s) { return t_.sendDone(s.first); });
}

void FailureDetector::sendBeat(int dst, int epoch) {
  Header hb;
  hb.type = MsgType::kHeartbeat;
  hb.epoch = epoch;
  hb.value = unixNow();  // when it was sent: a beat queued behind a cut link arrives stale
  sends_.emplace_back(t_.send(dst, hb, nullptr), std::vector<unsigned char>{});
}

void FailureDetector::install(const View& v, bool announce) {
  View old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old = view_;
    view_ = v;
  }
  const double now = steadyNow();
  for (int r = 0; r < static_cast<int>(v.alive.size()); ++r) {
    if (!v.alive[r]) {
      t_.markDead(r);
    } else if (!old.isAlive(r)) {  // a replacement under a dead rank's number
      t_.revive(r);
      mpiFailed_[r] = 0;
      left_ranks_[r] = 0;
      killUnix_[r] = 0;
      aliveSince_[r] = v.epoch;
    }
    suspect_[r] = 0;
    lastHeard_[r] = now;  // new relationships start with a full timeout
    lastFresh_[r] = now;
  }
  candidate_ = -1;
  acting_ = false;
  if (!v.isAlive(me_)) {
    fenced_.store(true);
    log::error("this rank was declared failed by rank ", v.issuer, " (epoch ", v.epoch,
               "); it was probably frozen longer than --failure-timeout-ms; leaving the job");
  }
  for (size_t i = old.failures.size(); i < v.failures.size(); ++i) {
    const FailureRecord& f = v.failures[i];
    log::warn("rank ", f.rank, " (", ps::roleName(static_cast<ps::Role>(f.role)),
              f.shard >= 0 ? detail::concat(" of shard ", f.shard) : std::string(),
              ") declared failed at epoch ", v.epoch, " by rank ", v.issuer,
              f.shard >= 0 ? (f.spawned ? std::string("; a replacement process is started for it")
                              : f.replacedBy >= 0 ? detail::concat("; rank ", f.replacedBy, " takes over")
                                                : std::string("; no spare left to take over"))
                           : std::string());
  }
  epoch_.store(v.epoch);
  if (announce)
    for (int r = 0, sent = 0; r < static_cast<int>(v.alive.size()); ++r)
      if (r != me_ && v.alive[r] && !left_ranks_[r]) {
        sendView(r, v);
        if (++sent == 1 && !v.failures.empty())
          testhooks::killPoint("view-send");  // the others never get this view from here
      }
  if (!v.respawn.empty() && respawner_ && v.isAlive(me_)) runRespawn(v);
}

void FailureDetector::runRespawn(const View& v) {
  // Every survivor takes part; the lowest one (the spawn's root) then issues the view in which
  // the new processes are alive (or, when the spawn failed, the shards that waited are lost).
  const int root = v.coordinator();
  View next = afterRespawn(v, root, true);
  const bool ok = respawner_(v, next);
  if (me_ != root) return;
  if (!ok) next = afterRespawn(v, root, false);
  install(next, true);
}

void FailureDetector::beatAll(const View& cur) {
  for (int r = 0; r < static_cast<int>(cur.alive.size()); ++r)
    if (r != me_ && cur.alive[r] && !left_ranks_[r]) sendBeat(r, cur.epoch);
}

bool FailureDetector::inMinority(const View& cur, double now) {
  // reachable: this rank and those heard from lately (ranks time out one by one, so counting
  // only those past the timeout would let a cut-off rank declare the others dead one at a time)
  // A tie (exactly half reachable) goes to the half that holds the lowest member: in a cut
  // into two halves only one of them does, so there are never two heads.
  const double window = std::max(2 * opt_.heartbeatS, opt_.timeoutS / 2);
  int members = 0, reachable = 0;
  bool lowestReachable = false;
  for (int r = 0; r < static_cast<int>(cur.alive.size()); ++r) {
    if (!cur.alive[r] || left_ranks_[r]) continue;
    // a suspected coordinator (or one the library reported) is not reachable, whatever the
    // acting coordinator's fresh start did to its times
    const bool heard =
        r == me_ || (!suspect_[r] && !mpiFailed_[r] && now - lastFresh_[r] <= window);
    if (members++ == 0) lowestReachable = heard;
    if (heard) ++reachable;
  }
  if (2 * reachable > members || (2 * reachable == members && lowestReachable)) {
    minoritySince_ = -1;
    return false;
  }
  if (minoritySince_ < 0) {
    minoritySince_ = now;
    log::warn("lost contact with ", members - reachable, " of ", members, " ranks: this rank may be the "
              "one cut off, and a minority issues no view; waiting up to ", opt_.minorityWaitS,
              " s for them");
  } else if (now - minoritySince_ > opt_.minorityWaitS) {
    log::error("still cut off from ", members - reachable, " of ", members, " ranks after ",
               opt_.minorityWaitS, " s; leaving the job (the others go on without this rank)");
    fenced_.store(true);
  }
  return true;
}

void FailureDetector::tick() {
  const double now = steadyNow();
  // Our own thread did not run for a long while (SIGSTOP, swapped out): blame ourselves.
  if (now - lastTick_ > opt_.timeoutS / 2) {
    for (double& h : lastHeard_) h = now;
    for (double& h : lastFresh_) h = now;
  }
  lastTick_ = now;
  reapSends();
  if (fenced_.load()) return;

  Header h;
  int src = -1;
  View cur = view();
  // The first source, where the MPI reports failures (ULFM): a rank the library names failed
  // counts as silent for the whole timeout already (even if a heartbeat it sent before dying
  // is still queued), so the coordinator, or the successor of a dead one, acts now.
  for (int r : t_.reportedFailures())
    if (r >= 0 && r < static_cast<int>(mpiFailed_.size()) && r != me_) mpiFailed_[r] = 1;
  while (t_.poll(MsgType::kHeartbeat, &h, &src)) {
    if (!cur.isAlive(src)) {
      // fence a resumed, excluded rank (or one cut off that issued a view of its own: same epoch)
      if (h.epoch < cur.epoch || (opt_.majority && h.epoch == cur.epoch)) sendView(src, cur);
      continue;
    }
    // A member behind (it missed a view: a link that dropped it) gets the view again, at most
    // once per timeout; a member ahead means this rank missed one: it issues none meanwhile
    // (recovery/model: without these two, a stale rank could lead the shard back to old state).
    if (h.epoch < cur.epoch && (resentEpoch_[src] != cur.epoch || now - resentAt_[src] > opt_.timeoutS)) {
      resentEpoch_[src] = cur.epoch;
      resentAt_[src] = now;
      sendView(src, cur);
    }
    if (h.epoch > cur.epoch) {
      aheadEpoch_ = std::max(aheadEpoch_, static_cast<int>(h.epoch));
      aheadAt_ = now;
    }
    lastHeard_[src] = now;
    lastHeardUnix_[src] = unixNow();
    if (unixNow() - h.value < opt_.timeoutS) lastFresh_[src] = now;
  }
  for (int r = 0; r < static_cast<int>(mpiFailed_.size()); ++r)
    if (mpiFailed_[r] && cur.isAlive(r)) lastHeard_[r] = std::min(lastHeard_[r], now - 2 * opt_.timeoutS);
  while (t_.poll(MsgType::kView, &h, &src)) {
    std::vector<unsigned char> buf(static_cast<size_t>(h.bytes));
    t_.recvPayload(src, MsgType::kView, buf.data(), buf.size(), 1.0);
    const View v = View::parse(buf.data(), buf.size());
    lastHeard_[src] = now;
    // a view of our own epoch that excludes us: two sides of a cut link both issued one; the
    // side that cannot hear a majority never does (inMinority), so ours is the stale one
    if (v.epoch > cur.epoch || (v.epoch == cur.epoch && !v.isAlive(me_) && opt_.majority)) {
      install(v, false);
      cur = v;
    }
  }
  while (t_.poll(MsgType::kLeave, &h, &src)) left_ranks_[src] = 1;
  // (a late announcement of an earlier process under the same number is not this one's kill)
  while (t_.poll(MsgType::kDying, &h, &src))
    if (h.epoch >= aliveSince_[src]) killUnix_[src] = h.value;
  if (fenced_.load()) return;

  // Injected kill of this rank: tell every live rank when, before the signal (whoever ends up
  // coordinating the failover measures detection from it).
  if (dying_.load() && !dyingSent_.load()) {
    Header d;
    d.type = MsgType::kDying;
    d.epoch = cur.epoch;
    d.value = dyingUnix_.load();
    std::vector<transport::SendId> ids;
    for (int r = 0; r < static_cast<int>(cur.alive.size()); ++r)
      if (r != me_ && cur.alive[r] && !left_ranks_[r]) ids.push_back(t_.send(r, d, nullptr));
    for (auto id : ids)
      for (int i = 0; i < 100 && !t_.sendDone(id); ++i)
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    dyingSent_.store(true);
  }

  const int c = candidate();
  if (c != candidate_) {
    candidate_ = c;
    if (c != me_) lastHeard_[c] = now;  // it gets a full timeout to show up
  }
  const bool beat = now - lastBeat_ >= opt_.heartbeatS;
  if (beat) lastBeat_ = now;
  if (c == me_) {
    if (!acting_) {
      acting_ = true;
      for (double& x : lastHeard_) x = std::max(x, now - opt_.heartbeatS);
      for (double& x : lastFresh_) x = std::max(x, now - opt_.heartbeatS);
      // (a non-coordinator heard nobody but its coordinator: without this, a rank that dies
      // just after the change would be reported "detected N ms after its last heartbeat" from
      // a heartbeat long before, seen in the tail-join phase kill: 2547 ms)
      const double nowUnix = unixNow();
      for (double& x : lastHeardUnix_) x = std::max(x, nowUnix - opt_.heartbeatS);
    }
    std::vector<int> dead;
    for (int r = 0; r < static_cast<int>(cur.alive.size()); ++r) {
      if (r == me_ || !cur.alive[r] || left_ranks_[r]) continue;
      if (suspect_[r] || now - lastHeard_[r] > opt_.timeoutS) dead.push_back(r);
    }
    if (!dead.empty() && aheadEpoch_ > cur.epoch && now - aheadAt_ <= opt_.timeoutS) {
      if (beat) beatAll(cur);  // our older epoch in the beats brings the newer view back
      return;
    }
    if (!dead.empty() && opt_.majority && inMinority(cur, now)) {
      if (beat) beatAll(cur);  // a restored link brings the majority's newer view back (fencing)
      return;
    }
    if (!dead.empty()) {
      // Replacements only while every live rank can take part in starting them (a rank that
      // finished normally has left and is no longer listening).
      bool canSpawn = static_cast<bool>(respawner_);
      for (int r = 0; r < static_cast<int>(cur.alive.size()); ++r)
        if (cur.alive[r] && left_ranks_[r]) canSpawn = false;
      View next = nextView(cur, layout_, dead, me_, unixNow(), lastHeardUnix_, killUnix_, canSpawn);
      for (size_t i = cur.failures.size(); i < next.failures.size(); ++i)
        if (mpiFailed_[next.failures[i].rank]) next.failures[i].detectedBy = kDetectedByMpi;
      install(next, true);
      return;
    }
    if (beat) beatAll(cur);
  } else {
    acting_ = false;
    if (now - lastHeard_[c] > opt_.timeoutS) {
      suspect_[c] = 1;  // the next tick moves on to the next candidate
      log::warn("no heartbeat from coordinator rank ", c, " for ", opt_.timeoutS,
                " s; suspecting it");
      return;
    }
    if (beat) sendBeat(c, cur.epoch);
  }
}

}  // namespace phx::recovery
