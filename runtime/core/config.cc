#include "runtime/core/config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
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

bool Config::spawnReplacements() const {
  if (spawn == "off" || effectiveRecovery() == "none") return false;
  return spawn == "on" || launchCanSpawn;
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

namespace {
double parseFactor(const std::string& flag, const std::string& entry, const std::string& text) {
  char* end = nullptr;
  const double f = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(f >= 1.0) || !std::isfinite(f))
    PHX_USER_ERROR(flag, " '", entry, "': the factor must be a number >= 1 (e.g. 3 for three times slower)");
  return f;
}
StraggleSpec parseStraggle(const std::string& fixed, const std::string& random) {
  StraggleSpec s;
  size_t start = 0;
  while (start < fixed.size()) {
    size_t comma = fixed.find(',', start);
    if (comma == std::string::npos) comma = fixed.size();
    const std::string e = fixed.substr(start, comma - start);
    const size_t colon = e.find(':');
    // (the text strtol parses must outlive `end`, which points into it)
    const std::string rankText = colon == std::string::npos ? std::string() : e.substr(0, colon);
    char* end = nullptr;
    const long rank = colon == std::string::npos ? -1 : std::strtol(rankText.c_str(), &end, 10);
    if (colon == std::string::npos || colon == 0 || *end != '\0' || rank < 0)
      PHX_USER_ERROR("--straggle '", fixed, "': each entry is RANK:FACTOR, e.g. 4:3");
    s.fixed.emplace_back(static_cast<int>(rank), parseFactor("--straggle", e, e.substr(colon + 1)));
    start = comma + 1;
  }
  if (!random.empty()) {
    const size_t colon = random.find(':');
    const std::string pText = colon == std::string::npos ? std::string() : random.substr(0, colon);
    char* end = nullptr;
    const double p = colon == std::string::npos ? -1 : std::strtod(pText.c_str(), &end);
    if (colon == std::string::npos || colon == 0 || *end != '\0' || !(p >= 0.0 && p <= 1.0))
      PHX_USER_ERROR("--straggle-random '", random, "': expected P:FACTOR with P in [0, 1], e.g. 0.1:3");
    s.p = p;
    s.factor = parseFactor("--straggle-random", random, random.substr(colon + 1));
  }
  return s;
}
}  // namespace

StraggleSpec Config::straggleSpec() const { return parseStraggle(straggle, straggleRandom); }

double StraggleSpec::factorFor(uint64_t seed, int rank, int64_t step) const {
  double f = 1.0;
  for (const auto& [r, x] : fixed)
    if (r == rank) f = std::max(f, x);
  if (p > 0) {
    // Deterministic per (seed, rank, step): the same run straggles the same way.
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank) * 0xBF58476D1CE4E5B9ull +
                 static_cast<uint64_t>(step) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    if (static_cast<double>(x >> 11) / 9007199254740992.0 < p) f = std::max(f, factor);
  }
  return f;
}

std::vector<int> Config::straggleRanks() const {
  std::vector<int> out;
  for (const auto& [r, x] : parseStraggle(straggle, straggleRandom).fixed) out.push_back(r);
  return out;
}

