#!/usr/bin/env bash
# Jobs over several test hosts under Open MPI 5 + ULFM (ctest labels `multihost;ulfm`, root):
# the bed of test hosts (apps/scripts/hostbed.sh) is made here, outside the Debian 13 root; the
# jobs run inside the root (apps/scripts/ulfm_root.sh, which binds /run/netns into it), each
# one `mpirun --with-ft ulfm` from the head whose PRRTE daemons the bed's agent starts in the
# hosts (--prtemca plm_ssh_agent), TCP between the hosts.
#   1. BSP (fixed seed) on one host and over 3 hosts: the same final weights.
#   2. ASP over 3 hosts: every push an update.
#   3. The server process SIGKILLed by its PID on its host (chain sync): ULFM reports it
#      (detected_by "mpi"), the replica on another host takes over, 0 acknowledged updates lost.
#   4. A whole host lost (every process of node1, its PRRTE daemon included): Open MPI 5.0.7
#      ends the job (PRRTE cannot lose a daemon); checked: it ends by itself, non-zero, with
#      PRRTE's reason, and phoenix-launch (the launcher that survives a host under Open MPI 4.1)
#      refuses Open MPI 5 with its reason instead of starting a job that could not survive.
# Builds Phoenix in the root (build-ulfm, incremental) when needed. Exit 77 (skipped) when not
# root or when the bed cannot be made; every job runs under `timeout`; the bed is removed on
# every exit path.
# Usage: multihost_ulfm_test.sh            (outside: the bed, the build, then the jobs inside)
#        multihost_ulfm_test.sh --inside BED   (inside the root: the jobs)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEDSH=$HERE/../../apps/scripts/hostbed.sh
ROOTSH=$HERE/../../apps/scripts/ulfm_root.sh

if [ "${1:-}" != "--inside" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "multihost-ulfm: skipped: needs root (namespaces, chroot)"; exit 77; fi
  why=$("$BEDSH" check) || { echo "multihost-ulfm: skipped: $why"; exit 77; }
  "$ROOTSH" ensure || { echo "FAIL: the Open MPI 5 root could not be built (above)"; exit 1; }
  timeout 1500 "$ROOTSH" run "{ [ -f build-ulfm/CMakeCache.txt ] || cmake -S . -B build-ulfm \
      -DCMAKE_BUILD_TYPE=Release -DPHX_WITH_CUDA=OFF -DPHX_BUILD_BENCHMARKS=OFF > build-ulfm.configure.log 2>&1; } && \
      cmake --build build-ulfm --target phoenix -j \${JOBS:-2} > build-ulfm.build.log 2>&1" \
    || { echo "FAIL: Phoenix does not build under Open MPI 5 (logs: build-ulfm.*.log)"; exit 1; }
  BED=phxmu$$
  BED=${BED:0:6}
  "$BEDSH" down "$BED" > /dev/null  # a bed of this name left by a killed earlier run
  trap '"$BEDSH" down "$BED" > /dev/null' EXIT
  "$BEDSH" up "$BED" 3 || exit 1
  timeout 900 "$ROOTSH" run "MH_ONLY='${MH_ONLY:-}' MH_KEEP='${MH_KEEP:-}' bash tests/multihost/multihost_ulfm_test.sh --inside $BED"
  exit $?
fi

# --- inside the root ---
BED=$2
PHX=/phoenix/build-ulfm/bin/phoenix
[ -x "$PHX" ] || { echo "FAIL: no $PHX"; exit 1; }
. "$HERE/../lib/mpi_job_lib.sh"
. "$HERE/../lib/multihost_lib.sh"
# MH_KEEP=DIR (relative to the project) keeps the jobs' files (development)
trap '[ -n "${MH_KEEP:-}" ] && cp -r "$TMP" "/phoenix/$MH_KEEP"; rm -rf "$TMP"' EXIT
unset OMPI_MCA_oob_tcp_if_include  # (Open MPI 4 only; PRRTE takes prte_if_include)
export PHX_BED=$BED OMPI_MCA_btl=self,sm,tcp OMPI_MCA_btl_tcp_if_include=198.18.0.0/24 \
  PRTE_MCA_prte_if_include=198.18.0.0/24
cd "$TMP" || exit 1
echo "  $(mpirun --version | head -1)"
COMMON=(--model mlp --batch 32 --threads 1 --eval-every 25 --log-level warn)
MPIRUN=(mpirun --oversubscribe --bind-to none --with-ft ulfm)

# span NAME SLOTS ARGS...: one mpirun from the head over node1..node3 with SLOTS=A,B,C ranks on
# them (ranks in order: node1's first)
span() {
  local name=$1 slots=$2 a b c; shift 2
  IFS=, read -r a b c <<< "$slots"
  timeout 150 "$BEDSH" exec "$BED" head "${MPIRUN[@]}" --prtemca plm_ssh_agent "$BEDSH agent" \
    --host "198.18.0.11:$a,198.18.0.12:$b,198.18.0.13:$c" -n $((a + b + c)) \
    "$PHX" train "${COMMON[@]}" --summary "$TMP/$name.json" --metrics "$TMP/$name.csv" \
    --checkpoint-dir "$TMP/$name.ckpt" "$@" > "$TMP/$name.log" 2>&1
  echo $? > "$TMP/$name.rc"
}

# 1. BSP, 2 workers, fixed seed: on node1 alone and over the 3 hosts.
if want sec1; then
  t0=$SECONDS
  timeout 120 "$BEDSH" exec "$BED" node1 "${MPIRUN[@]}" -n 4 "$PHX" train "${COMMON[@]}" --steps 60 \
    --servers 1 --spares 1 --sync bsp --summary "$TMP/one.json" > "$TMP/one.log" 2>&1; echo $? > "$TMP/one.rc"
  span bsp 1,2,1 --steps 60 --servers 1 --spares 1 --sync bsp
  echo "  bsp on 1 host and over 3 hosts: $((SECONDS - t0)) s"
  if finished one && finished bsp; then
    c1=$(field one final_weights_crc32) c3=$(field bsp final_weights_crc32)
    [ "$c1" = "$c3" ] && ok || bad "final weights differ: one host $c1, 3 hosts $c3"
    check bsp "s['updates_applied'] == 60 and s['samples'] == 2 * 60 * 32"
  fi
fi

# 2. ASP over the 3 hosts (server on node1, the spare and 2 workers on node2, 2 workers on node3).
if want sec2; then
  t0=$SECONDS
  span asp 1,3,2 --steps 60 --servers 1 --spares 1 --sync asp
  echo "  asp over 3 hosts: $((SECONDS - t0)) s"
  finished asp && check asp "s['updates_applied'] == 4 * 60 and s['final_test_accuracy'] > 0.5"
fi

# pid_on HOST: the PID of the phoenix process on HOST (the bed's host namespace)
pid_on() {
  local p
  for p in $("$BEDSH" pids "$BED" "$1"); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = phoenix ] && { echo "$p"; return 0; }
  done
  return 1
}

