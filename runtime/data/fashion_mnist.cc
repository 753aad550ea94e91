#include "runtime/data/fashion_mnist.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "runtime/core/error.h"

namespace phx::data {

namespace {

constexpr uint32_t kImageMagic = 0x00000803;
constexpr uint32_t kLabelMagic = 0x00000801;

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    if (!exists(path))
      PHX_USER_ERROR("data file ", path, " does not exist (install Debian's dataset-fashion-mnist "
                     "or pass --data-dir)");
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) PHX_USER_ERROR("data file ", path, ": cannot open: ", std::strerror(errno));
  }
  ~GzFile() {
    if (f_) gzclose(f_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads exactly n bytes or throws naming what was being read.
  void read(void* dst, size_t n, const char* what) {
    size_t got = 0;
    auto* out = static_cast<unsigned char*>(dst);
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 30));
      const int r = gzread(f_, out + got, chunk);
      if (r < 0) corrupt();
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    if (got < n)
      PHX_USER_ERROR("data file ", path_, " is truncated: expected ", n, " bytes of ", what,
                     ", got ", got, " (re-install dataset-fashion-mnist)");
  }

  uint32_t readBigEndian32(const char* what) {
    unsigned char b[4];
    read(b, 4, what);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }

  // Reading past the end makes zlib check the gzip CRC; extra bytes are corruption too.
  void expectEnd() {
    unsigned char extra;
    const int r = gzread(f_, &extra, 1);
    if (r < 0) corrupt();
    if (r > 0) PHX_USER_ERROR("data file ", path_, " has unexpected data after its last record");
  }

 private:
  [[noreturn]] void corrupt() {
    int err = 0;
    const char* msg = gzerror(f_, &err);
    PHX_USER_ERROR("data file ", path_, " is corrupt (", (msg && *msg) ? msg : "zlib error",
                   "); re-install dataset-fashion-mnist");
  }
  std::string path_;
  gzFile f_ = nullptr;
};

std::string pick(const std::string& dir, const std::string& base) {
  const std::string gz = dir + "/" + base + ".gz";
  if (exists(gz)) return gz;
  const std::string plain = dir + "/" + base;
  if (exists(plain)) return plain;
  return gz;  // missing: the reader's error names the expected .gz file
}

}  // namespace

Dataset loadIdxPair(const std::string& imagesPath, const std::string& labelsPath, int expectRows,
                    int expectCols, int numClasses) {
  Dataset ds;
  {
    GzFile f(imagesPath);
    const uint32_t magic = f.readBigEndian32("header");
    if (magic != kImageMagic) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0x%08x", magic);
      PHX_USER_ERROR("data file ", imagesPath, ": wrong magic number ", buf,
                     " (an IDX image file starts with 0x00000803)");
    }
    const uint32_t count = f.readBigEndian32("header");
    const uint32_t rows = f.readBigEndian32("header");
    const uint32_t cols = f.readBigEndian32("header");
    if (rows != static_cast<uint32_t>(expectRows) || cols != static_cast<uint32_t>(expectCols))
      PHX_USER_ERROR("data file ", imagesPath, ": images are ", rows, "x", cols, ", expected ",
                     expectRows, "x", expectCols);
    if (count == 0 || count > 10'000'000)
      PHX_USER_ERROR("data file ", imagesPath, ": implausible image count ", count);
    ds.count = static_cast<int>(count);
    ds.rows = expectRows;
    ds.cols = expectCols;
    ds.images.resize(static_cast<size_t>(count) * rows * cols);
    f.read(ds.images.data(), ds.images.size(), "pixels");
    f.expectEnd();
  }
  {
    GzFile f(labelsPath);
    const uint32_t magic = f.readBigEndian32("header");
    if (magic != kLabelMagic) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0x%08x", magic);
      PHX_USER_ERROR("data file ", labelsPath, ": wrong magic number ", buf,
                     " (an IDX label file starts with 0x00000801)");
    }
    const uint32_t count = f.readBigEndian32("header");
    if (count != static_cast<uint32_t>(ds.count))
      PHX_USER_ERROR("data file ", labelsPath, " has ", count, " labels but ", imagesPath, " has ",
                     ds.count, " images");
    ds.labels.resize(count);
    f.read(ds.labels.data(), count, "labels");
    f.expectEnd();
    for (uint32_t i = 0; i < count; ++i)
      if (ds.labels[i] >= numClasses)
        PHX_USER_ERROR("data file ", labelsPath, ": label ", int{ds.labels[i]}, " at index ", i,
                       " is outside 0..", numClasses - 1);
  }
  return ds;
}

FashionMnist loadFashionMnist(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    PHX_USER_ERROR("data directory ", dir, " does not exist (install Debian's "
                   "dataset-fashion-mnist, or pass --data-dir)");
  FashionMnist fm;
  fm.train = loadIdxPair(pick(dir, "train-images-idx3-ubyte"), pick(dir, "train-labels-idx1-ubyte"));
  fm.test = loadIdxPair(pick(dir, "t10k-images-idx3-ubyte"), pick(dir, "t10k-labels-idx1-ubyte"));
  return fm;
}

void gatherBatch(const Dataset& ds, const uint32_t* idx, int n, float* x, int32_t* y) {
  const int sz = ds.sampleSize();
  constexpr float kScale = 1.0f / 127.5f;  // (p/255 - 0.5) / 0.5 = p/127.5 - 1
  for (int i = 0; i < n; ++i) {
    const uint8_t* src = ds.images.data() + static_cast<size_t>(idx[i]) * sz;
    float* dst = x + static_cast<size_t>(i) * sz;
    for (int j = 0; j < sz; ++j) dst[j] = static_cast<float>(src[j]) * kScale - 1.0f;
    y[i] = ds.labels[idx[i]];
  }
}

EpochSharder::EpochSharder(size_t samples, int workers, uint64_t seed)
    : samples_(samples), workers_(workers), seed_(seed) {
  PHX_ENFORCE(workers > 0, "need at least one worker");
  PHX_ENFORCE(samples >= static_cast<size_t>(workers), "fewer samples than workers");
}

size_t EpochSharder::shardSize(int worker) const {
  const size_t lo = samples_ * worker / workers_, hi = samples_ * (worker + 1) / workers_;
  return hi - lo;
}

std::vector<uint32_t> EpochSharder::shard(int epoch, int worker) const {
  PHX_ENFORCE(worker >= 0 && worker < workers_, "worker ", worker, " out of range");
  std::vector<uint32_t> perm(samples_);
  std::iota(perm.begin(), perm.end(), 0u);
  // Every worker derives the same permutation from (seed, epoch): no communication needed.
  std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = samples_ - 1; i > 0; --i) {
    std::uniform_int_distribution<size_t> d(0, i);
    std::swap(perm[i], perm[d(rng)]);
  }
  const size_t lo = samples_ * worker / workers_, hi = samples_ * (worker + 1) / workers_;
  return std::vector<uint32_t>(perm.begin() + lo, perm.begin() + hi);
}

}  // namespace phx::data
