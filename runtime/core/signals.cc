#include "runtime/core/signals.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

namespace phx::signals {

namespace {
std::atomic<int> gFirst{0};
std::atomic<int> gCount{0};
std::atomic<bool> gStarted{false};

sigset_t stopSet() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) sigaddset(&s, sig);
  return s;
}

// A forked child (a launcher, a helper) starts with the default mask, not with ours.
void unblockInChild() {
  sigset_t s = stopSet();
  pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
}

void takeSignals() {
  const sigset_t s = stopSet();
  for (;;) {
    int sig = 0;
    if (sigwait(&s, &sig) != 0) continue;
    const int prev = gFirst.load();
    if (sig == SIGINT && prev != 0) _exit(130);  // Ctrl-C twice: now
    int none = 0;
    gFirst.compare_exchange_strong(none, sig);
    gCount.fetch_add(1);
  }
}
}  // namespace

void startSignalThread() {
  if (gStarted.exchange(true)) return;
  sigset_t s = stopSet();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  pthread_atfork(nullptr, nullptr, unblockInChild);
  std::thread(takeSignals).detach();
}

bool started() { return gStarted.load(); }
bool stopRequested() { return gFirst.load(std::memory_order_relaxed) != 0; }
int stopSignal() { return gFirst.load(); }
int signalsReceived() { return gCount.load(); }

const char* stopSignalName() {
  switch (gFirst.load()) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return "";
  }
}

void resetForTest() {
  gFirst.store(0);
  gCount.store(0);
}

}  // namespace phx::signals