# 3. The server (rank 0, node1) SIGKILLed by its PID at step 100; its replica (rank 1, node2)
#    takes over under chain sync. --spawn off: a new replica spawned across the bed's hosts
#    aborts in its MPI_Init under 5.0.7 ("OPAL ERROR: Not supported" in dpm.c, PRRTE grpcomm
#    "Not found"), and the survivors then leave after --peer-timeout (docs/recovery.md).
if want sec3; then
  t0=$SECONDS
  span proc 1,3,2 --steps 400 --servers 1 --replicas 1 --recovery chain --chain-mode sync --sync bsp \
    --spawn off &
  runner=$!
  if wait_step proc 100 && victim=$(pid_on node1); then
    kill -KILL "$victim"
  else
    echo "  proc: never reached step 100 (or no phoenix process on node1)"
  fi
  wait $runner
  echo "  proc: the server process on node1 killed, $((SECONDS - t0)) s"
  if finished proc; then
    check proc "len(f) == 1 and f[0]['rank'] == 0 and f[0]['replaced_by'] == 1 and f[0]['detected_by'] == 'mpi'"
    check proc "s['steps_completed'] == s['steps'] and s['acknowledged_pushes_lost'] == 0 and s['updates_lost'] == 0"
    echo "  proc: $(/usr/bin/python3 -c "import json; f=json.load(open('$TMP/proc.json'))['failures'][0]; print('detected', f['detected_ms'], 'ms, recovered', f['recovered_ms'], 'ms after the kill')")"
  fi
fi

# 4. node1 lost as a whole (the server and PRRTE's daemon there): 5.0.7 ends the job.
if want sec4; then
  t0=$SECONDS
  span host 1,3,2 --steps 400 --servers 1 --replicas 1 --recovery chain --chain-mode sync --sync bsp &
  runner=$!
  wait_step host 100 && "$BEDSH" kill "$BED" node1 > /dev/null
  wait $runner
  rc=$(cat "$TMP/host.rc")
  echo "  host: node1 lost, the job ended with rc $rc after $((SECONDS - t0)) s"
  # mpirun's exit status is its own (5.0.7 exited 0 here); what counts: the job ended by itself,
  # with PRRTE's reason, and no rank wrote a summary as if it had finished.
  if [ "$rc" -ne 124 ] && [ ! -s "$TMP/host.json" ] && tr -d '\000' < "$TMP/host.log" | grep -q "lost communication"; then ok
  else bad "host: expected Open MPI 5.0.7 to end the job with PRRTE's reason, got rc $rc: $(tr -d '\000' < "$TMP/host.log" | tail -5)"; fi
  out=$(timeout 30 "$HERE/../../apps/scripts/phoenix-launch" --hosts node1:1,node2:1 --job x --dir "$TMP/x" -- \
    "$PHX" train --steps 1 2>&1); rc=$?
  [ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -le 2 ] && echo "$out" | grep -q "Open MPI" && ok ||
    bad "phoenix-launch under Open MPI 5: expected a one-line refusal, got rc $rc: $out"
fi

echo "multihost-ulfm: $pass passed, $fail failed"
[ $fail -eq 0 ]