double Config::effectiveMomentum() const {
  if (momentum >= 0.0) return momentum;
  return (sync == "asp" || sync == "ssp" || sync == "consgd" || sync == "dynsgd" || sync == "flexrr" ||
          (sync == "epsp" && epspMode == "slack"))
             ? 0.8
             : 0.9;
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
  if (evalSamples < 0) PHX_USER_ERROR("--eval-samples ", evalSamples, " must be >= 0 (0: the whole test set)");
  if (!(progressSeconds > 0.0)) PHX_USER_ERROR("--progress-every must be > 0 seconds");
  parseSchedule("--eval-every", evalEvery);
  if (servers < 1) PHX_USER_ERROR("--servers ", servers, " must be at least 1");
  if (replicas < 0) PHX_USER_ERROR("--replicas ", replicas, " must be >= 0");
  if (spares < 0) PHX_USER_ERROR("--spares ", spares, " must be >= 0");
  if (spawn != "auto" && spawn != "on" && spawn != "off")
    PHX_USER_ERROR("--spawn '", spawn, "' is not known (accepted: auto, on, off)");
  if (spawn == "on" && !launchCanSpawn)
    PHX_USER_ERROR("--spawn on: this launch cannot start replacement processes (they need Open "
                   "MPI's mpirun with ", survivorFlag, "; under srun use --spares K)");
  if (groupSize < 1) PHX_USER_ERROR("--group-size ", groupSize, " must be >= 1");
  if (sync != "bsp" && sync != "asp" && sync != "ssp" && sync != "syncopt" && sync != "consgd" &&
      sync != "dynsgd" && sync != "flexrr" && sync != "epsp")
    PHX_USER_ERROR("--sync '", sync,
                   "' is not known (accepted: bsp, asp, ssp, syncopt, consgd, dynsgd, flexrr, epsp)");
  if (epspMode != "enforced" && epspMode != "slack")
    PHX_USER_ERROR("--epsp-mode '", epspMode, "' is not known (accepted: enforced, slack)");
  if (shardedSync() && (shards < 1 || shards > batch))
    PHX_USER_ERROR("--shards ", shards, " must be in 1..--batch (", batch, "): a shard is at least one sample");
  if (shardedSync() && (maxParallelism < 1 || maxParallelism > 64))
    PHX_USER_ERROR("--max-parallelism ", maxParallelism, " must be in 1..64");
  if (backupWorkers < 0) PHX_USER_ERROR("--backup-workers ", backupWorkers, " must be >= 0");
  if (backupWorkers > 0 && sync != "syncopt")
    PHX_USER_ERROR("--backup-workers is for --sync syncopt (now ", sync, ")");
  if (scaleUpdates != "none" && scaleUpdates != "constant" && scaleUpdates != "staleness")
    PHX_USER_ERROR("--scale-updates '", scaleUpdates, "' is not known (accepted: none, constant, staleness)");
  if (scaleUpdates != "none" && sync != "asp" && sync != "ssp")
    PHX_USER_ERROR("--scale-updates ", scaleUpdates, " combines with --sync asp or ssp only (now ", sync,
                   "; consgd and dynsgd scale on their own)");
  if (staleness < 0) PHX_USER_ERROR("--staleness ", staleness, " must be >= 0");
  if (groupReduce != "auto" && groupReduce != "mpi" && groupReduce != "nccl")
    PHX_USER_ERROR("--group-reduce '", groupReduce, "' is not known (accepted: auto, mpi, nccl)");
  if (groupReduce == "nccl" && device == "cpu")
    PHX_USER_ERROR("--group-reduce nccl reduces on GPUs: use --device cuda (or --group-reduce mpi for CPU workers)");
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
  parseStraggle(straggle, straggleRandom);
  if (!(stragglerTheta >= 0.0) || !std::isfinite(stragglerTheta))
    PHX_USER_ERROR("--straggler-theta ", stragglerTheta, " must be >= 0");
}

bool Config::isGiven(const std::string& flag) const {
  return std::find(given.begin(), given.end(), flag) != given.end();
}

bool Config::localSnapshots() const {
  if (recovery == "checkpoint") return true;
  if (recovery != "auto") return false;
  for (const char* f : {"--checkpoint-dir", "--checkpoint-every", "--checkpoint-mode", "--checkpoint-keep", "--resume"})
    if (isGiven(f)) return true;
  return false;
}

