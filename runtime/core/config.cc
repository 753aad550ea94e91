#include "runtime/core/config.h"

#include <cmath>
#include <numbers>

#include "runtime/core/error.h"

namespace phx {

Schedule parseSchedule(const std::string& flag, const std::string& value) {
  Schedule s;
  const bool time = !value.empty() && value.back() == 's';
  const std::string num = time ? value.substr(0, value.size() - 1) : value;
  size_t used = 0;
  try {
    if (time) {
      s.seconds = std::stod(num, &used);
    } else {
      s.steps = std::stoll(num, &used);
    }
  } catch (...) {
    used = 0;
  }
  if (num.empty() || used != num.size() || s.steps < 0 || s.seconds < 0.0 ||
      !std::isfinite(s.seconds))
    PHX_USER_ERROR(flag, " '", value, "' is not a schedule (accepted: a step count such as 500, "
                   "a time such as 30s, or 0 for every epoch)");
  return s;
}

double learningRate(const Config& c, int64_t step, int64_t totalSteps) {
  if (c.lrSchedule != "cosine" || totalSteps <= 1) return c.lr;
  const double t = static_cast<double>(step) / static_cast<double>(totalSteps);
  return 0.5 * c.lr * (1.0 + std::cos(std::numbers::pi * t));
}

std::string Config::effectiveRecovery() const {
  if (recovery != "auto") return recovery;
  if (!launchSurvives) return "none";
  return replicas > 0 ? "chain" : "checkpoint";
}

namespace {
std::vector<Schedule> parseList(const std::string& flag, const std::string& v) {
  std::vector<Schedule> out;
  size_t start = 0;
  while (start < v.size()) {
    size_t comma = v.find(',', start);
    if (comma == std::string::npos) comma = v.size();
    const Schedule s = parseSchedule(flag, v.substr(start, comma - start));
    if (s.empty()) PHX_USER_ERROR(flag, " '", v, "': each entry must be a step > 0 or a time such as 30s");
    out.push_back(s);
    start = comma + 1;
  }
  return out;
}
}  // namespace

std::vector<Schedule> Config::killServerAt() const { return parseList("--kill-server", killServer); }
std::vector<Schedule> Config::killWorkerAt() const { return parseList("--kill-worker", killWorker); }

double Config::effectiveMomentum() const {
  if (momentum >= 0.0) return momentum;
  return (sync == "asp" || sync == "ssp") ? 0.8 : 0.9;
}

void Config::validate() const {
  if (batch < 1 || batch > 65536) PHX_USER_ERROR("--batch ", batch, " must be in 1..65536");
  if (epochs < 1 && steps <= 0) PHX_USER_ERROR("--epochs ", epochs, " must be at least 1");
  if (steps < 0) PHX_USER_ERROR("--steps ", steps, " must be >= 0 (0 = use --epochs)");
  if (!(lr > 0.0) || !std::isfinite(lr)) PHX_USER_ERROR("--lr ", lr, " must be a positive number");
  if (!(momentum < 1.0) || (momentum < 0.0 && momentum != -1.0))
    PHX_USER_ERROR("--momentum ", momentum, " must be in [0, 1)");
  if (!(weightDecay >= 0.0) || !std::isfinite(weightDecay))
    PHX_USER_ERROR("--weight-decay ", weightDecay, " must be >= 0");
  if (nesterov && effectiveMomentum() == 0.0) PHX_USER_ERROR("--nesterov needs --momentum > 0");
  if (lrSchedule != "constant" && lrSchedule != "cosine")
    PHX_USER_ERROR("--lr-schedule '", lrSchedule, "' is not known (accepted: constant, cosine)");
  if (device != "cpu" && device != "cuda" && device != "auto")
    PHX_USER_ERROR("--device '", device, "' is not known (accepted: cpu, cuda, auto)");
  if (threads < 0 || threads > 1024) PHX_USER_ERROR("--threads ", threads, " must be in 0..1024");
  if (evalBatch < 1 || evalBatch > 10000) PHX_USER_ERROR("--eval-batch must be in 1..10000");
  if (!(progressSeconds > 0.0)) PHX_USER_ERROR("--progress-every must be > 0 seconds");
  parseSchedule("--eval-every", evalEvery);
  if (servers < 1) PHX_USER_ERROR("--servers ", servers, " must be at least 1");
  if (replicas < 0) PHX_USER_ERROR("--replicas ", replicas, " must be >= 0");
  if (spares < 0) PHX_USER_ERROR("--spares ", spares, " must be >= 0");
  if (groupSize < 1) PHX_USER_ERROR("--group-size ", groupSize, " must be >= 1");
  if (sync != "bsp" && sync != "asp" && sync != "ssp")
    PHX_USER_ERROR("--sync '", sync, "' is not known (accepted: bsp, asp, ssp)");
  if (staleness < 0) PHX_USER_ERROR("--staleness ", staleness, " must be >= 0");
  if (aggregate != "sum" && aggregate != "mean")
    PHX_USER_ERROR("--aggregate '", aggregate, "' is not known (accepted: sum, mean)");
  if (!(peerTimeoutS > 0.0)) PHX_USER_ERROR("--peer-timeout must be > 0 seconds");
  if (recovery != "auto" && recovery != "none" && recovery != "checkpoint" && recovery != "chain" &&
      recovery != "stateless" && recovery != "hybrid")
    PHX_USER_ERROR("--recovery '", recovery,
                   "' is not known (accepted: auto, none, checkpoint, chain, stateless, hybrid)");
  const bool chained = recovery == "chain" || recovery == "hybrid";
  if (chained && replicas < 1)
    PHX_USER_ERROR("--recovery ", recovery, " needs a replica chain: add --replicas 1 (or more; "
                   "each shard then takes 1 + R ranks)");
  if (replicas > 0 && !chained && recovery != "auto")
    PHX_USER_ERROR("--replicas ", replicas, " is only used by --recovery chain or hybrid (now ",
                   recovery, "): drop --replicas or choose chain");
  if (chainMode != "sync" && chainMode != "async")
    PHX_USER_ERROR("--chain-mode '", chainMode, "' is not known (accepted: sync, async)");
  if (replicateEvery < 1) PHX_USER_ERROR("--replicate-every must be at least 1 step");
  if (statelessBuffer < 0) PHX_USER_ERROR("--stateless-buffer must be >= 0");
  if (backlogRule != "sum" && backlogRule != "mean" && backlogRule != "staleness")
    PHX_USER_ERROR("--backlog-rule '", backlogRule, "' is not known (accepted: sum, mean, staleness)");
  if (checkpointMode != "sync" && checkpointMode != "async")
    PHX_USER_ERROR("--checkpoint-mode '", checkpointMode, "' is not known (accepted: sync, async)");
  parseSchedule("--checkpoint-every", checkpointEvery);
  if (checkpointKeep < 1) PHX_USER_ERROR("--checkpoint-keep must be at least 1");
  if (heartbeatMs < 1) PHX_USER_ERROR("--heartbeat-ms must be at least 1");
  if (failureTimeoutMs < 2 * heartbeatMs)
    PHX_USER_ERROR("--failure-timeout-ms ", failureTimeoutMs, " must be at least twice --heartbeat-ms (",
                   heartbeatMs, ")");
  if (!(downtimeS >= 0.0)) PHX_USER_ERROR("--downtime must be >= 0 seconds");
  killServerAt();
  killWorkerAt();
}

}  // namespace phx
