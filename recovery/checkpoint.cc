#include "recovery/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "recovery/view.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"

namespace fs = std::filesystem;

namespace phx::recovery {

namespace {

// HDF5 prints its own error stack on failures; we report errors ourselves.
void quietHdf5() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

void fsyncPath(const std::string& path, bool dir) {
  const int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) PHX_USER_ERROR("cannot open ", path, " to sync it: ", std::strerror(errno));
  ::fsync(fd);
  ::close(fd);
}

uint32_t crcFile(const std::string& path, uint64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) PHX_USER_ERROR("cannot read ", path);
  std::vector<char> buf(1 << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t n = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = in.gcount();
    if (got <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(got));
    n += static_cast<uint64_t>(got);
  }
  *size = n;
  return static_cast<uint32_t>(crc);
}

// RAII for hid_t
struct H {
  hid_t id;
  herr_t (*close)(hid_t);
  H(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~H() {
    if (id >= 0) close(id);
  }
  operator hid_t() const { return id; }
};

void check(bool ok, const std::string& file, const char* what) {
  if (!ok) PHX_USER_ERROR("HDF5 could not ", what, " in ", file);
}

template <class T>
void putAttr(hid_t obj, const char* name, hid_t type, const T& v, const std::string& file) {
  H space(H5Screate(H5S_SCALAR), H5Sclose);
  H a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check(a >= 0 && H5Awrite(a, type, &v) >= 0, file, "write an attribute");
}

void putStrAttr(hid_t obj, const char* name, const std::string& v, const std::string& file) {
  H type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, std::max<size_t>(1, v.size()));
  H space(H5Screate(H5S_SCALAR), H5Sclose);
  H a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check(a >= 0 && H5Awrite(a, type, v.empty() ? " " : v.c_str()) >= 0, file, "write an attribute");
}

template <class T>
T getAttr(hid_t obj, const char* name, hid_t type, const std::string& file) {
  T v{};
  H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (a < 0 || H5Aread(a, type, &v) < 0) PHX_USER_ERROR(file, " has no readable attribute '", name, "'");
  return v;
}

std::string getStrAttr(hid_t obj, const char* name, const std::string& file) {
  H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (a < 0) PHX_USER_ERROR(file, " has no attribute '", name, "'");
  H type(H5Aget_type(a), H5Tclose);
  const size_t n = H5Tget_size(type);
  std::string s(n, '\0');
  H mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem, n);
  if (H5Aread(a, mem, s.data()) < 0) PHX_USER_ERROR(file, ": attribute '", name, "' unreadable");
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

void putFloats(hid_t file, const char* name, const std::vector<float>& v, const std::string& path) {
  const hsize_t n = std::max<hsize_t>(1, v.size());
  H space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const hsize_t chunk = std::min<hsize_t>(n, 1 << 16);
  H5Pset_chunk(dcpl, 1, &chunk);
  H5Pset_fletcher32(dcpl);
  H d(H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
  std::vector<float> one(1, 0.0f);
  check(d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           v.empty() ? one.data() : v.data()) >= 0,
        path, "write a dataset");
}

std::vector<float> getFloats(hid_t file, const char* name, size_t n, const std::string& path) {
  H d(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  if (d < 0) PHX_USER_ERROR(path, " has no dataset '", name, "'");
  H space(H5Dget_space(d), H5Sclose);
  const hssize_t count = H5Sget_simple_extent_npoints(space);
  if (count != static_cast<hssize_t>(std::max<size_t>(1, n)))
    PHX_USER_ERROR(path, ": dataset '", name, "' has ", count, " values, expected ", n);
  std::vector<float> v(std::max<size_t>(1, n));
  if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
    PHX_USER_ERROR(path, ": dataset '", name, "' failed its Fletcher32 checksum or is unreadable");
  v.resize(n);
  return v;
}

int64_t versionOfName(const std::string& name) {
  // snap-<digits>.h5
  if (name.rfind("snap-", 0) != 0 || name.size() < 9 || name.substr(name.size() - 3) != ".h5")
    return -1;
  const std::string digits = name.substr(5, name.size() - 8);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

std::vector<std::pair<int64_t, std::string>> listSnapshots(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t v = versionOfName(e.path().filename().string());
    if (v >= 0) out.emplace_back(v, e.path().string());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

void writeMarker(const std::string& path, uint64_t size, uint32_t crc) {
  const std::string tmp = path + ".ok.tmp";
  {
    std::ofstream m(tmp, std::ios::trunc);
    m << size << " " << crc << "\n";
    if (!m) PHX_USER_ERROR("cannot write ", tmp, " (disk full or no permission?)");
  }
  fsyncPath(tmp, false);
  if (std::rename(tmp.c_str(), (path + ".ok").c_str()) != 0)
    PHX_USER_ERROR("cannot rename ", tmp, ": ", std::strerror(errno));
}

}  // namespace

uint32_t crcOf(const std::vector<float>& v) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(v.data()),
                                     static_cast<uInt>(v.size() * sizeof(float))));
}

