#!/usr/bin/env bash
# The runtime figures of docs/perf.md: (1) push+pull vs MPI_Allreduce (default and ring) for
# 100 K to 100 M floats at S = W = 2 and S = 1, W = 2; (2) one epoch of the cnn with 4 workers
# + 1 server (BSP, batch 32 each) against one process at the same total batch (128), with every
# rank's CPU time (an idle server should use a few percent of a core).
# Usage: apps/scripts/bench_runtime.sh build/bin/phoenix [OUTDIR]
set -euo pipefail
PHX=${1:?usage: bench_runtime.sh PATH/TO/phoenix [OUTDIR]}
OUT=${2:-phoenix-run/bench}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
echo "== push+pull vs allreduce, S=2 W=2"
"${MPIRUN[@]}" -n 4 "$PHX" bench pushpull --servers 2 --json "$OUT/pushpull_s2w2.json"
echo "== push+pull vs allreduce, S=1 W=2"
"${MPIRUN[@]}" -n 3 "$PHX" bench pushpull --servers 1 --json "$OUT/pushpull_s1w2.json"
echo "== cnn, 1 epoch: one process at batch 128 vs 4 workers x batch 32 + 1 server (BSP)"
"$PHX" train --epochs 1 --batch 128 --log-level warn --summary "$OUT/local_b128.json"
"${MPIRUN[@]}" -n 5 "$PHX" train --epochs 1 --servers 1 --sync bsp --log-level warn \
  --summary "$OUT/ps_w4s1.json"
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/local_b128.json")); b = json.load(open(f"{out}/ps_w4s1.json"))
print(f"one process, batch 128: {a['samples_per_s']:.0f} samples/s, test accuracy {a['final_test_accuracy']:.4f}")
print(f"4 workers + 1 server:   {b['samples_per_s']:.0f} samples/s, test accuracy {b['final_test_accuracy']:.4f}"
      f"  (ratio {b['samples_per_s'] / a['samples_per_s']:.2f})")
for r in b["ranks"]:
    print(f"  rank {r['rank']} {r['role']:6s} cpu {r['cpu_seconds']:7.2f} s of {r['wall_seconds']:6.2f} s wall"
          f" ({100 * r['cpu_seconds'] / max(r['wall_seconds'], 1e-9):5.1f} %)")
PY
