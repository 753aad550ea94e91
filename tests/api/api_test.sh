#!/usr/bin/env bash
# The library API (ctest `api_jobs`, labels mpi;api): Phoenix installed with `cmake --install`,
# apps/examples/own_model built against it with find_package(Phoenix), and real mpirun jobs of
# that program: its own model and data on model-agnostic servers, BSP equal over 1 and 2
# shards, a server SIGKILLed and replaced (checkpoint, chain sync: 0 acknowledged pushes lost,
# stateless: every buffered update applied), and bad use ending with one line.
# Usage: api_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: api_test.sh BUILD_DIR SOURCE_DIR}
SRC=${2:?usage: api_test.sh BUILD_DIR SOURCE_DIR}
. "$SRC/tests/lib/mpi_job_lib.sh"
MPIRUN=(mpirun --oversubscribe --bind-to none "${FT_FLAG[@]}" "${MPI_EXTRA[@]}")

t0=$SECONDS
if ! cmake --install "$BUILD" --prefix "$TMP/prefix" > "$TMP/install.log" 2>&1; then
  echo "FAIL: cmake --install: $(tail -5 "$TMP/install.log")"; exit 1; fi
if ! { cmake -S "$SRC/apps/examples/own_model" -B "$TMP/own" -DCMAKE_PREFIX_PATH="$TMP/prefix" &&
       cmake --build "$TMP/own"; } > "$TMP/own.log" 2>&1; then
  echo "FAIL: the example does not build against the installed package: $(grep -E 'rror' "$TMP/own.log" | head -5)"; exit 1; fi
[ -f "$TMP/prefix/include/phoenix/phoenix.h" ] && [ -f "$TMP/prefix/lib/cmake/Phoenix/PhoenixConfig.cmake" ] && ok ||
  bad "install: header or CMake package missing"
echo "  installed and built the example against it: $((SECONDS - t0)) s"
OWN=$TMP/own/own_model

# run NAME NP FLAGS...: a job that must finish with its summary
run() {
  local name=$1 np=$2; shift 2
  local t=$SECONDS
  timeout 120 "${MPIRUN[@]}" -n "$np" "$OWN" --log-level warn --summary "$TMP/$name.json" \
    --checkpoint-dir "$TMP/$name.ckpt" "$@" > "$TMP/$name.log" 2>&1; local rc=$?
  echo "  $name: $((SECONDS - t)) s"
  if [ $rc -ne 0 ] || [ ! -s "$TMP/$name.json" ]; then bad "$name: rc $rc: $(tail -8 "$TMP/$name.log")"; return 1; fi
}
check() {
  if /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/$1.json')); f=s['failures']; sys.exit(0 if ($2) else 1)"; then ok
  else bad "$1: $2 does not hold: $(head -c 1200 "$TMP/$1.json")"; grep -E "WARN|ERROR|error" "$TMP/$1.log" | tail -20; fi
}
field() { /usr/bin/python3 -c "import json; print(json.load(open('$TMP/$1.json'))['$2'])"; }

# 1. BSP over one and two shards: the same final weights (2 workers: a sum of two gradients
#    is exact in either order); the program's model and evaluation
run one 3 --servers 1 --sync bsp --recovery none &&
  check one "s['model'] == 'own-mlp-32-64-4' and s['parameters'] == 2372 and s['steps_completed'] == 400 and s['updates_applied'] == 400 and s['final_test_accuracy'] > 0.8"
run two 4 --servers 2 --sync bsp --recovery none &&
  { [ "$(field one final_weights_crc32)" = "$(field two final_weights_crc32)" ] && ok ||
      bad "BSP over 1 and 2 shards differs: $(field one final_weights_crc32) vs $(field two final_weights_crc32)"; }

# 2. A server killed (injection flag) and replaced, in three recovery modes
run ck 6 --servers 1 --spares 1 --sync bsp --recovery checkpoint --checkpoint-every 20 --kill-server 150 &&
  check ck "len(f) == 1 and f[0]['role'] == 'server' and f[0]['replaced_by'] == 1 and f[0]['recovered_ms'] > 0 and f[0]['rolled_back_steps'] <= 20 and s['steps_completed'] == 400 and s['final_test_accuracy'] > 0.8"
run chain 7 --servers 1 --replicas 1 --spares 1 --sync bsp --recovery chain --chain-mode sync --kill-server 150 &&
  check chain "len(f) == 1 and f[0]['replaced_by'] == 1 and s['pushes_acknowledged'] == s['gradients_applied'] and s['acknowledged_pushes_lost'] == 0 and s['final_test_accuracy'] > 0.8"
run stateless 6 --servers 1 --spares 1 --sync asp --recovery stateless --kill-server 300 &&
  check stateless "len(f) == 1 and s['buffer_overflow'] == 0 and s['buffered_updates'] > 0 and s['buffered_updates'] == f[0]['buffered_updates_applied'] and s['final_test_accuracy'] > 0.7"

# 3. Bad use: a flag about Phoenix's own models, one process
# (mpirun's status: Open MPI 4 with --enable-recovery exits 0 whatever the ranks return)
out=$(timeout 60 "${MPIRUN[@]}" -n 3 "$OWN" --model cnn 2>&1); rc=$?
[ $rc -ne 124 ] && echo "$out" | grep -q "error: --model is about Phoenix's own models" && ok ||
  bad "--model with an own model: rc $rc: $(echo "$out" | tail -3)"
out=$(timeout 60 "$OWN" --servers 1 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "start it with \`mpirun -n N\`" && ok || bad "one process: rc $rc: $out"

echo "api: $pass passed, $fail failed ($((SECONDS - t0)) s)"
[ $fail -eq 0 ]
