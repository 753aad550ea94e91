// Ends the process with a one-line error if the step it guards does not finish in time: a
// collective or a connection that lost a member never returns with Open MPI 4.1, and a job
// must end with a message rather than hang (recovery/respawn.h, runtime/transport/mpi/join.h).
#pragma once

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

namespace phx::transport {

class Watchdog {
 public:
  // what: the step ("starting a replacement for rank 3"); advice: what the user can do.
  Watchdog(double seconds, std::string what, std::string advice)
      : what_(std::move(what)), advice_(std::move(advice)) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; })) {
        std::fprintf(stderr, "phoenix: error: %s did not finish within %.0f s; %s\n", what_.c_str(),
                     seconds, advice_.c_str());
        std::fflush(nullptr);
        _exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::string what_, advice_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace phx::transport
