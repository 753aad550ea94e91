#include "runtime/core/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "runtime/core/error.h"

namespace phx {

MetricsCsv::MetricsCsv(const std::string& path, bool append) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) PHX_USER_ERROR("cannot write --metrics file ", path, ": ", std::strerror(errno));
  if (!append || std::ftell(f_) == 0)
    std::fprintf(f_, "time_s,step,epoch,train_loss,test_accuracy,updates_applied,event\n");
  std::fflush(f_);
}

MetricsCsv::~MetricsCsv() {
  if (f_) std::fclose(f_);
}

void MetricsCsv::write(const MetricsRow& r) {
  if (!f_) return;
  char acc[32] = "";
  if (r.testAccuracy >= 0) std::snprintf(acc, sizeof acc, "%.4f", r.testAccuracy);
  std::fprintf(f_, "%.3f,%lld,%.4f,%.5f,%s,%lld,%s\n", r.timeS, static_cast<long long>(r.step),
               r.epoch, r.trainLoss, acc, static_cast<long long>(r.updatesApplied),
               r.event.c_str());
  std::fflush(f_);  // a killed run keeps every row written so far
}

std::string jsonString(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += c;
        }
    }
  }
  return o + "\"";
}

std::string jsonNumber(double v) { return std::isfinite(v) ? std::to_string(v) : std::string("null"); }

std::string Summary::toJson() const {
  std::ostringstream os;
  os.precision(6);
  auto num = [](double v) {
    std::ostringstream o;
    o.precision(6);
    o << v;
    return std::isfinite(v) ? o.str() : std::string("null");
  };
  os << "{\n  \"final_test_accuracy\": " << num(finalTestAccuracy) << ",\n  \"steps\": " << steps
     << ",\n  \"samples_per_s\": " << num(samplesPerS) << ",\n  \"updates_applied\": " << updatesApplied
     << ",\n  \"updates_lost\": " << updatesLost << ",\n  \"failures\": [";
  for (size_t i = 0; i < failures.size(); ++i) {
    const auto& f = failures[i];
    os << (i ? ",\n" : "\n") << "    {\"rank\": " << f.rank << ", \"role\": " << jsonString(f.role)
       << ", \"shard\": " << f.shard << ", \"epoch\": " << f.epoch
       << ", \"replaced_by\": " << f.replacedBy
       << ", \"spawned\": " << (f.spawned ? "true" : "false")
       << ", \"kill_time_known\": " << (f.killTimeKnown ? "true" : "false")
       << ", \"detected_by\": " << jsonString(f.detectedBy)
       << ", \"detected_ms\": " << f.detectedMs << ", \"recovered_ms\": " << f.recoveredMs
       << ", \"rolled_back_steps\": " << f.rolledBackSteps
       << ", \"updates_lost\": " << f.updatesLost
       << ", \"buffered_updates_applied\": " << f.bufferedUpdatesApplied << "}";
  }
  os << (failures.empty() ? "]" : "\n  ]");
  for (const auto& [k, v] : extra) os << ",\n  " << jsonString(k) << ": " << v;
  os << "\n}\n";
  return os.str();
}

void writeFileAtomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) PHX_USER_ERROR("cannot write ", path, ": ", std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0)
    PHX_USER_ERROR("cannot write ", path, ": ", std::strerror(errno));
}

}  // namespace phx
