#!/usr/bin/env bash
# Per-rank CPU budgets (apps/scripts/cpu_budget.sh, ctest label `stragglers`): the emulation of
# a heterogeneous cluster is checked first, then training under it.
#  1. a rank with budget b computes at b / b_full of its unconstrained speed (phoenix bench
#     kernels, one thread, budgets 1, 0.5, 0.33 on an otherwise idle machine, best of 3, within 30 %: the idle
#     capacity is not taken);
#  2. EPSP with one worker at a third of the others' budget (no --straggle) trains every sample
#     exactly once, moves shards, and its projection names that worker a straggler far more
#     often than any other (per-step classification is noisy: more than twice as often), and
#     that worker runs one lane (its quota leaves no room for more);
#  3. the cgroups are gone afterwards.
# Exit 77 (skipped) without root or a writable cgroup v1 cpu controller.
# Usage: budget_test.sh PATH/TO/phoenix
set -u
PHX=${1:?usage: budget_test.sh PATH/TO/phoenix}
HERE=$(cd "$(dirname "$0")" && pwd)
BUDGET=$HERE/../../apps/scripts/cpu_budget.sh
. "$HERE/../lib/mpi_job_lib.sh"
if ! out=$("$BUDGET" check 2>&1); then echo "budget tests skipped: $out"; exit 77; fi
before=$(ls -d /sys/fs/cgroup/cpu/phoenix-budget-* 2>/dev/null | wc -l)

# 1. speed against budget
once() {  # once CORES: samples/s of the mlp, batch 32, 1 thread, under that budget
  timeout 60 "$BUDGET" run --budgets "0:$1" -- "$BUDGET" exec "$PHX" bench kernels --models mlp \
    --batches 32 --threads 1 --seconds 1.5 --json "$TMP/rate-$1.json" > /dev/null 2>&1 || { echo 0; return; }
  /usr/bin/python3 -c "import json; print(json.load(open('$TMP/rate-$1.json'))[0]['samples_per_s'])"
}
# three rounds, each budget run right after a run at budget 1: the ratio of each pair, the
# median of the three (this VM's speed drifts between seconds; a pair shares its moment)
declare -A ratios=([0.5]="" [0.33]="")
for round in 1 2 3; do
  for b in 0.5 0.33; do
    f=$(once 1)
    r=$(once $b)
    ratios[$b]="${ratios[$b]} $(/usr/bin/python3 -c "print($r / $f if $f > 0 else 0)")"
  done
done
for b in 0.5 0.33; do
  if /usr/bin/python3 -c "import statistics, sys; b = $b; xs = [float(v) for v in '${ratios[$b]}'.split()]; x = statistics.median(xs); print(f'  budget {b}: {x:.3f} of the speed at budget 1 (pairs {\", \".join(f\"{v:.3f}\" for v in xs)}; expected {b})'); sys.exit(0 if abs(x - b) <= 0.3 * b else 1)"; then
    ok
  else
    bad "budget $b: ran at ${ratios[$b]} of the speed at budget 1 (expected ${b}x within 30 %)"
  fi
done

# 2. EPSP under a budget straggler: 1 server + 4 workers on 2 cores, 0.4 core each, worker 3
#    (rank 4) a third of that
t0=$SECONDS
timeout 240 "$BUDGET" run --budgets "0:0.4,1:0.4,2:0.4,3:0.4,4:0.133" -- \
  mpirun --oversubscribe --bind-to none -n 5 "$BUDGET" exec "$PHX" train --model mlp --steps 60 \
  --batch 32 --threads 1 --eval-every 0 --sync epsp --servers 1 --log-level warn \
  --audit-samples "$TMP/audit" --metrics "$TMP/epsp.csv" --summary "$TMP/epsp.json" > "$TMP/epsp.log" 2>&1
rc=$?
echo "  epsp under budgets: rc $rc, $((SECONDS - t0)) s"
if [ $rc -eq 0 ] && [ -s "$TMP/epsp.json" ]; then
  check() {
    if /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/epsp.json')); sys.exit(0 if ($1) else 1)"; then ok; else
      bad "epsp budgets: $1 does not hold: $(head -c 600 "$TMP/epsp.json")"; fi
  }
  check "s['updates_applied'] == 60 and s['shards_transferred'] > 0"
  if /usr/bin/python3 - "$TMP/audit" <<'PY'
import collections, glob, sys
c = collections.Counter(tuple(l.split()) for f in glob.glob(sys.argv[1] + ".w*") for l in open(f))
sys.exit(0 if len(c) == 4 * 60 * 32 and max(c.values()) == 1 else 1)
PY
  then ok; else bad "epsp budgets: a sample was lost or trained twice"; fi
  # the projection names the budget straggler (worker 3) and no other worker
  if /usr/bin/python3 - "$TMP/epsp.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
w = {int(r["rank"]): r for r in s["ranks"] if r["role"] == "worker"}
slow = w[4]["straggler_steps"]
others = max(w[r]["straggler_steps"] for r in (1, 2, 3))
print(f"  straggler steps: rank 4 {slow:.0f}, others at most {others:.0f}; its lanes at most {w[4]['max_lanes']}")
# and a rank held to 0.13 core by its quota runs one lane (more would only split that core and
# start the shards the pioneers should take)
sys.exit(0 if slow >= 10 and others * 2 < slow and w[4]["max_lanes"] == 1 else 1)
PY
  then ok; else bad "epsp budgets: the projection did not name rank 4 alone"; fi
  # the straggler keeps back what the faster workers finish sooner: it gives most of its own
  # shards away (it computes only a share that matches its budget)
  if /usr/bin/python3 - "$TMP/epsp.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
w = {int(r["rank"]): r for r in s["ranks"] if r["role"] == "worker"}
print(f"  rank 4 computed {w[4]['shards_own']:.0f} of its shards and gave {w[4]['shards_given']:.0f} away")
sys.exit(0 if w[4]["shards_given"] > w[4]["shards_own"] else 1)
PY
  then ok; else bad "epsp budgets: the budget straggler kept most of its shards"; fi
  # per-iteration timelines: where each worker's step went
  if /usr/bin/python3 - "$TMP/epsp.csv.worker3.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ("compute_ms", "steal_ms", "exchange_ms", "cpu_ms")
sys.exit(0 if len(rows) == 60 and all(float(r[c]) >= 0 for r in rows for c in cols) else 1)
PY
  then ok; else bad "epsp budgets: the straggler's timeline (compute/steal/exchange/cpu ms) is missing"; fi
else
  bad "epsp under budgets: rc $rc: $(tail -5 "$TMP/epsp.log")"
fi

# 3. nothing left behind
after=$(ls -d /sys/fs/cgroup/cpu/phoenix-budget-* 2>/dev/null | wc -l)
[ "$after" -eq "$before" ] && ok || bad "cgroups left behind: $(ls -d /sys/fs/cgroup/cpu/phoenix-budget-*)"

echo "budget tests: $pass passed, $fail failed"
[ $fail -eq 0 ]
