// HDF5 snapshots at the C++ level: bit-identical round trips, atomic writes with markers,
// keep-K pruning, and loading that skips a truncated or corrupt newest snapshot (naming it).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "recovery/checkpoint.h"
#include "runtime/core/error.h"

namespace phx {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("phx-test-recovery-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

recovery::ShardSnapshot makeSnap(int64_t version, size_t n) {
  recovery::ShardSnapshot s;
  s.shard = 0;
  s.lo = 100;
  s.hi = 100 + static_cast<int64_t>(n);
  s.version = version;
  s.round = version / 2;
  s.gradients = version * 3;
  for (size_t i = 0; i < n; ++i) {
    // values whose bits matter: denormals, negative zero, odd mantissas
    s.weights.push_back(static_cast<float>(i) * 1e-39f + static_cast<float>(version) / 7.0f);
    s.momentum.push_back(i % 5 == 0 ? -0.0f : 1.0f / static_cast<float>(i + version));
  }
  s.model = "mlp";
  s.config = "test";
  return s;
}

TEST(Snapshot, RoundTripIsBitIdentical) {
  TempDir d;
  const auto s = makeSnap(40, 5000);
  recovery::writeSnapshot(d.path.string(), s, 3);
  const auto r = recovery::readSnapshot(recovery::snapshotPath(d.path.string(), 0, 40));
  ASSERT_EQ(r.weights.size(), s.weights.size());
  EXPECT_EQ(std::memcmp(r.weights.data(), s.weights.data(), s.weights.size() * 4), 0);
  EXPECT_EQ(std::memcmp(r.momentum.data(), s.momentum.data(), s.momentum.size() * 4), 0);
  EXPECT_EQ(r.version, 40);
  EXPECT_EQ(r.round, 20);
  EXPECT_EQ(r.gradients, 120);
  EXPECT_EQ(r.lo, 100);
  EXPECT_EQ(recovery::crcOf(r.weights), recovery::crcOf(s.weights));
}

TEST(Snapshot, KeepsTheNewestK) {
  TempDir d;
  for (int64_t v = 10; v <= 50; v += 10) recovery::writeSnapshot(d.path.string(), makeSnap(v, 100), 2);
  int h5 = 0;
  for (const auto& e : fs::directory_iterator(recovery::shardDir(d.path.string(), 0)))
    h5 += e.path().extension() == ".h5" ? 1 : 0;
  EXPECT_EQ(h5, 2);
  EXPECT_EQ(recovery::loadNewestSnapshot(d.path.string(), 0).snap->version, 50);
}

TEST(Snapshot, TruncatedOrCorruptNewestIsSkippedAndNamed) {
  TempDir d;
  for (int64_t v : {10, 20, 30}) recovery::writeSnapshot(d.path.string(), makeSnap(v, 2000), 5);
  const std::string f30 = recovery::snapshotPath(d.path.string(), 0, 30);
  const std::string f20 = recovery::snapshotPath(d.path.string(), 0, 20);
  fs::resize_file(f30, fs::file_size(f30) / 2);  // truncated
  {
    std::fstream io(f20, std::ios::in | std::ios::out | std::ios::binary);  // one byte flipped
    io.seekp(static_cast<std::streamoff>(fs::file_size(f20) - 100));
    char c = 0;
    io.read(&c, 1);
    io.seekp(static_cast<std::streamoff>(fs::file_size(f20) - 100));
    c = static_cast<char>(c ^ 0x40);
    io.write(&c, 1);
  }
  const auto lr = recovery::loadNewestSnapshot(d.path.string(), 0);
  ASSERT_TRUE(lr.snap.has_value());
  EXPECT_EQ(lr.snap->version, 10);
  ASSERT_EQ(lr.skipped.size(), 2u);
  EXPECT_NE(lr.skipped[0].find("snap-000000000030.h5"), std::string::npos) << lr.skipped[0];
  EXPECT_NE(lr.skipped[0].find("truncated"), std::string::npos) << lr.skipped[0];
  EXPECT_NE(lr.skipped[1].find("snap-000000000020.h5"), std::string::npos) << lr.skipped[1];
  EXPECT_THROW(recovery::readSnapshot(f30), UserError);
}

TEST(Snapshot, AnInterruptedWriteLeavesNoMarkerAndIsIgnored) {
  TempDir d;
  recovery::writeSnapshot(d.path.string(), makeSnap(10, 100), 3);
  recovery::writeSnapshot(d.path.string(), makeSnap(20, 100), 3);
  fs::remove(recovery::snapshotPath(d.path.string(), 0, 20) + ".ok");  // as if killed before the marker
  const auto lr = recovery::loadNewestSnapshot(d.path.string(), 0);
  ASSERT_TRUE(lr.snap.has_value());
  EXPECT_EQ(lr.snap->version, 10);
  ASSERT_EQ(lr.skipped.size(), 1u);
  EXPECT_NE(lr.skipped[0].find("marker"), std::string::npos) << lr.skipped[0];
}

}  // namespace
}  // namespace phx
