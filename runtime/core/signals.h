// Signals as schedulers send them: SIGTERM (SLURM's preemption, scancel, a time limit;
// KillWait later SIGKILL), SIGINT (Ctrl-C) and SIGUSR1/SIGUSR2 (sbatch --signal) ask the
// process to stop at the next consistent step and snapshot.
//
// They are taken by one thread of their own: startSignalThread() blocks them in the calling
// thread, which must be the only thread of the process (first thing in main, before MPI,
// OpenMP, oneDNN or CUDA start theirs), so that every later thread inherits the mask, and starts
// a thread that takes them with sigwait. No handler ever runs on top of training code: a signal
// cannot interrupt a system call, a lock or the allocator in the middle of an operation. A
// second SIGINT ends the process at once (exit 130). Children started with fork/exec get the
// default mask back.
#pragma once

namespace phx::signals {

void startSignalThread();
// startSignalThread() was called in this process.
bool started();
// A signal asked this process to stop (false until one came, or when the thread was never
// started).
bool stopRequested();
// The first stop signal received (SIGTERM, ...), 0 when none.
int stopSignal();
// "SIGTERM" and the like, "" when none.
const char* stopSignalName();
// How many stop signals arrived (repeats are harmless; counted for tests and logs).
int signalsReceived();
// For tests: forget a received stop.
void resetForTest();

}  // namespace phx::signals
