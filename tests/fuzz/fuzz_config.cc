// libFuzzer harness: Phoenix's own parsers of flag values (runtime/core/config.cc): kill
// schedules (--kill-server, --kill-worker), straggler specs (--straggle, --straggle-random),
// CPU budgets, and the whole validate() of a Config built from them, as a config file or a
// command line would set them. Bad values must be a UserError with a message, never a crash.
// The input is split at newlines into the successive fields.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> f(1);
  for (size_t i = 0; i < size && f.size() <= 8; ++i) {
    if (data[i] == '\n') f.emplace_back();
    else f.back() += static_cast<char>(data[i]);
  }
  f.resize(8);
  phx::Config c;
  c.killServer = f[0];
  c.killWorker = f[1];
  c.straggle = f[2];
  c.straggleRandom = f[3];
  c.sync = f[4].empty() ? c.sync : f[4];
  c.recovery = f[5].empty() ? c.recovery : f[5];
  c.model = f[6].empty() ? c.model : f[6];
  try {
    (void)c.killServerAt();
    (void)c.killWorkerAt();
    c.validate();
  } catch (const phx::UserError&) {
  }
  return 0;
}
