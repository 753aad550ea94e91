// libFuzzer harness: JobSpec::parse, the decoder of the job's spec (parameter count, planned
// steps, initial parameters) that a replacement process receives with its view
// (runtime/ps/job_spec.h). Malformed bytes must throw a Phoenix error, never crash or read out
// of bounds; a spec that parses must serialise back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/ps/job_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const phx::ps::JobSpec s = phx::ps::JobSpec::parse(data, size);
    if (!s.valid()) __builtin_trap();  // parse accepted what valid() rejects
    const std::vector<unsigned char> again = s.serialize();
    if (again.size() != size || std::memcmp(again.data(), data, size) != 0) __builtin_trap();
  } catch (const phx::UserError&) {
  } catch (const phx::InternalError&) {
  }
  return 0;
}
