// Failure detection and agreement on the membership view.
//
// Two sources. Where the MPI reports process failures (Open MPI 5 with ULFM), the failed group
// of the detector's communicator (Transport::reportedFailures, polled every tick) names a dead
// rank within ~10 ms, and the coordinator declares it at once (FailureRecord::detectedBy = MPI).
// Open MPI 4.1 reports nothing (shared/infra-notes.md), and no MPI sees a frozen process, so
// the other source is always on: heartbeats with a timeout, on a thread of their own and on a communicator of
// their own (so a rank busy computing, or blocked in a long wait, still answers; a frozen
// process -- SIGSTOP -- stops its heartbeats like a dead one).
//
// Protocol (coordinator-based, a leader lease):
//  * The coordinator is the lowest live rank that has not left. Every other rank sends it a
//    heartbeat every --heartbeat-ms; the coordinator sends one to every rank.
//  * The coordinator declares a rank dead when it has not heard from it for
//    --failure-timeout-ms, computes the next view (nextView: pure and deterministic), installs
//    it and sends it to every live rank. Views are totally ordered by epoch; a rank installs
//    only a view of a higher epoch than its own.
//  * A rank that has not heard from the coordinator for the timeout suspects it and moves on to
//    the next lowest rank; when that is itself, it becomes the acting coordinator, declares the
//    ranks it suspects dead (it has seen their silence itself) and issues the view; then it
//    watches the others as any coordinator does (a second, simultaneous failure costs one more
//    timeout). Everyone detects a dead coordinator from the same heartbeat stream, so they all
//    move to the same successor.
//  * Safety: only the coordinator issues views, so in the crash-stop model every survivor
//    installs the same sequence. A rank wrongly excluded (frozen for longer than the timeout,
//    then resumed) is fenced: its messages are dropped by everyone (older epoch, non-member),
//    any heartbeat it sends is answered with the current view, and on installing a view that
//    excludes it the rank stops (exit code 3) -- a false suspicion becomes a crash, never a
//    split brain. A rank that notices its own thread was paused for more than half the timeout
//    blames itself, not the others (it restarts its timers instead of declaring them dead).
//  * A rank that finishes normally sends kLeave to everyone: it is no longer watched and never
//    reported as failed.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "recovery/view.h"
#include "runtime/ps/layout.h"
#include "runtime/transport/transport.h"

namespace phx::recovery {

struct DetectorOptions {
  double heartbeatS = 0.1;  // --heartbeat-ms
  double timeoutS = 0.5;    // --failure-timeout-ms
  // Jobs over several hosts, where a link can be cut: a coordinator that hears from half or
  // fewer of the live ranks (itself included) issues no view (it may be the one cut off); it
  // waits for them, and leaves after minorityWaitS if they do not come back.
  bool majority = false;
  double minorityWaitS = 5;
};

// Starts the replacements a view asks for (v.respawn; recovery/respawn.h): collective over the
// ranks alive in v, called on each survivor's detector thread; next is the view they join at.
// Returns the same answer on every survivor.
using Respawner = std::function<bool(const View& v, const View& next)>;

class FailureDetector {
 public:
  // t: a transport used only by this detector (its own communicator), rank = job rank.
  FailureDetector(transport::Transport& t, const ps::RoleLayout& layout, DetectorOptions opt);
  ~FailureDetector();
  FailureDetector(const FailureDetector&) = delete;
  FailureDetector& operator=(const FailureDetector&) = delete;

  // Before start(): replacements are started when no spare is left (null: never).
  void setRespawner(Respawner r) { respawner_ = std::move(r); }
  // Before start(), in a replacement process: the view it joins the job at.
  void adopt(const View& v);
  void start();
  // Normal end of this rank: tell every live rank, stop the thread. Idempotent.
  void leave();
  // Crash simulation for in-process tests: stop the thread without a word.
  void haltForTest();
  // Freeze simulation for in-process tests: the thread sleeps this long (like SIGSTOP).
  void freezeForTest(double seconds) { freezeS_.store(seconds); }

  int epoch() const { return epoch_.load(); }
  View view() const;
  bool fenced() const { return fenced_.load(); }
  // An injected kill: the coordinator learns the wall time of the kill (so detection time is
  // measured from the kill); waits at most ~0.2 s for the message to leave.
  void announceDeath();

  // The interrupt hook for the training transport: throws ViewChanged when the view moved past
  // `acked` epoch and the wait is on a dead peer (or on any peer: -1). -2: never interrupt.
  void checkInterrupt(int peer, int acked) const;

 private:
  void loop();
  void tick();
  void install(const View& v, bool announce);
  void sendView(int dst, const View& v);
  void reapSends();
  void sendBeat(int dst, int epoch);
  int candidate() const;  // lowest live, not-left, not-suspected rank

  transport::Transport& t_;
  const ps::RoleLayout& layout_;
  DetectorOptions opt_;
  int me_;
  mutable std::mutex mu_;
  View view_;  // guarded by mu_ (the thread writes, anyone reads)
  std::atomic<int> epoch_{0};
  std::atomic<bool> fenced_{false}, stop_{false}, halt_{false}, dying_{false}, dyingSent_{false};
  std::atomic<double> freezeS_{0}, dyingUnix_{0};
  std::thread thread_;
  bool started_ = false, left_ = false;

  // thread-only state
  std::vector<double> lastHeard_;      // steady seconds
  std::vector<double> lastHeardUnix_;  // wall seconds
  std::vector<double> lastFresh_;      // steady seconds: last beat that was sent < timeout ago
  std::vector<double> killUnix_;
  std::vector<int> aliveSince_;
  std::vector<int> resentEpoch_;   // the view last resent to a member whose beat was behind
  std::vector<double> resentAt_;
  int aheadEpoch_ = -1;            // the newest epoch a member's heartbeat carried
  double aheadAt_ = 0;  // epoch of the view that made each rank's process alive
  std::vector<char> left_ranks_, suspect_;
  std::vector<char> mpiFailed_;  // ranks the MPI library reported failed (ULFM)
  Respawner respawner_;
  void runRespawn(const View& v);
  // majority rule (DetectorOptions::majority): true while this rank hears from half or fewer
  // of cur's live ranks (itself included)
  bool inMinority(const View& cur, double now);
  void beatAll(const View& cur);  // a heartbeat to every live rank that has not left
  double lastBeat_ = -1e9, lastTick_ = 0;
  double minoritySince_ = -1;  // when this coordinator last found itself in a minority
  int candidate_ = -1;
  bool acting_ = false;
  std::deque<std::pair<transport::SendId, std::vector<unsigned char>>> sends_;
};

}  // namespace phx::recovery
