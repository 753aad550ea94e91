#include "runtime/sync/sync_policy.h"

#include "runtime/core/error.h"

namespace phx::sync {

namespace {

class Bsp final : public SyncPolicy {
 public:
  std::string name() const override { return "bsp"; }
  bool roundBased() const override { return true; }
  bool mayStart(int64_t clock, int64_t version, int64_t) const override {
    return version >= clock;
  }
};

class Asp final : public SyncPolicy {
 public:
  std::string name() const override { return "asp"; }
  bool roundBased() const override { return false; }
  bool mayStart(int64_t, int64_t, int64_t) const override { return true; }
};

class SyncOpt final : public SyncPolicy {
 public:
  explicit SyncOpt(int b) : b_(b) {}
  std::string name() const override { return "syncopt(b=" + std::to_string(b_) + ")"; }
  bool roundBased() const override { return true; }
  bool mayStart(int64_t clock, int64_t version, int64_t) const override { return version >= clock; }
  int backupWorkers() const override { return b_; }

 private:
  int b_;
};

class Ssp final : public SyncPolicy {
 public:
  explicit Ssp(int s) : s_(s) {}
  std::string name() const override { return "ssp(s=" + std::to_string(s_) + ")"; }
  bool roundBased() const override { return false; }
  bool mayStart(int64_t clock, int64_t, int64_t minClock) const override {
    return minClock >= clock - s_;
  }

 private:
  int s_;
};

}  // namespace

std::unique_ptr<SyncPolicy> makePolicy(const std::string& name, int staleness, int backupWorkers,
                                       const std::string& scaling) {
  if (staleness < 0) PHX_USER_ERROR("--staleness ", staleness, " must be >= 0");
  if (backupWorkers < 0) PHX_USER_ERROR("--backup-workers ", backupWorkers, " must be >= 0");
  if (backupWorkers > 0 && name != "syncopt")
    PHX_USER_ERROR("--backup-workers is for --sync syncopt (now ", name, ")");
  std::unique_ptr<SyncPolicy> p;
  Scaling own = Scaling::kNone;
  if (name == "bsp") {
    p = std::make_unique<Bsp>();
  } else if (name == "asp") {
    p = std::make_unique<Asp>();
  } else if (name == "ssp") {
    p = std::make_unique<Ssp>(staleness);
  } else if (name == "syncopt") {
    p = std::make_unique<SyncOpt>(backupWorkers);
  } else if (name == "consgd") {
    p = std::make_unique<Asp>();
    own = Scaling::kConstant;
  } else if (name == "dynsgd") {
    p = std::make_unique<Asp>();
    own = Scaling::kStaleness;
  } else {
    PHX_USER_ERROR("--sync '", name, "' is not known (accepted: bsp, asp, ssp, syncopt, consgd, dynsgd)");
  }
  if (scaling.empty() || scaling == "none") {
    p->setScaling(own);
  } else {
    if (p->roundBased() || own != Scaling::kNone)
      PHX_USER_ERROR("--scale-updates ", scaling, " combines with --sync asp or ssp only (now ", name, ")");
    if (scaling == "constant")
      p->setScaling(Scaling::kConstant);
    else if (scaling == "staleness")
      p->setScaling(Scaling::kStaleness);
    else
      PHX_USER_ERROR("--scale-updates '", scaling, "' is not known (accepted: none, constant, staleness)");
  }
  return p;
}

Aggregate parseAggregate(const std::string& s) {
  if (s == "sum") return Aggregate::kSum;
  if (s == "mean") return Aggregate::kMean;
  PHX_USER_ERROR("--aggregate '", s, "' is not known (accepted: sum, mean)");
}

}  // namespace phx::sync
