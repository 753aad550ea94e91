// The flags of `phoenix train`, shared by the command and the library API (runtime/api/phoenix.h,
// the Python module): one definition, so a job's ranks parse the same flags alike whether they
// run `phoenix train`, `phoenix serve` or the caller's program.
#pragma once

#include <CLI/CLI.hpp>

#include "runtime/core/config.h"

namespace phx::api {

void addTrainFlags(CLI::App& app, Config& c);

}  // namespace phx::api
