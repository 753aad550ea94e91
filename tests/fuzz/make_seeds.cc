// Writes seed corpora of the fuzz harnesses: serialised views of a few layouts and failures,
// a real HDF5 snapshot, and small IDX files (tests/fuzz/corpus/{view,snapshot,idx} were made
// by it: build-fuzz/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus). The config and server seeds
// are written by hand (tests/fuzz/README.md).
// Usage: fuzz_make_seeds CORPUS_DIR
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <cstdio>
#include <string>
#include <vector>

#include "recovery/checkpoint.h"
#include "recovery/view.h"
#include "runtime/ps/layout.h"

namespace {
void put(const std::string& path, const std::vector<unsigned char>& b) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) { std::perror(path.c_str()); std::exit(1); }
  std::fwrite(b.data(), 1, b.size(), f);
  std::fclose(f);
}
void be32(std::vector<unsigned char>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) { std::fprintf(stderr, "usage: fuzz_make_seeds CORPUS_DIR\n"); return 2; }
  const std::string dir = argv[1];
  using namespace phx;
  // views: a chain of 2 replicas with a spare, its head failed; a respawn; many shards
  std::vector<double> none(8, 0);
  ps::RoleLayout a(8, 1, 2, 1, 1);
  recovery::View v = recovery::initialView(a);
  put(dir + "/view/initial-8", v.serialize());
  put(dir + "/view/head-failed", recovery::nextView(v, a, {0}, 1, 1.0, none, none).serialize());
  ps::RoleLayout b(6, 1, 0, 0, 1);
  recovery::View w = recovery::initialView(b);
  recovery::View sp = recovery::nextView(w, b, {0}, 1, 1.0, none, none, true);
  put(dir + "/view/respawning", sp.serialize());
  put(dir + "/view/respawned", recovery::afterRespawn(sp, 1, true).serialize());
  ps::RoleLayout c(7, 3, 0, 1, 1);
  put(dir + "/view/three-shards", recovery::initialView(c).serialize());
  // a snapshot of a small shard
  recovery::ShardSnapshot s;
  s.shard = 0; s.lo = 0; s.hi = 16; s.version = 7; s.round = 3; s.gradients = 14;
  s.weights.assign(16, 0.25f); s.momentum.assign(16, -0.5f);
  s.model = "mlp"; s.config = "{\"lr\": 0.05}"; s.writtenUnix = 1.7e9;
  const std::string tmp = dir + "/snapshot.tmp";
  recovery::writeSnapshot(tmp, s, 1);
  {
    const std::string f = recovery::snapshotPath(tmp, 0, 7);
    FILE* in = std::fopen(f.c_str(), "rb");
    std::vector<unsigned char> bytes;
    for (int ch; (ch = std::fgetc(in)) != EOF;) bytes.push_back(static_cast<unsigned char>(ch));
    std::fclose(in);
    put(dir + "/snapshot/small", bytes);
    std::filesystem::remove_all(tmp);
  }
  // IDX: 3 images of 2x2 and their labels, joined by the harness's 0xFF 0xFE 0xFD marker
  std::vector<unsigned char> img, lab;
  be32(img, 0x00000803); be32(img, 3); be32(img, 2); be32(img, 2);
  for (int i = 0; i < 12; ++i) img.push_back(static_cast<unsigned char>(i * 20));
  be32(lab, 0x00000801); be32(lab, 3);
  for (int i = 0; i < 3; ++i) lab.push_back(static_cast<unsigned char>(i));
  std::vector<unsigned char> pair = img;
  pair.insert(pair.end(), {0xFF, 0xFE, 0xFD});
  pair.insert(pair.end(), lab.begin(), lab.end());
  put(dir + "/idx/plain", pair);
  // the same pair gzipped (the reader takes both)
  auto gz = [](const std::vector<unsigned char>& in) {
    z_stream z{};
    deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
    std::vector<unsigned char> out(in.size() + 64);
    z.next_in = const_cast<unsigned char*>(in.data());
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    deflate(&z, Z_FINISH);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
  };
  std::vector<unsigned char> gpair = gz(img);
  gpair.insert(gpair.end(), {0xFF, 0xFE, 0xFD});
  const std::vector<unsigned char> glab = gz(lab);
  gpair.insert(gpair.end(), glab.begin(), glab.end());
  put(dir + "/idx/gzip", gpair);
  return 0;
}
