#!/usr/bin/env bash
# Real mpirun jobs (Open MPI, 2-6 ranks on this machine's cores, oversubscribed): the sync rules
# end to end, server counts and worker groups that must agree bit for bit, idle replicas and
# spares, waiting ranks that do not spin, and impossible layouts or bad data that end the whole
# job at once with one clear error. Every mpirun runs under `timeout`, so nothing outlives it.
# Usage: mpi_test.sh PATH/TO/phoenix
set -u
PHX=${1:?usage: mpi_test.sh PATH/TO/phoenix}
. "$(dirname "$0")/../lib/mpi_job_lib.sh"
MPIRUN=(mpirun --oversubscribe --bind-to none)
COMMON=(--model mlp --batch 32 --steps 40 --eval-every 20 --threads 1 --log-level warn)

# job NAME NP ARGS...: runs a job that must succeed and leave $TMP/NAME.json.
job() {
  local name=$1 np=$2; shift 2
  local out rc
  out=$(timeout 180 "${MPIRUN[@]}" -n "$np" "$PHX" train "${COMMON[@]}" \
        --summary "$TMP/$name.json" --metrics "$TMP/$name.csv" "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$TMP/$name.json" ]; then bad "$name: rc $rc: $out"; return 1; fi
  return 0
}
# field NAME KEY: a number from a summary.
field() { /usr/bin/python3 -c "import json,sys; print(json.load(open('$TMP/$1.json'))['$2'])"; }
# check NAME PYTHON-EXPRESSION over the summary `s`.
check() {
  local name=$1 expr=$2
  if /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/$name.json')); sys.exit(0 if ($expr) else 1)"; then
    ok
  else
    bad "$name: $expr does not hold: $(cat "$TMP/$name.json")"
  fi
}

# BSP, 1 server + 2 workers: exactly one update per step, every sample counted, it learns.
if job bsp1 3 --servers 1 --sync bsp; then
  check bsp1 "s['updates_applied'] == 40 and s['samples'] == 2 * 40 * 32"
  check bsp1 "s['final_test_accuracy'] > 0.70 and s['messages_rejected'] == 0"
  check bsp1 "s['max_clock_lead'] == 0"
  # the metrics CSV has the contract's columns and the evaluation rows
  head -1 "$TMP/bsp1.csv" | grep -q '^time_s,step,epoch,train_loss,test_accuracy,updates_applied,event$' \
    && ok || bad "bsp1 metrics header: $(head -1 "$TMP/bsp1.csv")"
  [ "$(grep -c ',end$' "$TMP/bsp1.csv")" -eq 1 ] && ok || bad "bsp1 metrics lack the end row"
  # waiting ranks do not spin: the server sleeps between messages
  check bsp1 "[r for r in s['ranks'] if r['role'] == 'server'][0]['cpu_seconds'] < 0.6 * [r for r in s['ranks'] if r['role'] == 'server'][0]['wall_seconds']"
fi

# Two shards: the same two gradients summed per key and the same element-wise SGD, so the
# final model is bit-identical to the one-server run.
if job bsp2 4 --servers 2 --sync bsp; then
  [ "$(field bsp1 final_test_loss)" = "$(field bsp2 final_test_loss)" ] && ok \
    || bad "S=2 final loss $(field bsp2 final_test_loss) differs from S=1 $(field bsp1 final_test_loss)"
fi

# A worker group of 2 reduces first and pushes once: the same model as two separate workers.
if job group 3 --servers 1 --sync bsp --group-size 2; then
  [ "$(field bsp1 final_test_loss)" = "$(field group final_test_loss)" ] && ok \
    || bad "group final loss $(field group final_test_loss) differs from $(field bsp1 final_test_loss)"
  check group "s['updates_applied'] == 40 and s['group_size'] == 2 and s['group_reduce'] == 'mpi'"
fi

# ASP: every push is an update; SSP: never more than s clocks ahead of the slowest.
if job asp 4 --servers 1 --sync asp; then
  # ASP's result depends on message timing: 'it learns' (chance is 0.10), not a fixed figure
  check asp "s['updates_applied'] == 3 * 40 and s['final_test_accuracy'] > 0.50"
fi
if job ssp 5 --servers 2 --sync ssp --staleness 2; then
  check ssp "s['updates_applied'] == 3 * 40 and s['max_clock_lead'] <= 2"
fi


