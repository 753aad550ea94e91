// A small in-memory dataset for training tests (no files): two easily separable classes drawn
// as a bright top or a bright bottom half, plus noise.
#pragma once

#include <random>

#include "runtime/data/fashion_mnist.h"

namespace phx {

inline data::FashionMnist toyData(int n) {
  data::FashionMnist fm;
  std::mt19937 rng(1);
  for (data::Dataset* ds : {&fm.train, &fm.test}) {
    ds->count = n;
    ds->rows = ds->cols = 28;
    ds->images.resize(static_cast<size_t>(n) * 784);
    ds->labels.resize(n);
    for (int i = 0; i < n; ++i) {
      const int cls = static_cast<int>(rng() % 2);
      ds->labels[i] = static_cast<uint8_t>(cls);
      for (int p = 0; p < 784; ++p) {
        const bool top = p < 392;
        ds->images[static_cast<size_t>(i) * 784 + p] =
            static_cast<uint8_t>((top == (cls == 0) ? 180 : 40) + rng() % 60);
      }
    }
  }
  return fm;
}

}  // namespace phx