void Config::checkFlagsTakeEffect(bool oneProcess) const {
  // (flag, why it has no effect here); the first given one is reported
  std::vector<std::pair<const char*, std::string>> unused;
  auto need = [&](const char* flag, bool effective, const std::string& why) {
    if (!effective) unused.emplace_back(flag, why);
  };
  need("--epochs", steps <= 0, "--steps is also given and sets the length of the run; pass one of the two");
  if (oneProcess) {
    const std::string job = "; one process has one worker and no servers (run a job: mpirun -n N phoenix train ... --servers S)";
    for (const char* f : {"--servers", "--replicas", "--spares", "--spawn", "--group-size", "--sync", "--epsp-mode",
                          "--shards", "--max-parallelism", "--transfer", "--audit-samples", "--backup-workers",
                          "--scale-updates", "--staleness", "--group-reduce", "--aggregate", "--peer-timeout",
                          "--chain-mode", "--replicate-every", "--stateless-buffer", "--backlog-rule",
                          "--heartbeat-ms", "--failure-timeout-ms", "--kill-server", "--kill-worker", "--downtime",
                          "--straggle", "--straggle-random", "--straggler-theta"})
      need(f, false, detail::concat("it sets up the ranks of an mpirun job", job));
    // (--checkpoint-dir and --checkpoint-keep also serve the snapshot of a stop signal, in every mode)
    const bool snaps = localSnapshots();
    for (const char* f : {"--checkpoint-every", "--checkpoint-mode"})
      need(f, snaps, detail::concat("periodic snapshots are written with --recovery checkpoint (now ", recovery, ")"));
  } else {
    const std::string rec = effectiveRecovery();
    const std::string recNow = recovery == "auto" ? detail::concat("auto, here ", rec) : rec;
    const bool chained = rec == "chain" || rec == "hybrid";
    const bool stateless = rec == "stateless" || rec == "hybrid";
    const bool snaps = rec == "checkpoint" || rec == "stateless";
    const bool epsp = sync == "epsp";
    const bool rounds = sync == "bsp" || sync == "syncopt" || (epsp && epspMode == "enforced");
    need("--epsp-mode", epsp, detail::concat("it chooses how --sync epsp bounds its workers (now --sync ", sync, ")"));
    for (const char* f : {"--shards", "--transfer", "--audit-samples"})
      need(f, shardedSync(), detail::concat("the work is split into shards by --sync epsp or flexrr only (now --sync ", sync, ")"));
    need("--max-parallelism", epsp, detail::concat("only --sync epsp runs shards in parallel lanes (now --sync ", sync, ")"));
    need("--staleness", sync == "ssp" || sync == "flexrr" || (epsp && epspMode == "slack"),
         detail::concat("the staleness bound is used by --sync ssp, flexrr and epsp --epsp-mode slack (now --sync ", sync,
                        epsp ? " --epsp-mode " + epspMode : std::string(), ")"));
    need("--aggregate", rounds || groupSize > 1,
         detail::concat("it combines the gradients of one round (--sync bsp, syncopt, epsp enforced) or of a "
                        "--group-size group; --sync ", sync, " applies each push on its own"));
    need("--group-reduce", groupSize > 1, "it chooses how a worker group reduces, and --group-size is 1");
    need("--spawn", rec != "none", detail::concat("replacements are started for --recovery modes other than none (now ", recNow, ")"));
    need("--downtime", rec != "none", detail::concat("it delays the takeover of a replacement, and --recovery is ", recNow));
    for (const char* f : {"--chain-mode", "--replicas"})
      need(f, chained, detail::concat("it sets up the replica chain of --recovery chain or hybrid (now ", recNow, ")"));
    need("--spares", rec != "none", detail::concat("spares take over dead ranks, and --recovery is ", recNow));
    need("--replicate-every", chained && chainMode == "async",
         detail::concat("replicas are refreshed every N steps with --recovery chain or hybrid and --chain-mode async (now ",
                        recNow, chained ? ", --chain-mode " + chainMode : std::string(), ")"));
    for (const char* f : {"--stateless-buffer", "--backlog-rule"})
      need(f, stateless, detail::concat("the workers buffer updates during an outage with --recovery stateless or hybrid (now ",
                                        recNow, ")"));
    // (--checkpoint-dir and --checkpoint-keep also serve the snapshots of a stop signal, in every mode)
    for (const char* f : {"--checkpoint-every", "--checkpoint-mode"})
      need(f, snaps, detail::concat("servers write periodic snapshots with --recovery checkpoint or stateless (now ", recNow,
                                    rec == "none" && !launchSurvives ? "; this launch kills the whole job when a rank dies: "
                                    "launch with mpirun " + survivorFlag : std::string(), ")"));
  }
  for (const auto& [flag, why] : unused)
    if (isGiven(flag)) PHX_USER_ERROR(flag, " would have no effect in this run: ", why);
}

}  // namespace phx
