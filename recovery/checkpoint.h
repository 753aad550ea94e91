// HDF5 snapshots of one server shard: weights, momentum, version, round, key range and the run
// configuration, readable with h5dump and h5py.
//
// Layout: DIR/shard<S>/snap-<version>.h5 with datasets /weights and /momentum (float32,
// chunked, HDF5's Fletcher32 checksum per chunk) and attributes shard, lo, hi, version, round,
// model, config, written_unix, weights_crc32. A write is atomic: the file is written as .tmp,
// fsync'ed, renamed, the directory fsync'ed, then a marker snap-<version>.h5.ok (file size and
// CRC-32 of the whole file) is written the same way. A snapshot without its marker, of the
// wrong size, with a wrong CRC, or that HDF5 cannot read back with valid Fletcher32 sums is
// invalid: loading skips it (naming the file and why) and takes the previous one. The last
// `keep` snapshots are kept.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace phx::recovery {

struct ShardSnapshot {
  int shard = 0;
  int64_t lo = 0, hi = 0;
  int64_t version = 0;  // updates applied
  int64_t round = 0;    // BSP rounds closed (the workers' clock)
  int64_t gradients = 0;  // worker pushes in this state (lost-update accounting)
  std::vector<float> weights, momentum;
  std::string model, config;
  double writtenUnix = 0;
};

std::string shardDir(const std::string& dir, int shard);
std::string snapshotPath(const std::string& dir, int shard, int64_t version);

// Writes atomically and prunes to the newest `keep`; throws LibraryError/UserError on I/O
// errors (disk full, permissions), naming the file.
void writeSnapshot(const std::string& dir, const ShardSnapshot& s, int keep);

// Reads and fully validates one file; throws UserError naming the file and the problem.
ShardSnapshot readSnapshot(const std::string& file);

struct LoadResult {
  std::optional<ShardSnapshot> snap;
  std::string file;                   // the one loaded
  std::vector<std::string> skipped;   // "FILE: reason" for each invalid newer one
};
// The newest valid snapshot of a shard in dir (none: snap is empty).
LoadResult loadNewestSnapshot(const std::string& dir, int shard);

// Human-readable summary of a snapshot file (phoenix inspect).
std::string describeSnapshot(const std::string& file);

// CRC-32 of a float array (zlib), used to show restored weights are bit-identical.
uint32_t crcOf(const std::vector<float>& v);

// Background writer for --checkpoint-mode async: submit() hands over a copy and returns at
// once; if the previous write is still running it waits for it first (at most one snapshot in
// memory besides the live state, as CheckFreq does).
class AsyncSnapshotWriter {
 public:
  AsyncSnapshotWriter(std::string dir, int keep);
  ~AsyncSnapshotWriter();
  void submit(ShardSnapshot s);
  void flush();  // waits for the write in flight
  double waitedSeconds() const { return waited_; }
  double writeSeconds() const { return writeS_; }
  int64_t written() const { return written_; }
  std::string lastError() const;

 private:
  void loop();
  std::string dir_;
  int keep_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ShardSnapshot> pending_;
  bool busy_ = false, stop_ = false;
  double waited_ = 0, writeS_ = 0;
  int64_t written_ = 0;
  std::string error_;
  std::thread thread_;
};

}  // namespace phx::recovery
