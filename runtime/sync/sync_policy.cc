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

std::unique_ptr<SyncPolicy> makePolicy(const std::string& name, int staleness) {
  if (staleness < 0) PHX_USER_ERROR("--staleness ", staleness, " must be >= 0");
  if (name == "bsp") return std::make_unique<Bsp>();
  if (name == "asp") return std::make_unique<Asp>();
  if (name == "ssp") return std::make_unique<Ssp>(staleness);
  PHX_USER_ERROR("--sync '", name, "' is not known (accepted: bsp, asp, ssp)");
}

Aggregate parseAggregate(const std::string& s) {
  if (s == "sum") return Aggregate::kSum;
  if (s == "mean") return Aggregate::kMean;
  PHX_USER_ERROR("--aggregate '", s, "' is not known (accepted: sum, mean)");
}

}  // namespace phx::sync
