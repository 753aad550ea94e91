#!/usr/bin/env bash
# Detection and recovery times per recovery mode: N real kills each (mlp, 1 server, 4-5 workers,
# injected SIGKILL of the shard-0 server at a seeded random step), medians of the summaries'
# detected_ms (kill -> declared dead) and recovered_ms (kill -> first update applied by the
# new server). Usage: bench_recovery.sh PATH/TO/phoenix [N=5] [SYNC=asp]
set -u
PHX=${1:?usage: bench_recovery.sh PATH/TO/phoenix [N] [SYNC]}
N=${2:-5}
SYNC=${3:-asp}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RANDOM=7
printf "%-22s %5s %14s %14s %12s %10s\n" mode kills "detect_med_ms" "recover_med_ms" "lost_pushes" "acc"
for mode in checkpoint-sync checkpoint-async chain-sync chain-async stateless hybrid; do
  case $mode in
    checkpoint-*) args=(--recovery checkpoint --checkpoint-mode ${mode#checkpoint-} --checkpoint-every 10);;
    chain-*) args=(--recovery chain --chain-mode ${mode#chain-} --replicate-every 10 --replicas 1);;
    stateless) args=(--recovery stateless --checkpoint-every 10);;
    hybrid) args=(--recovery hybrid --replicas 1);;
  esac
  for i in $(seq 1 "$N"); do
    k=$((30 + RANDOM % 60))
    timeout 120 mpirun --oversubscribe --bind-to none --enable-recovery -n 7 "$PHX" train \
      --model mlp --batch 32 --steps 150 --threads 1 --eval-every 0 --log-level error --sync "$SYNC" \
      --servers 1 --spares 1 "${args[@]}" --kill-server $k --checkpoint-dir "$TMP/ck-$mode-$i" \
      --summary "$TMP/$mode-$i.json" > "$TMP/$mode-$i.log" 2>&1
  done
  /usr/bin/python3 - "$TMP" "$mode" "$N" <<'PY'
import json, statistics, sys, os
tmp, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
det, rec, lost, acc, got = [], [], [], [], 0
for i in range(1, n + 1):
    p = f"{tmp}/{mode}-{i}.json"
    if not os.path.exists(p): continue
    s = json.load(open(p)); got += 1
    for f in s["failures"]:
        det.append(f["detected_ms"]); rec.append(f["recovered_ms"])
    lost.append(s.get("acknowledged_pushes_lost", -1)); acc.append(s["final_test_accuracy"])
med = lambda v: statistics.median(v) if v else float("nan")
rng = lambda v: f"{min(v)}-{max(v)}" if v else "-"
print(f"{mode:<22} {got:>5} {med(det):>8.0f} ({rng(det)}) {med(rec):>6.0f} ({rng(rec)}) {max(lost) if lost else -1:>6} {med(acc):>10.4f}")
PY
done
