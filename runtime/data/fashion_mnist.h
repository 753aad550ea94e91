// Fashion-MNIST from Debian's dataset-fashion-mnist (gzipped IDX files), held as bytes and
// normalised per batch (mean 0.5, std 0.5, as in the papers). The EpochSharder gives each of W
// workers a disjoint part of every epoch's seeded permutation, so the workers together see
// every sample exactly once per epoch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace phx::data {

inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

struct Dataset {
  int count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> images;  // count * rows * cols
  std::vector<uint8_t> labels;  // count
  int sampleSize() const { return rows * cols; }
};

struct FashionMnist {
  Dataset train, test;
};

// Reads one IDX image file and its label file (gzipped, or plain: zlib reads both). Every
// problem (missing file, truncation, bad gzip data or checksum, wrong magic, wrong dimensions,
// counts that differ, labels out of range) throws UserError naming the file.
Dataset loadIdxPair(const std::string& imagesPath, const std::string& labelsPath,
                    int expectRows = 28, int expectCols = 28, int numClasses = 10);

// Loads {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from dir.
FashionMnist loadFashionMnist(const std::string& dir);

// Writes samples idx[0..n) of ds into x ([n, rows*cols] floats, (p/255 - 0.5)/0.5) and y.
void gatherBatch(const Dataset& ds, const uint32_t* idx, int n, float* x, int32_t* y);

class EpochSharder {
 public:
  EpochSharder(size_t samples, int workers, uint64_t seed);
  // The sample indices worker w processes in epoch e (a contiguous part of the epoch's
  // permutation; parts differ in size by at most one).
  std::vector<uint32_t> shard(int epoch, int worker) const;
  size_t shardSize(int worker) const;

 private:
  size_t samples_;
  int workers_;
  uint64_t seed_;
};

}  // namespace phx::data
