// libFuzzer harness: the HDF5 snapshot loader (recovery/checkpoint.cc readSnapshot), which
// every restore runs on files that a crash may have truncated or a disk corrupted. The seed
// corpus holds real snapshots; mutated ones must be rejected with a UserError naming the file
// (or, for a file that still validates, load with consistent sizes), never crash.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "recovery/checkpoint.h"
#include "runtime/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string file = [] {
    char tmpl[] = "/tmp/phx-fuzz-snap-XXXXXX";
    return std::string(mkdtemp(tmpl)) + "/snap-000000000001.h5";
  }();
  FILE* f = std::fopen(file.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const phx::recovery::ShardSnapshot s = phx::recovery::readSnapshot(file);
    if (static_cast<int64_t>(s.weights.size()) != s.hi - s.lo) __builtin_trap();
    if (!s.momentum.empty() && s.momentum.size() != s.weights.size()) __builtin_trap();
  } catch (const phx::UserError&) {
  } catch (const phx::LibraryError&) {
  }
  return 0;
}
