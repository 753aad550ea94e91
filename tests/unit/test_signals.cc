// The stop signals are taken by one thread with sigwait (runtime/core/signals.h): every other
// thread has them blocked, so no handler runs on top of a compute kernel (a handler's frame on a
// oneDNN JIT gemm thread, whose stack pointer points into the heap, corrupted the heap).
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <thread>

#include "runtime/core/signals.h"

namespace {

bool waitUntil(const std::function<bool()>& f) {
  for (int i = 0; i < 2000 && !f(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return f();
}

bool blockedHere(int sig) {
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, nullptr, &cur);
  return sigismember(&cur, sig) == 1;
}

TEST(Signals, EveryOtherThreadHasTheStopSignalsBlockedAndTheFirstOneCounts) {
  phx::signals::startSignalThread();
  EXPECT_FALSE(phx::signals::stopRequested());
  bool inThread = false;
  std::thread([&] { inThread = blockedHere(SIGTERM) && blockedHere(SIGUSR1) && blockedHere(SIGUSR2) &&
                               blockedHere(SIGINT); }).join();
  EXPECT_TRUE(inThread) << "a thread started later must inherit the blocked stop signals";
  EXPECT_TRUE(blockedHere(SIGTERM));
  // a storm of SIGUSR1 at the process, then a SIGTERM: the first one is the stop
  for (int i = 0; i < 200; ++i) ASSERT_EQ(kill(getpid(), SIGUSR1), 0);
  ASSERT_TRUE(waitUntil([] { return phx::signals::stopRequested(); }));
  EXPECT_EQ(phx::signals::stopSignal(), SIGUSR1);
  EXPECT_STREQ(phx::signals::stopSignalName(), "SIGUSR1");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the storm's last ones counted
  const int before = phx::signals::signalsReceived();
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  ASSERT_TRUE(waitUntil([&] { return phx::signals::signalsReceived() > before; }));
  EXPECT_EQ(phx::signals::stopSignal(), SIGUSR1);
  EXPECT_GE(phx::signals::signalsReceived(), 2);
}

TEST(Signals, AForkedChildStartsWithTheStopSignalsUnblocked) {
  phx::signals::startSignalThread();
  const pid_t p = fork();
  ASSERT_GE(p, 0);
  if (p == 0) _exit(blockedHere(SIGTERM) || blockedHere(SIGINT) ? 1 : 0);
  int status = 0;
  ASSERT_EQ(waitpid(p, &status, 0), p);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a launched child (mpirun, a helper) must get SIGTERM";
}

TEST(Signals, WithoutTheThreadNothingIsBlockedOrRequested) {
  if (phx::signals::started()) GTEST_SKIP() << "the thread was started by another test of this process (ctest runs each alone)";
  EXPECT_FALSE(blockedHere(SIGTERM));
  EXPECT_FALSE(phx::signals::stopRequested());
  EXPECT_STREQ(phx::signals::stopSignalName(), "");
}

}  // namespace
