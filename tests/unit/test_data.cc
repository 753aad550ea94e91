// The IDX reader on files this test writes: a valid pair loads; every kind of damage is a
// UserError naming the file and the problem. And the epoch sharder's guarantees.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "runtime/core/error.h"
#include "runtime/core/metrics.h"
#include "runtime/data/fashion_mnist.h"

namespace phx::data {
namespace {

namespace fs = std::filesystem;

class IdxFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("phx_data_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::vector<uint8_t> header(uint32_t magic, std::vector<uint32_t> dims) {
    std::vector<uint8_t> b;
    auto put = [&](uint32_t v) {
      for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
    };
    put(magic);
    for (uint32_t d : dims) put(d);
    return b;
  }
  std::vector<uint8_t> images(int n, int rows = 28, int cols = 28, uint32_t magic = 0x803) {
    auto b = header(magic, {static_cast<uint32_t>(n), static_cast<uint32_t>(rows),
                            static_cast<uint32_t>(cols)});
    for (int i = 0; i < n * rows * cols; ++i) b.push_back(static_cast<uint8_t>(i * 7));
    return b;
  }
  std::vector<uint8_t> labels(int n, uint32_t magic = 0x801) {
    auto b = header(magic, {static_cast<uint32_t>(n)});
    for (int i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i % 10));
    return b;
  }
  std::string writeGz(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string p = (dir_ / name).string();
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
    return p;
  }
  std::string writeRaw(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                             static_cast<std::streamsize>(bytes.size()));
    return p;
  }
  static std::vector<uint8_t> readAll(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
  }
  // Expects a UserError whose message contains every fragment.
  static void expectError(const std::function<void()>& fn, std::vector<std::string> fragments) {
    try {
      fn();
      FAIL() << "no error";
    } catch (const UserError& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
      for (const auto& f : fragments) EXPECT_NE(m.find(f), std::string::npos) << m;
    }
  }
  fs::path dir_;
};

TEST_F(IdxFiles, ValidPairLoadsAndNormalises) {
  auto im = writeGz("im.gz", images(12));
  auto lb = writeGz("lb.gz", labels(12));
  const Dataset ds = loadIdxPair(im, lb);
  EXPECT_EQ(ds.count, 12);
  EXPECT_EQ(ds.labels[11], 1);
  std::vector<uint32_t> idx = {0, 11};
  std::vector<float> x(2 * 784);
  std::vector<int32_t> y(2);
  gatherBatch(ds, idx.data(), 2, x.data(), y.data());
  EXPECT_FLOAT_EQ(x[0], -1.0f);                             // pixel 0 -> (0/255 - .5)/.5
  EXPECT_FLOAT_EQ(x[1], 7.0f / 127.5f - 1.0f);              // pixel 7
  EXPECT_EQ(y[1], 1);
}

TEST_F(IdxFiles, PlainUncompressedFilesLoadToo) {
  const Dataset ds = loadIdxPair(writeRaw("im", images(3)), writeRaw("lb", labels(3)));
  EXPECT_EQ(ds.count, 3);
}

TEST_F(IdxFiles, MissingDirectory) {
  expectError([&] { loadFashionMnist((dir_ / "nope").string()); }, {"nope", "does not exist"});
}

TEST_F(IdxFiles, MissingFile) {
  expectError([&] { loadFashionMnist(dir_.string()); },
              {"train-images-idx3-ubyte.gz", "does not exist"});
}

TEST_F(IdxFiles, TruncatedImages) {
  auto bytes = images(10);
  bytes.resize(bytes.size() - 100);
  auto im = writeGz("im.gz", bytes);
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(10))); },
              {"im.gz", "truncated", "pixels"});
}

TEST_F(IdxFiles, TruncatedGzipStream) {
  auto im = writeGz("im.gz", images(50));
  auto gz = readAll(im);
  gz.resize(gz.size() / 2);
  writeRaw("im.gz", gz);
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(50))); }, {"im.gz"});
}

TEST_F(IdxFiles, CorruptGzipData) {
  auto im = writeGz("im.gz", images(50));
  auto gz = readAll(im);
  for (size_t i = gz.size() / 2; i < gz.size() / 2 + 16; ++i) gz[i] ^= 0x5a;
  writeRaw("im.gz", gz);
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(50))); }, {"im.gz", "corrupt"});
}

