#include "apps/phoenix/bench_recovery.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/core/metrics.h"

namespace phx::apps {

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `cmd` through /bin/sh in its own process group; kills the group by its id after
// timeoutS. Returns the exit status (-1: timed out). `during` is called every 50 ms while the
// job runs (the freeze injection).
int runBounded(const std::string& cmd, double timeoutS, const std::function<void()>& during = {}) {
  const pid_t pid = fork();
  PHX_ENFORCE(pid >= 0, "fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutS);
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    if (during) during();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// The freeze: SIGSTOP the shard-0 server (its pid from the job's debug log) once training has
// run a while, SIGCONT it a second after the others declared it failed.
struct Freezer {
  std::string log;
  double afterS;
  pid_t pid = -1;
  int state = 0;  // 0 waiting for the pid, 1 waiting to stop, 2 stopped, 3 resumed
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now(), stoppedAt{};
  void operator()() {
    const auto now = std::chrono::steady_clock::now();
    if (state == 0) {
      static const std::regex re("rank 0 pid ([0-9]+) role server");
      std::smatch m;
      const std::string text = slurp(log);
      if (std::regex_search(text, m, re)) {
        pid = static_cast<pid_t>(std::stol(m[1].str()));
        state = 1;
        t0 = now;
      }
    } else if (state == 1 && std::chrono::duration<double>(now - t0).count() >= afterS) {
      kill(pid, SIGSTOP);
      state = 2;
      stoppedAt = now;
    } else if (state == 2 && (slurp(log).find("declared failed") != std::string::npos ||
                              std::chrono::duration<double>(now - stoppedAt).count() > 10)) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      kill(pid, SIGCONT);
      state = 3;
    }
  }
};

std::vector<double> numbersOf(const std::string& text, const std::string& key) {
  std::vector<double> out;
  const std::regex re("\"" + key + "\": (-?[0-9.]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1].str()));
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string modeFlags(const std::string& mode) {
  if (mode == "checkpoint-sync") return "--recovery checkpoint --checkpoint-mode sync --checkpoint-every 10";
  if (mode == "checkpoint-async") return "--recovery checkpoint --checkpoint-mode async --checkpoint-every 10";
  if (mode == "chain-sync") return "--recovery chain --chain-mode sync --replicas 1";
  if (mode == "chain-async") return "--recovery chain --chain-mode async --replicate-every 10 --replicas 1";
  if (mode == "stateless") return "--recovery stateless --checkpoint-every 10";
  if (mode == "hybrid") return "--recovery hybrid --replicas 1";
  PHX_USER_ERROR("phoenix bench recovery: mode '", mode,
                 "' is not known (accepted: checkpoint-sync, checkpoint-async, chain-sync, "
                 "chain-async, stateless, hybrid)");
}

}  // namespace

int runRecoveryBench(const RecoveryBenchOptions& opt) {
  for (const auto& m : opt.modes) modeFlags(m);
  if (opt.kills < 1 || opt.steps < 20)
    PHX_USER_ERROR("phoenix bench recovery: --kills must be >= 1 and --steps >= 20");
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(opt.dir, ec);
  if (ec) PHX_USER_ERROR("phoenix bench recovery: cannot create --dir ", opt.dir, ": ", ec.message());
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  PHX_ENFORCE(!ec, "cannot find this executable");
  std::mt19937_64 rng(opt.seed);
  std::printf("%s\n", opt.freeze ? "freezes (SIGSTOP of the shard-0 server by PID; detection from its last heartbeat)"
                                  : "kills (SIGKILL of the shard-0 server at a random step)");
  std::printf("%-17s %5s %5s %24s %24s %10s %9s %7s\n", "mode", "sync", "kills", "detect ms med (range)",
              "recover ms med (range)", "lost max", "acc med", "by mpi");
  std::string json = "[";
  for (const std::string& mode : opt.modes) {
    std::vector<double> det, rec, lost, acc;
    int failedJobs = 0, byMpi = 0;
    for (int k = 0; k < opt.kills; ++k) {
      const int at = opt.steps / 5 + static_cast<int>(rng() % static_cast<uint64_t>(2 * opt.steps / 5));
      const std::string base = detail::concat(opt.dir, "/", mode, "-", opt.sync, "-", k);
      fs::remove_all(base + ".ckpt", ec);
      fs::remove(base + ".json", ec);
      const std::string inject =
          opt.freeze ? std::string(" --log-level debug") : detail::concat(" --log-level warn --kill-server ", at);
      const std::string cmd = detail::concat(
          opt.mpirun, " -n ", opt.ranks + opt.spares - 1, " ", self, " train --model ", opt.model, " --steps ",
          opt.freeze ? 4 * opt.steps : opt.steps, " --threads 1 --eval-every 0 --sync ", opt.sync,
          " --servers 1 --spares ", opt.spares, " ", modeFlags(mode), inject, " --checkpoint-dir ", base,
          ".ckpt --summary ", base, ".json > ", base, ".log 2>&1");
      Freezer freezer;
      freezer.log = base + ".log";
      freezer.afterS = 1.0 + static_cast<double>(at % 10) / 10.0;
      const int rc = opt.freeze ? runBounded(cmd, opt.timeoutS, std::ref(freezer)) : runBounded(cmd, opt.timeoutS);
      if (opt.freeze && freezer.state == 2) kill(freezer.pid, SIGCONT);  // never leave it stopped
      const std::string s = slurp(base + ".json");
      const auto d = numbersOf(s, "detected_ms"), r = numbersOf(s, "recovered_ms");
      if (s.find("\"detected_by\": \"mpi\"") != std::string::npos) ++byMpi;
      if (rc != 0 || s.empty() || d.empty() || r.empty() || r[0] <= 0) {
        ++failedJobs;
        std::fprintf(stderr, "bench recovery: %s job %d did not recover (rc %d); see %s.log\n",
                     mode.c_str(), k, rc, base.c_str());
        continue;
      }
      det.push_back(d[0]);
      rec.push_back(r[0]);
      const auto l = numbersOf(s, "acknowledged_pushes_lost");
      const auto a = numbersOf(s, "final_test_accuracy");
      if (!l.empty()) lost.push_back(l[0]);
      if (!a.empty()) acc.push_back(a[0]);
      fs::remove_all(base + ".ckpt", ec);
    }
    auto range = [](const std::vector<double>& v) {
      if (v.empty()) return std::string("-");
      return detail::concat(static_cast<int64_t>(*std::min_element(v.begin(), v.end())), "-",
                            static_cast<int64_t>(*std::max_element(v.begin(), v.end())));
    };
    const double lostMax = lost.empty() ? -1 : *std::max_element(lost.begin(), lost.end());
    std::printf("%-17s %5s %5zu %10.0f (%11s) %10.0f (%11s) %10.0f %8.2f%% %7d\n", mode.c_str(),
                opt.sync.c_str(), det.size(), median(det), range(det).c_str(), median(rec),
                range(rec).c_str(), lostMax, 100.0 * median(acc), byMpi);
    std::fflush(stdout);
    char row[600];
    std::snprintf(row, sizeof row,
                  "%s\n  {\"mode\": \"%s\", \"sync\": \"%s\", \"freeze\": %s, \"kills\": %zu, \"failed_jobs\": %d, "
                  "\"detected_ms_median\": %s, \"recovered_ms_median\": %s, "
                  "\"acknowledged_pushes_lost_max\": %.0f, \"accuracy_median\": %s, \"spares\": %d, \"detected_by_mpi\": %d}",
                  json.size() > 1 ? "," : "", mode.c_str(), opt.sync.c_str(), opt.freeze ? "true" : "false",
                  det.size(), failedJobs,
                  jsonNumber(median(det)).c_str(), jsonNumber(median(rec)).c_str(), lostMax,
                  jsonNumber(median(acc)).c_str(), opt.spares, byMpi);
    json += row;
  }
  json += "\n]\n";
  if (!opt.jsonPath.empty()) writeFileAtomic(opt.jsonPath, json);
  return 0;
}

}  // namespace phx::apps