std::string shardDir(const std::string& dir, int shard) {
  return dir + "/shard" + std::to_string(shard);
}

std::string snapshotPath(const std::string& dir, int shard, int64_t version) {
  char name[64];
  std::snprintf(name, sizeof name, "/snap-%012" PRId64 ".h5", version);
  return shardDir(dir, shard) + name;
}

void writeSnapshot(const std::string& dir, const ShardSnapshot& s, int keep) {
  quietHdf5();
  const std::string sdir = shardDir(dir, s.shard);
  std::error_code ec;
  fs::create_directories(sdir, ec);
  if (ec) PHX_USER_ERROR("cannot create checkpoint directory ", sdir, ": ", ec.message());
  const std::string path = snapshotPath(dir, s.shard, s.version);
  const std::string tmp = path + ".tmp";
  {
    H f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (f < 0) PHX_USER_ERROR("cannot create ", tmp, " (disk full or no permission?)");
    putFloats(f, "weights", s.weights, tmp);
    putFloats(f, "momentum", s.momentum, tmp);
    putAttr(f, "shard", H5T_NATIVE_INT, s.shard, tmp);
    putAttr(f, "lo", H5T_NATIVE_INT64, s.lo, tmp);
    putAttr(f, "hi", H5T_NATIVE_INT64, s.hi, tmp);
    putAttr(f, "version", H5T_NATIVE_INT64, s.version, tmp);
    putAttr(f, "round", H5T_NATIVE_INT64, s.round, tmp);
    putAttr(f, "gradients", H5T_NATIVE_INT64, s.gradients, tmp);
    const double now = unixNow();
    putAttr(f, "written_unix", H5T_NATIVE_DOUBLE, now, tmp);
    const uint32_t crc = crcOf(s.weights);
    putAttr(f, "weights_crc32", H5T_NATIVE_UINT32, crc, tmp);
    putStrAttr(f, "model", s.model, tmp);
    putStrAttr(f, "config", s.config, tmp);
    putStrAttr(f, "format", "phoenix shard snapshot v1", tmp);
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) PHX_USER_ERROR("cannot flush ", tmp, " (disk full?)");
  }
  // Test hook: die in the middle of a write (the file half written, no rename, no marker).
  if (const char* k = std::getenv("PHX_TEST_KILL_IN_CHECKPOINT")) {
    if (std::atoll(k) == s.version) {
      std::error_code e2;
      const auto size = fs::file_size(tmp, e2);
      if (!e2) fs::resize_file(tmp, size / 2, e2);
      log::warn("test hook: SIGKILL in the middle of writing ", tmp);
      ::raise(SIGKILL);
    }
  }
  fsyncPath(tmp, false);
  uint64_t size = 0;
  const uint32_t fileCrc = crcFile(tmp, &size);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    PHX_USER_ERROR("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno));
  fsyncPath(sdir, true);
  writeMarker(path, size, fileCrc);
  fsyncPath(sdir, true);
  // Keep the newest `keep` (and drop leftovers of interrupted writes).
  const auto all = listSnapshots(sdir);
  for (size_t i = static_cast<size_t>(std::max(1, keep)); i < all.size(); ++i) {
    fs::remove(all[i].second, ec);
    fs::remove(all[i].second + ".ok", ec);
  }
  for (const auto& e : fs::directory_iterator(sdir, ec)) {
    const std::string n = e.path().string();
    if (n.size() > 4 && n.substr(n.size() - 4) == ".tmp" && n != tmp) fs::remove(n, ec);
  }
}