TEST_F(IdxFiles, WrongMagic) {
  auto im = writeGz("im.gz", images(4, 28, 28, 0x801));
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(4))); },
              {"im.gz", "wrong magic number 0x00000801", "0x00000803"});
  auto im2 = writeGz("im2.gz", images(4));
  auto lb = writeGz("lb2.gz", labels(4, 0x803));
  expectError([&] { loadIdxPair(im2, lb); }, {"lb2.gz", "wrong magic"});
}

TEST_F(IdxFiles, WrongDimensions) {
  auto im = writeGz("im.gz", images(4, 32, 32));
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(4))); },
              {"im.gz", "32x32", "expected 28x28"});
}

TEST_F(IdxFiles, CountMismatchAndBadLabel) {
  auto im = writeGz("im.gz", images(4));
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(5))); }, {"5 labels", "4 images"});
  auto lbBytes = labels(4);
  lbBytes.back() = 12;
  expectError([&] { loadIdxPair(im, writeGz("lb3.gz", lbBytes)); }, {"lb3.gz", "label 12"});
}

TEST_F(IdxFiles, TrailingGarbage) {
  auto bytes = images(2);
  bytes.push_back(1);
  auto im = writeGz("im.gz", bytes);
  expectError([&] { loadIdxPair(im, writeGz("lb.gz", labels(2))); }, {"im.gz", "unexpected data"});
}

TEST(EpochSharder, WorkersSeeDisjointPartsCoveringTheEpoch) {
  const size_t n = 1003;
  EpochSharder sh(n, 4, 17);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<uint32_t> seen;
    size_t total = 0;
    for (int w = 0; w < 4; ++w) {
      auto part = sh.shard(epoch, w);
      EXPECT_EQ(part.size(), sh.shardSize(w));
      total += part.size();
      seen.insert(part.begin(), part.end());
    }
    EXPECT_EQ(total, n);
    EXPECT_EQ(seen.size(), n);  // disjoint and complete
  }
  EXPECT_NE(sh.shard(0, 0), sh.shard(1, 0));        // reshuffled every epoch
  EXPECT_EQ(sh.shard(1, 2), EpochSharder(n, 4, 17).shard(1, 2));  // same seed, same order
  EXPECT_NE(sh.shard(0, 0), EpochSharder(n, 4, 18).shard(0, 0));
}

// The real dataset, when installed: the numbers infra-notes.md gives.
TEST(FashionMnist, DebianDatasetWhenInstalled) {
  if (!fs::exists(std::string(kDefaultDataDir) + "/t10k-labels-idx1-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const FashionMnist fm = loadFashionMnist(kDefaultDataDir);
  EXPECT_EQ(fm.train.count, 60000);
  EXPECT_EQ(fm.test.count, 10000);
  EXPECT_EQ(fm.test.labels[0], 9);
  std::vector<int> perClass(10);
  for (uint8_t l : fm.train.labels) ++perClass[l];
  for (int c : perClass) EXPECT_EQ(c, 6000);
}

}  // namespace
}  // namespace phx::data

// The summary stays valid JSON when a value is not a number (a chief that took over right
// before a stop has no training loss yet): null, never "nan" or "inf".
TEST(SummaryJson, NonFiniteNumbersAreNull) {
  EXPECT_EQ(phx::jsonNumber(std::nan("")), "null");
  EXPECT_EQ(phx::jsonNumber(1.0 / 0.0), "null");
  EXPECT_EQ(phx::jsonNumber(0.5), "0.500000");
  phx::Summary s;
  s.finalTestAccuracy = std::nan("");
  s.samplesPerS = 10;
  s.extra = {{"final_train_loss", phx::jsonNumber(std::nan(""))}};
  const std::string j = s.toJson();
  EXPECT_EQ(j.find("nan"), std::string::npos) << j;
  EXPECT_NE(j.find("\"final_test_accuracy\": null"), std::string::npos) << j;
  EXPECT_NE(j.find("\"final_train_loss\": null"), std::string::npos) << j;
}
