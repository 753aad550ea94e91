#!/usr/bin/env bash
# The several-hosts figures of docs/perf.md (root: a bed of test hosts, apps/scripts/hostbed.sh):
#  (1) `phoenix bench pushpull` with every rank on its own host (S=2 W=2 over 4 hosts, S=1 W=2
#      over 3), push+pull against MPI_Allreduce over the same hosts and bytes, on plain veth
#      links and on links shaped to 1 Gbit/s (tbf);
#  (2) one epoch of the cnn, 1 server + 4 workers, BSP: one host (shared memory) against 3 hosts
#      (server on node1, 2 workers each on node2 and node3, one launch per host), plain and 1 Gbit/s.
# Usage: apps/scripts/bench_multihost.sh build/bin/phoenix [OUTDIR]   (about 4 minutes here)
set -uo pipefail
PHX=$(realpath "${1:?usage: bench_multihost.sh PATH/TO/phoenix [OUTDIR]}")
OUT=$(mkdir -p "${2:-phoenix-run/bench-multihost}" && cd "${2:-phoenix-run/bench-multihost}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
BEDSH=$HERE/hostbed.sh
LAUNCH=$HERE/phoenix-launch
"$BEDSH" check > /dev/null || { "$BEDSH" check; exit 2; }
BED=phxbm
trap '"$BEDSH" down $BED > /dev/null' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE PHX_BED=$BED \
  OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=198.18.0.0/24 OMPI_MCA_oob_tcp_if_include=198.18.0.0/24
SIZES=(100000 1000000 10000000)
for link in plain 1gbit; do
  "$BEDSH" down $BED > /dev/null
  if [ $link = plain ]; then "$BEDSH" up $BED 4; else "$BEDSH" up $BED 4 --rate 1000; fi
  cd "$OUT" || exit 1
  span() {  # NP HOSTS ARGS...: one mpirun from the head over the given hosts
    local np=$1 hosts=$2; shift 2
    timeout 600 "$BEDSH" exec $BED head mpirun --oversubscribe --bind-to none --mca plm_rsh_agent "$BEDSH agent" \
      --host "$hosts" -n "$np" "$PHX" "$@"
  }
  echo "== $link links: push+pull vs allreduce, S=2 W=2, one rank per host"
  span 4 198.18.0.11:1,198.18.0.12:1,198.18.0.13:1,198.18.0.14:1 bench pushpull --servers 2 --sizes "${SIZES[@]}" \
    --seconds 1 --json "$OUT/pushpull_s2w2_$link.json"
  echo "== $link links: push+pull vs allreduce, S=1 W=2, one rank per host"
  span 3 198.18.0.11:1,198.18.0.12:1,198.18.0.13:1 bench pushpull --servers 1 --sizes "${SIZES[@]}" \
    --seconds 1 --json "$OUT/pushpull_s1w2_$link.json"
  echo "== $link links: cnn 1 epoch, 1 server + 4 workers, BSP: one host, then 3 hosts"
  timeout 600 "$BEDSH" exec $BED node1 mpirun --oversubscribe --bind-to none -n 5 "$PHX" train --epochs 1 \
    --servers 1 --sync bsp --log-level warn --summary "$OUT/cnn_1host_$link.json"
  timeout 600 "$BEDSH" exec $BED head "$LAUNCH" --agent "$BEDSH agent" --hosts node1:1,node2:2,node3:2 -- \
    "$PHX" train --epochs 1 --servers 1 --sync bsp --log-level warn --summary "$OUT/cnn_3hosts_$link.json" 2>&1 |
    grep -v '^\[node[0-9]\] *$' | tail -3
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("\n| links | job | samples/s | test accuracy |\n|---|---|---|---|")
for link in ("plain", "1gbit"):
    for where in ("1host", "3hosts"):
        s = json.load(open(f"{out}/cnn_{where}_{link}.json"))
        print(f"| {link} | cnn, {where} | {s['samples_per_s']:.0f} | {s['final_test_accuracy']:.4f} |")
PY
