#!/usr/bin/env bash
# End-to-end checks of the phoenix command: help lists every flag, bad values are rejected
# with a message naming what is accepted, bad data gives one error line and a non-zero exit,
# and a short training on the real dataset writes the metrics CSV and summary JSON.
# Usage: cli_test.sh PATH/TO/phoenix
set -u
PHX=${1:?usage: cli_test.sh PATH/TO/phoenix}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_fail NAME PATTERN ARGS...: non-zero exit, stderr+stdout matches PATTERN, no crash.
expect_fail() {
  local name=$1 pat=$2; shift 2
  local out rc
  out=$(timeout 60 "$PHX" "$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then bad "$name: exit 0"; return; fi
  if [ $rc -ge 124 ]; then bad "$name: crashed or hung (rc $rc): $out"; return; fi
  if ! grep -qE -- "$pat" <<<"$out"; then bad "$name: output lacks /$pat/: $out"; return; fi
  ok
}

help=$("$PHX" train --help 2>&1)
for f in --model --data-dir --batch --epochs --steps --seed --lr --momentum --weight-decay \
         --device --threads --metrics --summary --eval-every --log-level --config; do
  grep -q -- "$f" <<<"$help$("$PHX" --help 2>&1)" && ok || bad "help lacks $f"
done
grep -q -- "--batch.*32" <<<"$help" && ok || bad "help lacks the default of --batch"

expect_fail negative-batch "batch.*(range|1)" train --batch -3
expect_fail unknown-model "accepted: cnn, mlp, synthetic:N" train --model resnet --steps 1
expect_fail lr-abc "--lr" train --lr abc
expect_fail bad-device "device" train --device tpu
expect_fail bad-group-reduce "group-reduce" train --group-reduce shm --steps 1
expect_fail group-reduce-cpu "--group-reduce nccl reduces on GPUs: use --device cuda" train --group-reduce nccl --device cpu --steps 1
expect_fail bad-spawn "spawn" train --spawn maybe --steps 1
expect_fail spawn-on-alone "--spawn on: this launch cannot start replacement processes" train --spawn on --steps 1
expect_fail bad-eval-every "eval-every.*accepted" train --eval-every 1x --steps 1
expect_fail missing-data-dir "data directory $TMP/none does not exist" train --data-dir "$TMP/none" --steps 1
mkdir -p "$TMP/broken"
head -c 1000 /dev/urandom > "$TMP/broken/train-images-idx3-ubyte.gz"
expect_fail corrupt-data "train-images-idx3-ubyte.gz" train --data-dir "$TMP/broken" --steps 1
expect_fail no-subcommand "subcommand" 
expect_fail unwritable-metrics "cannot write --metrics" train --steps 1 --metrics /nonexistent/dir/m.csv

# phoenix bench checkpoint: a tiny run writes, reads back and times the three modes.
if timeout 120 "$PHX" bench checkpoint --model mlp --steps 20 --every 10 --rounds 1 --io-repeats 1 \
     --dir "$TMP/bck" --json "$TMP/bck.json" > "$TMP/bck.txt" 2>&1; then
  /usr/bin/python3 -c "import json,sys; j=json.load(open('$TMP/bck.json')); sys.exit(0 if j['write_mb_s'] > 0 and j['read_mb_s'] > 0 and j['sync']['blocked_ms_per_snapshot'] > 0 and j['async']['ms_per_step'] > 0 else 1)" \
    && ok || bad "bench checkpoint json: $(cat "$TMP/bck.json")"
  [ ! -e "$TMP/bck" ] && ok || bad "bench checkpoint left its scratch directory"
else
  bad "bench checkpoint: $(tail -5 "$TMP/bck.txt")"
fi
expect_fail bench-ckpt-args "--every" bench checkpoint --every 50 --steps 10
expect_fail bench-recovery-mode "mode 'raft' is not known" bench recovery --modes raft
expect_fail resume-missing "--resume $TMP/none: no valid snapshot" train --model mlp --steps 5 --resume "$TMP/none"
expect_fail chain-alone "--recovery chain keeps the state on other ranks" train --model mlp --steps 5 --recovery chain --replicas 1
expect_fail stateless-alone "--recovery stateless keeps the state on other ranks" train --model mlp --steps 5 --recovery stateless

if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if timeout 300 "$PHX" train --steps 300 --threads 1 --eval-every 150 --metrics "$TMP/m.csv" \
       --summary "$TMP/s.json" > "$TMP/out.txt" 2>&1; then
    ok
    head -1 "$TMP/m.csv" | grep -qx 'time_s,step,epoch,train_loss,test_accuracy,updates_applied,event' \
      && ok || bad "metrics header: $(head -1 "$TMP/m.csv")"
    [ "$(wc -l < "$TMP/m.csv")" -eq 3 ] && ok || bad "expected 2 metric rows: $(cat "$TMP/m.csv")"
    grep -q 'samples/s' "$TMP/out.txt" && grep -q 'ETA' "$TMP/out.txt" && ok || bad "no progress line"
    /usr/bin/python3 - "$TMP/s.json" <<'PY' && ok || bad "summary: $(cat "$TMP/s.json")"
import json, sys
s = json.load(open(sys.argv[1]))
for k in ("final_test_accuracy", "steps", "samples_per_s", "updates_applied", "updates_lost", "failures"):
    assert k in s, k
assert s["steps"] == 300 and s["failures"] == []
assert s["final_test_accuracy"] > 0.70, s["final_test_accuracy"]
PY
  else
    bad "short training failed: $(tail -5 "$TMP/out.txt")"
  fi
else
  echo "SKIP: dataset-fashion-mnist not installed, no training run"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
