// Run outputs that scripts and tests read (a contract, see docs/user-guide.md):
// the --metrics CSV (one row per evaluation or event) and the --summary JSON.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace phx {

struct MetricsRow {
  double timeS = 0;
  int64_t step = 0;
  double epoch = 0;
  double trainLoss = 0;
  double testAccuracy = -1;  // < 0: not evaluated at this row (empty field)
  int64_t updatesApplied = 0;
  std::string event;
};

// Appends rows to a CSV file with the header
// time_s,step,epoch,train_loss,test_accuracy,updates_applied,event
class MetricsCsv {
 public:
  MetricsCsv() = default;
  // empty path: a no-op writer. append: continue a file another rank started (a chief that
  // took over), writing the header only to a new or empty file.
  explicit MetricsCsv(const std::string& path, bool append = false);
  ~MetricsCsv();
  MetricsCsv(const MetricsCsv&) = delete;
  MetricsCsv& operator=(const MetricsCsv&) = delete;
  void write(const MetricsRow& row);

 private:
  std::FILE* f_ = nullptr;
};

struct FailureRecord {
  int rank = -1;
  std::string role;
  int shard = -1, replacedBy = -1, epoch = 0;
  bool killTimeKnown = false;  // detected_ms from the kill (injected) or from the last heartbeat
  bool spawned = false;  // replaced by a process started for it (no spare was left)
  std::string detectedBy = "heartbeat";  // heartbeat | mpi (the MPI reported it: ULFM)
  double detectedMs = 0, recoveredMs = -1;  // -1: not recovered (or nothing to recover)
  int64_t rolledBackSteps = 0, bufferedUpdatesApplied = 0, updatesLost = 0;
};

// The --summary document. `extra` holds further "key": value pairs (values already JSON).
struct Summary {
  double finalTestAccuracy = 0;
  int64_t steps = 0;
  double samplesPerS = 0;
  int64_t updatesApplied = 0;
  int64_t updatesLost = 0;
  std::vector<FailureRecord> failures;
  std::vector<std::pair<std::string, std::string>> extra;
  std::string toJson() const;
};

std::string jsonString(const std::string& s);
// A number for JSON: std::to_string's digits, or null when it is NaN or infinite (JSON has no
// NaN: a chief that took over just before a stop has no training loss of its own yet).
std::string jsonNumber(double v);
// Writes text to path atomically (temporary file, then rename); throws UserError on failure.
void writeFileAtomic(const std::string& path, const std::string& text);

}  // namespace phx
