#include "runtime/core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace phx::log {

namespace {
std::atomic<int> gLevel{static_cast<int>(Level::kInfo)};
int gRank = -1;
std::string gRole = "local";
// read without the lock by write()'s info filter (TSan found the race with setIdentity)
std::atomic<bool> gChief{true};
int gEpoch = 0;
std::mutex gMutex;

const char* levelName(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "?";
}
}  // namespace

Level parseLevel(const std::string& s) {
  if (s == "debug") return Level::kDebug;
  if (s == "info") return Level::kInfo;
  if (s == "warn") return Level::kWarn;
  if (s == "error") return Level::kError;
  PHX_USER_ERROR("unknown log level '", s, "' (accepted: debug, info, warn, error)");
}

void setLevel(Level level) { gLevel = static_cast<int>(level); }
Level level() { return static_cast<Level>(gLevel.load()); }

void setIdentity(int rank, const std::string& role, bool chief) {
  std::lock_guard<std::mutex> lock(gMutex);
  gRank = rank;
  gRole = role;
  gChief = chief;
}

void setEpoch(int epoch) {
  std::lock_guard<std::mutex> lock(gMutex);
  gEpoch = epoch;
}

static std::string prefixTagLocked() {
  if (gRank < 0) return gRole;
  return detail::concat("r", gRank, " ", gRole, " e", gEpoch);
}

std::string prefixTag() {
  std::lock_guard<std::mutex> lock(gMutex);
  return prefixTagLocked();
}

void write(Level lvl, const std::string& msg) {
  if (lvl < level()) return;
  if (lvl == Level::kInfo && !gChief.load() && level() > Level::kDebug) return;
  static const std::string host = [] {
    char h[256] = {0};
    gethostname(h, sizeof(h) - 1);
    return std::string(h);
  }();
  std::lock_guard<std::mutex> lock(gMutex);
  FILE* out = lvl >= Level::kWarn ? stderr : stdout;
  std::fprintf(out, "[%s %s] %s%s%s\n", host.c_str(), prefixTagLocked().c_str(),
               lvl == Level::kInfo ? "" : levelName(lvl), lvl == Level::kInfo ? "" : ": ",
               msg.c_str());
  std::fflush(out);
}

}  // namespace phx::log
