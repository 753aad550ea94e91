#include "recovery/view.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/core/error.h"

namespace phx::recovery {

double unixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

int View::coordinator() const {
  for (int r = 0; r < static_cast<int>(alive.size()); ++r)
    if (alive[r]) return r;
  return -1;
}

int View::aliveCount() const {
  return static_cast<int>(std::count(alive.begin(), alive.end(), 1));
}

int View::shardOf(int rank) const {
  for (int s = 0; s < static_cast<int>(shardRank.size()); ++s)
    if (shardRank[s] == rank) return s;
  return -1;
}

int View::chiefRank(const ps::RoleLayout& layout) const {
  for (int r = layout.firstWorkerRank(); r < static_cast<int>(alive.size()); ++r)
    if (alive[r]) return r;
  return -1;
}

int View::backupOf(int rank) const {
  for (int s = 0; s < static_cast<int>(backups.size()); ++s)
    for (int r : backups[s])
      if (r == rank) return s;
  return -1;
}

int View::successorOf(int shard, int rank) const {
  if (shard < 0 || shard >= static_cast<int>(backups.size())) return -1;
  const std::vector<int>& b = backups[shard];
  if (rank == shardRank[shard]) return b.empty() ? -1 : b.front();
  for (size_t i = 0; i + 1 < b.size(); ++i)
    if (b[i] == rank) return b[i + 1];
  return -1;
}

View initialView(const ps::RoleLayout& layout) {
  View v;
  v.alive.assign(layout.worldSize(), 1);
  for (int s = 0; s < layout.servers(); ++s) {
    v.shardRank.push_back(layout.serverRank(s));
    v.shardSince.push_back(0);
    std::vector<int> chain;
    for (int j = 0; j < layout.replicas(); ++j) chain.push_back(layout.replicaRank(s, j));
    v.backups.push_back(chain);
  }
  const int firstSpare = layout.servers() * (1 + layout.replicas());
  for (int k = 0; k < layout.spares(); ++k) v.spares.push_back(firstSpare + k);
  return v;
}

int nextEpoch(int epoch, int issuer, int ranks) {
  ranks = std::max(ranks, 1);
  return (epoch / ranks + 1) * ranks + issuer;
}

View nextView(const View& v, const ps::RoleLayout& layout, const std::vector<int>& dead,
              int issuer, double nowUnix, const std::vector<double>& lastHeardUnix,
              const std::vector<double>& killUnix, bool canSpawn) {
  View n = v;
  n.epoch = nextEpoch(v.epoch, issuer, static_cast<int>(v.alive.size()));
  n.respawn.clear();
  n.issuer = issuer;
  for (int r : dead) n.alive[r] = 0;
  std::erase_if(n.spares, [&](int r) { return !n.alive[r]; });
  for (int r : dead) {
    FailureRecord f;
    f.rank = r;
    f.epoch = n.epoch;
    f.shard = v.shardOf(r);
    f.backupOf = v.backupOf(r);
    f.role = static_cast<int>(f.shard >= 0       ? ps::Role::kServer
                              : f.backupOf >= 0  ? ps::Role::kReplica
                                                 : layout.roleOf(r));
    f.killUnix = r < static_cast<int>(killUnix.size()) ? killUnix[r] : 0;
    f.lastHeardUnix = r < static_cast<int>(lastHeardUnix.size()) ? lastHeardUnix[r] : 0;
    f.detectedUnix = nowUnix;
    if (f.backupOf >= 0) std::erase(n.backups[f.backupOf], r);
    if (f.shard >= 0) {
      // Chain replication: the first live backup is promoted (it holds every acknowledged
      // update); only a shard without one goes to a spare.
      std::vector<int>& b = n.backups[f.shard];
      std::erase_if(b, [&](int x) { return !n.alive[x]; });
      if (!b.empty()) {
        n.shardRank[f.shard] = b.front();
        b.erase(b.begin());
        f.promoted = 1;
      } else if (!n.spares.empty()) {
        n.shardRank[f.shard] = n.spares.front();
        n.spares.erase(n.spares.begin());
      } else if (canSpawn) {
        n.shardRank[f.shard] = kRespawning;
        n.respawn.push_back(Respawn{r, f.shard, 0});
        f.spawned = 1;
      } else {
        n.shardRank[f.shard] = -1;
      }
      n.shardSince[f.shard] = n.epoch;
      f.replacedBy = f.spawned ? r : n.shardRank[f.shard];
    }
    n.failures.push_back(f);
  }
  // A shard whose replacement died as well (a failure during a rebuild) moves on again.
  for (int s = 0; s < static_cast<int>(n.shardRank.size()); ++s) {
    std::erase_if(n.backups[s], [&](int x) { return !n.alive[x]; });
    if (n.shardRank[s] >= 0 && !n.alive[n.shardRank[s]]) {
      if (!n.backups[s].empty()) {
        n.shardRank[s] = n.backups[s].front();
        n.backups[s].erase(n.backups[s].begin());
      } else {
        n.shardRank[s] = n.spares.empty() ? -1 : n.spares.front();
        if (!n.spares.empty()) n.spares.erase(n.spares.begin());
      }
      n.shardSince[s] = n.epoch;
    }
  }
  // A chain shorter than 1 + replicas gets a free spare at its tail (it receives the whole
  // state from its predecessor before it acknowledges anything).
  for (int s = 0; s < static_cast<int>(n.shardRank.size()); ++s)
    while (n.shardRank[s] >= 0 && static_cast<int>(n.backups[s].size()) < layout.replicas() &&
           !n.spares.empty()) {
      n.backups[s].push_back(n.spares.front());
      n.spares.erase(n.spares.begin());
    }
  // Still short and no spare left: a dead member of that chain is started again as its tail.
  if (canSpawn)
    for (int r : dead) {
      const int s = v.shardOf(r) >= 0 ? v.shardOf(r) : v.backupOf(r);
      if (s < 0 || n.shardRank[s] < 0 ||
          static_cast<int>(n.backups[s].size()) >= layout.replicas())
        continue;
      n.respawn.push_back(Respawn{r, s, 1});
    }
  return n;
}

View afterRespawn(const View& v, int issuer, bool ok) {
  View n = v;
  n.epoch = nextEpoch(v.epoch, issuer, static_cast<int>(v.alive.size()));
  n.issuer = issuer;
  for (const Respawn& p : v.respawn) {
    if (!ok) {
      if (!p.asTail && n.shardRank[p.shard] == kRespawning) n.shardRank[p.shard] = -1;
      continue;
    }
    n.alive[p.rank] = 1;
    if (p.asTail) {
      n.backups[p.shard].push_back(p.rank);
    } else {
      n.shardRank[p.shard] = p.rank;  // shardSince stays the failure's epoch: one failover
    }
  }
  n.respawn.clear();
  return n;
}

namespace {
struct Writer {
  std::vector<unsigned char> out;
  template <class T>
  void put(const T& x) {
    const auto* p = reinterpret_cast<const unsigned char*>(&x);
    out.insert(out.end(), p, p + sizeof x);
  }
  template <class T>
  void putVec(const std::vector<T>& v) {
    put(static_cast<int32_t>(v.size()));
    for (const T& x : v) put(x);
  }
};
struct Reader {
  const unsigned char* p;
  size_t left;
  template <class T>
  T get() {
    PHX_ENFORCE(left >= sizeof(T), "truncated view message");
    T x;
    std::memcpy(&x, p, sizeof x);
    p += sizeof x;
    left -= sizeof x;
    return x;
  }
  template <class T>
  std::vector<T> getVec() {
    const int32_t n = get<int32_t>();
    PHX_ENFORCE(n >= 0 && static_cast<size_t>(n) * sizeof(T) <= left, "malformed view message");
    std::vector<T> v(n);
    for (T& x : v) x = get<T>();
    return v;
  }
};
constexpr uint32_t kViewMagic = 0x56494557;  // "VIEW"
}  // namespace

std::vector<unsigned char> View::serialize() const {
  Writer w;
  w.put(kViewMagic);
  w.put(static_cast<int32_t>(epoch));
  w.put(static_cast<int32_t>(issuer));
  w.putVec(alive);
  w.putVec(shardRank);
  w.putVec(shardSince);
  w.put(static_cast<int32_t>(backups.size()));
  for (const auto& b : backups) w.putVec(b);
  w.putVec(spares);
  w.putVec(failures);
  w.putVec(respawn);
  return w.out;
}

View View::parse(const unsigned char* data, size_t bytes) {
  Reader r{data, bytes};
  PHX_ENFORCE(r.get<uint32_t>() == kViewMagic, "not a view message");
  View v;
  v.epoch = r.get<int32_t>();
  v.issuer = r.get<int32_t>();
  v.alive = r.getVec<char>();
  v.shardRank = r.getVec<int>();
  v.shardSince = r.getVec<int>();
  const int32_t nb = r.get<int32_t>();
  PHX_ENFORCE(nb >= 0 && nb == static_cast<int32_t>(v.shardRank.size()), "malformed view message");
  for (int32_t i = 0; i < nb; ++i) v.backups.push_back(r.getVec<int>());
  v.spares = r.getVec<int>();
  v.failures = r.getVec<FailureRecord>();
  v.respawn = r.getVec<Respawn>();
  PHX_ENFORCE(r.left == 0 && v.shardRank.size() == v.shardSince.size(), "malformed view message");
  return v;
}

}  // namespace phx::recovery
