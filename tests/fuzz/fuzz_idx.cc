// libFuzzer harness: the IDX reader (runtime/data/fashion_mnist.cc) on arbitrary image and
// label files, plain or gzipped (zlib). Every problem must be a UserError naming the file.
// The input is split at its first 0xFF 0xFE 0xFD marker into the images and the labels file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "runtime/core/error.h"
#include "runtime/data/fashion_mnist.h"

namespace {
void put(const std::string& path, const uint8_t* p, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (n) std::fwrite(p, 1, n, f);
  std::fclose(f);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/phx-fuzz-idx-XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  size_t cut = size;
  for (size_t i = 0; i + 2 < size; ++i)
    if (data[i] == 0xFF && data[i + 1] == 0xFE && data[i + 2] == 0xFD) {
      cut = i;
      break;
    }
  const std::string img = dir + "/images", lab = dir + "/labels";
  put(img, data, cut);
  put(lab, cut + 3 <= size ? data + cut + 3 : data, cut + 3 <= size ? size - cut - 3 : 0);
  try {
    // small images keep each run fast (the decoder is the same at 28x28)
    const phx::data::Dataset ds = phx::data::loadIdxPair(img, lab, 2, 2, 10);
    (void)ds;
  } catch (const phx::UserError&) {
  }
  return 0;
}