ShardSnapshot readSnapshot(const std::string& file) {
  quietHdf5();
  std::error_code ec;
  if (!fs::exists(file, ec)) PHX_USER_ERROR(file, ": no such file");
  const std::string marker = file + ".ok";
  std::ifstream m(marker);
  uint64_t wantSize = 0;
  uint32_t wantCrc = 0;
  if (!(m >> wantSize >> wantCrc))
    PHX_USER_ERROR(file, ": no completion marker (", marker, "); the write did not finish");
  uint64_t size = 0;
  const uint32_t crc = crcFile(file, &size);
  if (size != wantSize)
    PHX_USER_ERROR(file, " is truncated or was changed: ", size, " bytes, the marker says ", wantSize);
  if (crc != wantCrc) PHX_USER_ERROR(file, " is corrupt: its CRC-32 does not match the marker's");
  H f(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (f < 0) PHX_USER_ERROR(file, " is not a readable HDF5 file");
  ShardSnapshot s;
  s.shard = getAttr<int>(f, "shard", H5T_NATIVE_INT, file);
  s.lo = getAttr<int64_t>(f, "lo", H5T_NATIVE_INT64, file);
  s.hi = getAttr<int64_t>(f, "hi", H5T_NATIVE_INT64, file);
  s.version = getAttr<int64_t>(f, "version", H5T_NATIVE_INT64, file);
  s.round = getAttr<int64_t>(f, "round", H5T_NATIVE_INT64, file);
  if (H5Aexists(f, "gradients") > 0) s.gradients = getAttr<int64_t>(f, "gradients", H5T_NATIVE_INT64, file);
  s.writtenUnix = getAttr<double>(f, "written_unix", H5T_NATIVE_DOUBLE, file);
  if (s.hi < s.lo || s.lo < 0) PHX_USER_ERROR(file, ": bad key range [", s.lo, ", ", s.hi, ")");
  const size_t n = static_cast<size_t>(s.hi - s.lo);
  s.weights = getFloats(f, "weights", n, file);
  s.momentum = getFloats(f, "momentum", n, file);
  s.model = getStrAttr(f, "model", file);
  s.config = getStrAttr(f, "config", file);
  if (getAttr<uint32_t>(f, "weights_crc32", H5T_NATIVE_UINT32, file) != crcOf(s.weights))
    PHX_USER_ERROR(file, ": the weights do not match their recorded CRC-32");
  return s;
}

LoadResult loadNewestSnapshot(const std::string& dir, int shard) {
  LoadResult r;
  for (const auto& [v, path] : listSnapshots(shardDir(dir, shard))) {
    try {
      ShardSnapshot s = readSnapshot(path);
      if (s.shard != shard) PHX_USER_ERROR(path, " belongs to shard ", s.shard, ", not ", shard);
      r.snap = std::move(s);
      r.file = path;
      return r;
    } catch (const UserError& e) {
      r.skipped.push_back(e.what());
      log::warn("skipping invalid snapshot: ", e.what());
    }
  }
  return r;
}

std::string describeSnapshot(const std::string& file) {
  const ShardSnapshot s = readSnapshot(file);
  double sq = 0, vsq = 0;
  for (float x : s.weights) sq += static_cast<double>(x) * x;
  for (float x : s.momentum) vsq += static_cast<double>(x) * x;
  std::ostringstream o;
  o << file << ": valid Phoenix shard snapshot (size and CRC-32 match the marker, Fletcher32 OK)\n"
    << "  shard      " << s.shard << "\n"
    << "  keys       [" << s.lo << ", " << s.hi << ")  (" << (s.hi - s.lo) << " floats)\n"
    << "  version    " << s.version << " updates applied\n"
    << "  round      " << s.round << "\n"
    << "  gradients  " << s.gradients << "\n"
    << "  model      " << s.model << "\n"
    << "  written    " << s.writtenUnix << " (unix seconds)\n"
    << "  |weights|  " << std::sqrt(sq) << "   crc32 " << crcOf(s.weights) << "\n"
    << "  |momentum| " << std::sqrt(vsq) << "\n"
    << "  config     " << s.config << "\n";
  return o.str();
}

AsyncSnapshotWriter::AsyncSnapshotWriter(std::string dir, int keep)
    : dir_(std::move(dir)), keep_(keep), thread_([this] { loop(); }) {}

AsyncSnapshotWriter::~AsyncSnapshotWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AsyncSnapshotWriter::submit(ShardSnapshot s) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !busy_ && !pending_; });
  waited_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pending_ = std::move(s);
  cv_.notify_all();
}

void AsyncSnapshotWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !busy_ && !pending_; });
}

std::string AsyncSnapshotWriter::lastError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void AsyncSnapshotWriter::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || pending_.has_value(); });
    if (!pending_) return;  // stop with nothing left to write
    ShardSnapshot s = std::move(*pending_);
    pending_.reset();
    busy_ = true;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::string err;
    try {
      writeSnapshot(dir_, s, keep_);
    } catch (const std::exception& e) {
      err = e.what();
      log::error("asynchronous checkpoint failed: ", err);
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lock.lock();
    writeS_ += dt;
    if (err.empty()) ++written_;
    else error_ = err;
    busy_ = false;
    cv_.notify_all();
  }
}

}  // namespace phx::recovery
