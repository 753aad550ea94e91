// Logging: every line carries a "[host rN role eE]" prefix so that interleaved output of an
// mpirun job can be told apart. INFO is printed by one rank (the "chief") unless the level is
// debug; WARN and ERROR are printed by every rank.
#pragma once

#include <string>

#include "runtime/core/error.h"

namespace phx::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Parses "debug|info|warn|error"; throws UserError otherwise.
Level parseLevel(const std::string& s);
void setLevel(Level level);
Level level();
// Identity shown in the prefix; rank -1 means "not an MPI job".
void setIdentity(int rank, const std::string& role, bool chief);
void setEpoch(int epoch);
std::string prefixTag();  // "r3 worker e2" (or "local")

void write(Level level, const std::string& msg);

template <typename... Args>
void info(Args&&... args) { if (level() <= Level::kInfo) write(Level::kInfo, detail::concat(args...)); }
template <typename... Args>
void debug(Args&&... args) { if (level() <= Level::kDebug) write(Level::kDebug, detail::concat(args...)); }
template <typename... Args>
void warn(Args&&... args) { write(Level::kWarn, detail::concat(args...)); }
template <typename... Args>
void error(Args&&... args) { write(Level::kError, detail::concat(args...)); }

}  // namespace phx::log