# expect_fail NAME PATTERN NP ARGS...: the job ends non-zero, promptly, with the message.
expect_fail() {
  local name=$1 pat=$2 np=$3; shift 3
  local out rc
  out=$(timeout 60 "${MPIRUN[@]}" -n "$np" "$PHX" train "${COMMON[@]}" "$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then bad "$name: exit 0"; return; fi
  if [ $rc -eq 124 ]; then bad "$name: hung"; return; fi
  grep -qE -- "$pat" <<<"$out" && ok || bad "$name: output lacks /$pat/: $out"
}
expect_fail no-worker "leaving no worker: start at least 3 ranks" 2 --servers 2
expect_fail no-server "--servers" 3 --servers 0
expect_fail big-group "--group-size 4 is larger than the 2 workers" 3 --group-size 4
expect_fail bad-data "phoenix: error: .*fashion-mnist-missing" 3 --data-dir "$TMP/fashion-mnist-missing"
expect_fail straggle-server "--straggle 0:3: rank 0 is not a worker" 3 --servers 1 --straggle 0:3
# Replicas and spares under a launch that ends the job at a death (no survivor flag: recovery
# none) would sit idle: refused, naming the flag and the recovery in effect.
expect_fail idle "--replicas would have no effect in this run: .*now auto, here none" 6 --servers 1 --replicas 1 --spares 2

# Straggler injection: rank 3 is 3x slower per sample (it sleeps twice its compute time), the
# others not at all; under BSP everyone still does every step.
if job straggle 4 --servers 1 --sync bsp --straggle 3:3; then
  check straggle "{r['rank']: r['straggle_seconds'] > 0 for r in s['ranks'] if r['role'] == 'worker'} == {1: False, 2: False, 3: True} and s['updates_applied'] == 40"
  # the projection finds it within a few iterations (10 seen on a loaded machine: the median
  # is known only after the first rounds) and keeps it a straggler
  check straggle "[r for r in s['ranks'] if r['rank'] == 3][0]['first_straggler_step'] in range(0, 11) and [r for r in s['ranks'] if r['rank'] == 3][0]['straggler_steps'] >= 30"
  check straggle "max(r['straggler_steps'] for r in s['ranks'] if r['role'] == 'worker' and r['rank'] != 3) < [r for r in s['ranks'] if r['rank'] == 3][0]['straggler_steps'] / 2"
fi

# Sync-opt with one backup worker: every round applies 2 of the 3 workers' gradients; the
# straggler's late ones are dropped and counted; none is lost or applied twice.
if job syncopt 4 --servers 1 --sync syncopt --backup-workers 1 --straggle 3:4; then
  check syncopt "s['updates_applied'] == 40 and s['gradients_applied'] == 2 * 40 and s['gradients_applied'] + s['gradients_dropped'] == 3 * 40"
  # a dropped push is reported to its worker as dropped, never counted as acknowledged
  check syncopt "s['acknowledged_pushes_lost'] == 0 and s['pushes_acknowledged'] == s['gradients_applied']"
fi
# EPSP (enforced): 3 workers, rank 3 4x slower with one lane: pioneers take its unstarted
# shards; every sample any worker trained on was trained on once, and all of them were.
if job epsp 4 --servers 1 --sync epsp --straggle 3:4 --max-parallelism 1 --audit-samples "$TMP/epsp-audit"; then
  check epsp "s['updates_applied'] == 40 and s['shards_transferred'] > 0 and s['samples'] == 3 * 40 * 32"
  check epsp "sum(r['shards_given'] for r in s['ranks'] if r['role'] == 'worker') == s['shards_transferred']"
  if /usr/bin/python3 - "$TMP/epsp-audit" <<'PY'
import collections, glob, sys
c = collections.Counter(tuple(l.split()) for f in glob.glob(sys.argv[1] + ".w*") for l in open(f))
sys.exit(0 if len(c) == 3 * 40 * 32 and max(c.values()) == 1 else 1)
PY
  then ok; else bad "epsp: a sample was lost or computed twice"; fi
  # the per-worker projection rows: one per iteration, the straggler classed as such
  [ "$(wc -l < "$TMP/epsp.csv.worker2.csv")" -eq 41 ] && grep -q ",straggler," "$TMP/epsp.csv.worker2.csv" && ok \
    || bad "epsp: projection CSV of the straggler: $(head -3 "$TMP/epsp.csv.worker2.csv")"
fi
# EPSP slack and FlexRR: no worker more than s clocks ahead; transfer still happens.
if job epsp-slack 4 --servers 1 --sync epsp --epsp-mode slack --staleness 1 --straggle 3:4; then
  check epsp-slack "s['max_clock_lead'] <= 1 and s['updates_applied'] == 3 * 40"
fi
if job flexrr 4 --servers 1 --sync flexrr --staleness 2 --straggle 3:4; then
  check flexrr "s['max_clock_lead'] <= 2 and s['shards_transferred'] > 0"
fi
expect_fail epsp-group "--sync epsp shards each worker's iteration itself; use --group-size 1" 5 --servers 1 --sync epsp --group-size 2
expect_fail syncopt-all-backup "--backup-workers 2 must be smaller than the 2 worker" 3 --servers 1 --sync syncopt --backup-workers 2

# GPU worker groups (only where a GPU is usable; skipped here otherwise): with one GPU per
# worker the group reduces over NCCL and learns like the CPU group; workers that share a GPU
# fall back to MPI (auto) or stop with a clear error (--group-reduce nccl).
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 1 ]; then
  if job gpugroup 3 --servers 1 --sync bsp --group-size 2 --device cuda; then
    check gpugroup "s['updates_applied'] == 40 and s['group_reduce'] == '$([ "$gpus" -ge 2 ] && echo nccl || echo mpi)'"
    check gpugroup "abs(s['final_test_loss'] - $(field group final_test_loss)) < 1e-3"
  fi
  if [ "$gpus" -eq 1 ]; then
    expect_fail gpu-shared-nccl "share GPU .*one GPU per rank" 3 --servers 1 --group-size 2 --device cuda --group-reduce nccl
  fi
else
  # no GPU here: the group agrees on MPI under auto (checked above), and refuses nccl clearly
  expect_fail group-nccl-no-gpu "--group-reduce nccl: (worker 0 has no usable GPU|this build of Phoenix has no NCCL)" 3 --servers 1 --group-size 2 --device auto --group-reduce nccl
  echo "(no GPU: the GPU worker-group runs are skipped)"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
