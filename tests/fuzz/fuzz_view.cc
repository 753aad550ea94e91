// libFuzzer harness: View::parse, the decoder of the membership views every rank receives
// from the network (recovery/view.cc). Malformed bytes must throw a Phoenix error, never crash
// or read out of bounds; a view that parses must serialise back to a view that parses equal.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <vector>

#include "recovery/view.h"
#include "runtime/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using phx::recovery::View;
  try {
    const View v = View::parse(data, size);
    const std::vector<unsigned char> again = v.serialize();
    const View w = View::parse(again.data(), again.size());
    if (w.serialize() != again) __builtin_trap();  // not a fixed point: the codec disagrees
  } catch (const phx::UserError&) {
  } catch (const phx::LibraryError&) {
  } catch (const phx::InternalError&) {
  }
  return 0;
}
