#!/usr/bin/env bash
# Failure recovery under real SIGKILLs and SIGSTOPs (ctest label `fault`): real mpirun jobs
# launched with the MPI's survivor flag (--enable-recovery / --with-ft ulfm), ranks killed by their own injection flag at seeded random
# steps, or from outside by PID (as an operator's kill -9 or a freeze would). Each job runs
# under `timeout`, so nothing outlives the test; every check reads the summary JSON.
# Usage: fault_test.sh PATH/TO/phoenix
set -u
PHX=${1:?usage: fault_test.sh PATH/TO/phoenix}
. "$(dirname "$0")/../lib/mpi_job_lib.sh"
MPIRUN=(mpirun --oversubscribe --bind-to none "${FT_FLAG[@]}" "${MPI_EXTRA[@]}")
EVERY=10
COMMON=(--model mlp --batch 32 --eval-every 50 --threads 1)
# periodic snapshots: for the modes that write them (checkpoint, stateless; --checkpoint-every
# is refused by the others)
CK=(--checkpoint-every $EVERY)
# ck_for ARGS...: CK when ARGS choose a mode with periodic snapshots (or none: checkpoint)
ck_for() {
  case " $* " in *" --recovery chain "*|*" --recovery hybrid "*|*" --recovery none "*) CKF=();; *) CKF=("${CK[@]}");; esac
}
EXTRA_MPI=()
# FAULT_SECTIONS="1b 4" runs only those sections (a subset, e.g. under the sanitizers)
want_section() { [ -z "${FAULT_SECTIONS:-}" ] || [[ " $FAULT_SECTIONS " == *" $1 "* ]]; }
RANDOM=20261124  # seeded: the kill steps are random but the same on every run
# Under Open MPI 5 + ULFM the MPI itself reports a killed process: such failures must be
# detected by it (detected_by "mpi") and fast; a frozen rank only by the heartbeats.
ULFM=0
[ "${FT_FLAG[0]}" = "--with-ft" ] && ULFM=1
echo "  fault tests under $(mpirun --version | head -1) (${FT_FLAG[*]})"
# by_mpi NAME: every killed rank of NAME was reported by the MPI within 300 ms (ULFM only).
by_mpi() {
  [ $ULFM = 1 ] || return 0
  check "$1" "len(f) > 0 and all(x['detected_by'] == 'mpi' and x['detected_ms'] <= 300 for x in f)"
}

# job NAME NP ARGS...: a job that must finish (rc 0) and leave $TMP/NAME.json.
job() {
  local name=$1 np=$2; shift 2
  local out rc t0=$SECONDS
  local steps=(--steps 150) level=(--log-level warn) rec=(--recovery checkpoint)
  case " $* " in *" --steps "*) steps=();; esac
  case " $* " in *" --recovery "*) rec=();; esac
  case " $* " in *" --log-level "*) level=();; esac
  ck_for "$@"
  out=$(timeout 120 "${MPIRUN[@]}" "${EXTRA_MPI[@]}" -n "$np" "$PHX" train "${COMMON[@]}" "${CKF[@]}" "${rec[@]}" "${steps[@]}" "${level[@]}" \
        --checkpoint-dir "$TMP/$name.ckpt" --summary "$TMP/$name.json" "$@" 2>&1); rc=$?
  echo "$out" > "$TMP/$name.log"
  echo "  $name: $((SECONDS - t0)) s"
  # Open MPI 4 with --enable-recovery always exits 0: the summary is the job's verdict.
  # Open MPI 5.0.7: after a spawn mpirun's status is not the job's (137 once a spawned
  # replacement was itself SIGKILLed, 1 with "LAUNCHER JOB OBJECT NOT FOUND" after a replacement
  # spawned another); the job ran to its summary, whose counters are checked below.
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $ULFM = 1 ] && [ -s "$TMP/$name.json" ] &&
     grep -q "started a replacement" "$TMP/$name.log"; then
    echo "  $name: mpirun exit $rc after a spawn (Open MPI 5), summary written"; rc=0
  fi
  if [ $rc -ne 0 ] || [ ! -s "$TMP/$name.json" ]; then bad "$name: rc $rc: $(tail -20 "$TMP/$name.log")"; return 1; fi
  return 0
}
# check NAME PYTHON-EXPRESSION over the summary `s` (f = s['failures']).
check() {
  local name=$1 expr=$2
  if /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/$name.json')); f=s['failures']; sys.exit(0 if ($expr) else 1)"; then
    ok
  else
    bad "$name: $expr does not hold: $(cat "$TMP/$name.json")"
    echo "  $name: the job's warnings:"; grep -E "WARN|ERROR|error" "$TMP/$name.log" | tail -30 | sed 's/^/    /'
  fi
}
# A server failure that was recovered: detected within 1.5 s of the kill, a spare took over,
# updates applied again, rolled back at most --checkpoint-every steps.
recovered() {
  local name=$1 n=$2
  check "$name" "len([x for x in f if x['role'] == 'server']) == $n"
  check "$name" "all(x['replaced_by'] >= 0 and 0 < x['detected_ms'] <= 1500 and x['recovered_ms'] > 0 for x in f if x['role'] == 'server')"
  # sync: at most --checkpoint-every steps; async: plus the write still in flight at the kill
  local most=$EVERY
  case " $* " in *" async "*) most=$((2 * EVERY));; esac
  check "$name" "all(0 <= x['rolled_back_steps'] <= $most for x in f)"
  check "$name" "s['final_test_accuracy'] > 0.6 and s['updates_lost'] == sum(x['updates_lost'] for x in f)"
  by_mpi "$name"
}

# survived NAME N MODE: N server failures survived under MODE (section 1b). The invariants are
# counters: chain sync and hybrid lose no acknowledged push (the final state holds exactly the
# pushes the workers saw acknowledged or handed over); stateless applies every buffered update
# (none overflowed); async chain loses at most what came after the last state forward.
survived() {
  local name=$1 n=$2 rmode=$3
  check "$name" "len([x for x in f if x['role'] == 'server']) == $n"
  check "$name" "all(x['replaced_by'] >= 0 and 0 < x['detected_ms'] <= 1500 and x['recovered_ms'] > 0 for x in f)"
  check "$name" "s['final_test_accuracy'] > 0.6"
  by_mpi "$name"
  case $rmode in
    chain-sync|hybrid)
      check "$name" "s['pushes_acknowledged'] == s['gradients_applied'] and s['acknowledged_pushes_lost'] == 0 and s['updates_lost'] == 0";;
    chain-async)
      check "$name" "0 <= s['acknowledged_pushes_lost'] <= $n * ($EVERY + 1) * s['workers']";;
    stateless)
      check "$name" "s['buffer_overflow'] == 0 and s['buffered_updates'] == sum(x['buffered_updates_applied'] for x in f) and s['buffered_updates'] > 0";;
  esac
}

# spawned NAME N (section 1c): N replacements were spawned (MPI_Comm_spawn + merge) and took
# over as their mode says: snapshot restore, chain tail join (the backup is promoted; the new
# process becomes the tail), stateless rejoin; two kills in a row cost one spawn each.
spawned() {
  local name=$1 n=$2 got
  check "$name" "len(f) == $n and s['steps_completed'] == s['steps'] and s['final_test_accuracy'] > 0.6"
  # each replacement logs once that it takes its shard over or joins its chain's tail
  got=$(grep -c "replacement e[0-9]*\] WARN: .*\(takes over shard\|joins the tail\)" "$TMP/$name.log")
  if [ "$got" = "$n" ]; then ok; else bad "$name: $got replacement(s) took over, expected $n"; fi
}

# kill_in_write NAME MODE (sections 5, 7): the server dies halfway through writing the snapshot
# of version 50 (--checkpoint-mode MODE); its replacement must restore version 40.
kill_in_write() {
  local name=$1 mode=$2
  export PHX_TEST_KILL_IN_CHECKPOINT=50
  EXTRA_MPI=(-x PHX_TEST_KILL_IN_CHECKPOINT)
  job "$name" 6 --servers 1 --spares 1 --checkpoint-mode "$mode"
  EXTRA_MPI=()
  unset PHX_TEST_KILL_IN_CHECKPOINT
  if grep -q "restored from .*snap-000000000040.h5" "$TMP/$name.log" 2>/dev/null; then ok; else
    bad "$name: not restored from the snapshot before the interrupted one: $(grep -i 'restor\|snap' "$TMP/$name.log" | head)"; fi
}

# external NAME KILL|STOP|FREEZE [RECOVERY FLAGS] (section 4): the server killed or frozen from
# outside by its PID.
external() {
  local name=$1 sig=$2; shift 2
  local rec=(--recovery checkpoint)
  [ $# -gt 0 ] && rec=("$@")
  ck_for "${rec[@]}"
  ( timeout 120 "${MPIRUN[@]}" -n 6 "$PHX" train "${COMMON[@]}" "${CKF[@]}" "${rec[@]}" --steps 1500 --log-level debug \
      --servers 1 --spares 1 --checkpoint-dir "$TMP/$name.ckpt" --summary "$TMP/$name.json" \
      > "$TMP/$name.log" 2>&1 ) &
  local runner=$! pid="" i
  for i in $(seq 1 200); do
    pid=$(sed -n 's/.*rank 0 pid \([0-9]*\) role server.*/\1/p' "$TMP/$name.log" | head -1)
    if [ -n "$pid" ] && grep -q "step [0-9]*/1500" "$TMP/$name.log"; then break; fi
    sleep 0.1
  done
  if [ -z "$pid" ]; then bad "$name: no server pid in the log"; wait $runner; return; fi
  [ "$sig" = FREEZE ] || kill -s "$sig" "$pid"
  if [ "$sig" = FREEZE ]; then
    kill -s STOP "$pid"  # and never resumed: the job must still end
  elif [ "$sig" = STOP ]; then
    # Let the job notice and go on without it, then let the frozen rank resume: it must find
    # itself excluded and leave on its own.
    for i in $(seq 1 100); do grep -q "takes over shard 0\|promoted to head of shard 0" "$TMP/$name.log" && break; sleep 0.1; done
    sleep 1
    kill -s CONT "$pid" 2>/dev/null
  fi
  wait $runner; local rc=$?
  if [ "$sig" = FREEZE ]; then
    # The survivors, done, end the frozen rank by its PID (same host); mpirun then ends too,
    # with the survivors' verdict (Open MPI 4: exit 0), long before the test's timeout.
    if [ $rc -eq 0 ] && ! kill -0 "$pid" 2>/dev/null && grep -q "(pid $pid) was declared failed but is still there" "$TMP/$name.log"; then ok
    else bad "$name: rc $rc, the frozen rank $pid $(kill -0 "$pid" 2>/dev/null && echo 'is still there' || echo 'is gone'): $(tail -5 "$TMP/$name.log")"; kill -9 "$pid" 2>/dev/null; fi
  fi
  if [ ! -s "$TMP/$name.json" ]; then bad "$name: no summary: $(tail -20 "$TMP/$name.log")"; return; fi
  check "$name" "len(f) == 1 and f[0]['rank'] == 0 and not f[0]['kill_time_known'] and f[0]['replaced_by'] == 1"
  check "$name" "f[0]['detected_ms'] <= 1500 and f[0]['recovered_ms'] > 0 and s['final_test_accuracy'] > 0.6"
  if [ "$sig" = KILL ]; then by_mpi "$name"; fi
  if [ "$sig" != KILL ] && [ $ULFM = 1 ]; then
    # A frozen process is alive to the MPI: only the heartbeats can see it (no false report).
    check "$name" "f[0]['detected_by'] == 'heartbeat'"
  fi
  if [ "$sig" = STOP ]; then
    # The resumed, excluded rank must have left on its own (the job ended without it).
    if kill -0 "$pid" 2>/dev/null; then bad "$name: the frozen rank $pid is still there"; kill -9 "$pid"; else ok; fi
  fi
}

if want_section 1; then
# 1. checkpoint sync/async x BSP/ASP x one and two injected kills at seeded random steps.
for mode in sync async; do
  for sync in bsp asp; do
    k1=$((20 + RANDOM % 50))
    name=ck-$mode-$sync-1
    job $name 6 --servers 1 --spares 1 --sync $sync --checkpoint-mode $mode --kill-server $k1 &&
      recovered $name 1 $mode
    k1=$((15 + RANDOM % 30)); k2=$((k1 + 30 + RANDOM % 40))
    name=ck-$mode-$sync-2
    job $name 7 --servers 1 --spares 2 --sync $sync --checkpoint-mode $mode --kill-server $k1,$k2 &&
      recovered $name 2 $mode
  done
done

fi

if want_section 1b; then
# 1b. Chain replication (sync/async), stateless and hybrid servers x BSP/ASP x one and two kills.
for rmode in chain-sync chain-async stateless hybrid; do
  case $rmode in
    chain-sync) args=(--recovery chain --chain-mode sync --replicas 1);;
    chain-async) args=(--recovery chain --chain-mode async --replicate-every $EVERY --replicas 1);;
    stateless) args=(--recovery stateless);;
    hybrid) args=(--recovery hybrid --replicas 1);;
  esac
  for sync in bsp asp; do
    k1=$((20 + RANDOM % 50))
    name=$rmode-$sync-1
    job $name 7 --servers 1 --spares 1 --sync $sync "${args[@]}" --kill-server $k1 &&
      survived $name 1 $rmode
    k1=$((15 + RANDOM % 30)); k2=$((k1 + 30 + RANDOM % 40))
    name=$rmode-$sync-2
    job $name 8 --servers 1 --spares 2 --sync $sync "${args[@]}" --kill-server $k1,$k2 &&
      survived $name 2 $rmode
  done
done
# A stateless outage longer than the buffer: the overflow is counted and reported, the rest
# applied.
job stateless-overflow 6 --servers 1 --spares 1 --sync asp --recovery stateless --stateless-buffer 5 \
    --downtime 1 --kill-server 30 &&
  check stateless-overflow "s['buffer_overflow'] > 0 and s['buffered_updates'] == f[0]['buffered_updates_applied'] and s['buffered_updates'] <= 6 * s['workers']"

fi

if want_section 1c; then
# 1c. No spare left: a replacement process is spawned under the dead rank's number.
k1=$((20 + RANDOM % 50))
job spawn-ck 5 --servers 1 --spares 0 --sync bsp --kill-server $k1 && recovered spawn-ck 1 && spawned spawn-ck 1 &&
  check spawn-ck "f[0]['spawned'] and f[0]['replaced_by'] == 0"
k1=$((15 + RANDOM % 30)); k2=$((k1 + 30 + RANDOM % 40))
job spawn-ck-2 5 --servers 1 --spares 0 --sync asp --kill-server $k1,$k2 && recovered spawn-ck-2 2 && spawned spawn-ck-2 2 &&
  check spawn-ck-2 "all(x['spawned'] for x in f)"
k1=$((20 + RANDOM % 50))
job spawn-chain 6 --servers 1 --replicas 1 --spares 0 --sync bsp --recovery chain --chain-mode sync --kill-server $k1 &&
  survived spawn-chain 1 chain-sync && spawned spawn-chain 1 &&
  check spawn-chain "f[0]['replaced_by'] == 1"
# (the second kill comes once the first replacement holds the state, 4 s into the job: a chain
# of two that loses both members before the new tail has the state has lost the shard, which
# ph-chain-lost checks; a count of steps was no bound: 90 BSP steps took less than the spawn)
k1=$((15 + RANDOM % 10)); k2=$((k1 + 90))
job spawn-chain-2 6 --servers 1 --replicas 1 --spares 0 --sync bsp --recovery chain --chain-mode sync \
    --steps 600 --kill-server $k1,4s &&
  survived spawn-chain-2 2 chain-sync && spawned spawn-chain-2 2
# (800 steps: the workers train on locally while the replacement starts, 1-2.5 s, which was
# all of a 300-step job once; its backlog, applied in one step, then dominates the accuracy)
k1=$((20 + RANDOM % 50))
job spawn-stateless 5 --servers 1 --spares 0 --sync asp --recovery stateless --steps 800 --kill-server $k1 &&
  survived spawn-stateless 1 stateless && spawned spawn-stateless 1 &&
  check spawn-stateless "f[0]['spawned']"
# --spawn off: without a spare the shard is lost and the job ends with one clear line.
out=$(timeout 60 "${MPIRUN[@]}" -n 5 "$PHX" train "${COMMON[@]}" "${CK[@]}" --recovery checkpoint --steps 150 --log-level warn \
      --servers 1 --spares 0 --spawn off --kill-server 30 --checkpoint-dir "$TMP/nospawn.ckpt" 2>&1); rc=$?
if [ $rc -ne 124 ] && echo "$out" | grep -q "shard 0 is lost: its server died and no spare is left"; then ok; else
  bad "spawn off: rc $rc: $(echo "$out" | tail -5)"; fi

fi

if want_section 2; then
# 2. Two shards, the second one's server is untouched: only shard 0 rolls back.
job two-shards 7 --servers 2 --spares 1 --kill-server 40 && recovered two-shards 1 &&
  check two-shards "f[0]['shard'] == 0"

fi

if want_section 3; then
# 3. A worker SIGKILLs itself: BSP drops it from the rounds and the others finish.
job worker-kill 5 --servers 1 --kill-worker 30 &&
  check worker-kill "len(f) == 1 and f[0]['role'] == 'worker' and f[0]['detected_ms'] <= 1500" &&
  check worker-kill "s['final_test_accuracy'] > 0.6"

fi

if want_section 4; then
# 4. From outside, by PID: kill -9 of the server, and SIGSTOP of the server (a freeze).
external ext-kill KILL
external ext-stop STOP
# A frozen server never resumed: without the survivors ending it, mpirun would wait forever.
external ext-frozen FREEZE
# The same freeze of a chain head: the backup is promoted; the resumed old head, fenced, must
# not disturb the chain (no acknowledged push lost).
external ext-stop-chain STOP --recovery chain --replicas 1 &&
  check ext-stop-chain "s['acknowledged_pushes_lost'] == 0"

fi

if want_section 4b; then
# 4b. A dead spare: spare rank 1 is killed from outside first, then the server dies: the next
#     spare (rank 2) takes over.
( timeout 120 "${MPIRUN[@]}" -n 7 "$PHX" train "${COMMON[@]}" "${CK[@]}" --recovery checkpoint --steps 400 --log-level debug \
    --servers 1 --spares 2 --kill-server 250 --checkpoint-dir "$TMP/dead-spare.ckpt" \
    --summary "$TMP/dead-spare.json" > "$TMP/dead-spare.log" 2>&1 ) &
runner=$! spid=""
for i in $(seq 1 200); do
  spid=$(sed -n 's/.*rank 1 pid \([0-9]*\) role spare.*/\1/p' "$TMP/dead-spare.log" | head -1)
  [ -n "$spid" ] && break
  sleep 0.1
done
if [ -n "$spid" ]; then
  kill -9 "$spid"
  wait $runner
  check dead-spare "len(f) == 2 and f[0]['rank'] == 1 and f[0]['role'] == 'spare' and f[1]['rank'] == 0 and f[1]['replaced_by'] == 2 and f[1]['recovered_ms'] > 0"
else
  bad "dead-spare: no spare pid in the log"; wait $runner
fi

fi

if want_section 4c; then
# 4c. The chief worker (it evaluates and reports) is killed from outside: the next worker takes
#     over, appends to the metrics and writes the summary.
( timeout 120 "${MPIRUN[@]}" -n 6 "$PHX" train "${COMMON[@]}" "${CK[@]}" --recovery checkpoint --steps 1000 --log-level debug \
    --servers 1 --spares 1 --checkpoint-dir "$TMP/chief.ckpt" --metrics "$TMP/chief.csv" \
    --summary "$TMP/chief.json" > "$TMP/chief.log" 2>&1 ) &
runner=$! cpid=""
for i in $(seq 1 200); do
  cpid=$(sed -n 's/.*rank 2 pid \([0-9]*\) role worker.*/\1/p' "$TMP/chief.log" | head -1)
  [ -n "$cpid" ] && grep -q "eval  step 200 " "$TMP/chief.log" && break
  sleep 0.1
done
if [ -n "$cpid" ]; then
  kill -9 "$cpid"
  wait $runner
  check chief "len(f) == 1 and f[0]['rank'] == 2 and f[0]['role'] == 'worker' and f[0]['detected_ms'] <= 1500 and s['final_test_accuracy'] > 0.6 and s['steps'] == 1000"
  if [ "$(grep -c '^time_s' "$TMP/chief.csv")" = 1 ] && tail -1 "$TMP/chief.csv" | grep -q ',1000,.*,end$'; then ok; else
    bad "chief: metrics not continued by the new chief: $(cat "$TMP/chief.csv")"; fi
else
  bad "chief: no chief pid or no evaluation in the log"; wait $runner
fi

fi

if want_section 5; then
# 5. A kill in the middle of a snapshot write (test hook: the .tmp is half written, no rename,
#    no marker): the replacement restores the previous valid snapshot.
kill_in_write kill-in-write sync

fi

if want_section 7; then
# 7. (both MPIs) A kill in each phase of a recovery (runtime/core/test_hooks.h: the first process to reach
#    the phase SIGKILLs itself, unannounced): the job survives the second failure too. The
#    first failure's own recovery never completes (its taker died in it), so the checks are
#    on the whole job and on the last failure's recovery.
# phase NAME PHASE NP ARGS...: a job with a --kill-server and the phase kill.
phase() {
  local name=$1 ph=$2 np=$3; shift 3
  export PHX_TEST_KILL_PHASE="$ph:$TMP/$name.phase"
  EXTRA_MPI=(-x PHX_TEST_KILL_PHASE)
  job "$name" "$np" "$@"; local rc=$?
  EXTRA_MPI=()
  unset PHX_TEST_KILL_PHASE
  [ $rc = 0 ] || return 1
  if [ -e "$TMP/$name.phase" ] && grep -q "test hook: SIGKILL in phase $ph" "$TMP/$name.log"; then ok; else
    bad "$name: no process reached phase $ph"; return 1; fi
  check "$name" "len(f) == 2 and s['steps_completed'] == s['steps'] and s['final_test_accuracy'] > 0.6"
}
# a spare dies while it restores the snapshot: the next spare restores it
phase ph-restore restore 7 --servers 1 --spares 2 --kill-server 40 --sync bsp &&
  check ph-restore "f[-1]['replaced_by'] == 2 and f[-1]['recovered_ms'] > 0"
# the coordinator dies after sending the new view to one rank only: the next one issues its own
# (the others catch up from the heartbeats' epochs) and the next spare serves
phase ph-view view-send 7 --servers 1 --spares 2 --kill-server 40 --sync bsp &&
  check ph-view "f[-1]['replaced_by'] == 2 and f[-1]['recovered_ms'] > 0"
# the replica dies as it is promoted: the second replica is, and no acknowledged push is lost
phase ph-promote promote 7 --servers 1 --replicas 2 --spares 0 --spawn off --recovery chain \
    --chain-mode sync --sync bsp --kill-server 40 &&
  check ph-promote "f[-1]['replaced_by'] == 2 and f[-1]['recovered_ms'] > 0 and s['pushes_acknowledged'] == s['gradients_applied'] and s['acknowledged_pushes_lost'] == 0"
# the replica dies as it is promoted and the spare that joined as the new tail had not received
# the state yet: nothing holds the shard any more (chain recovery writes no snapshot), so the
# job ends with the one line that says so, never serving the initial weights
export PHX_TEST_KILL_PHASE="promote:$TMP/ph-chain-lost.phase"
t0=$SECONDS
out=$(timeout 90 "${MPIRUN[@]}" -x PHX_TEST_KILL_PHASE -n 7 "$PHX" train "${COMMON[@]}" --steps 150 --log-level warn \
      --servers 1 --replicas 1 --spares 1 --spawn off --recovery chain --chain-mode sync --sync bsp \
      --kill-server 40 --checkpoint-dir "$TMP/ph-chain-lost.ckpt" --summary "$TMP/ph-chain-lost.json" 2>&1); rc=$?
unset PHX_TEST_KILL_PHASE
echo "  ph-chain-lost: $((SECONDS - t0)) s"
echo "$out" > "$TMP/ph-chain-lost.log"
if [ $rc -ne 124 ] && [ ! -s "$TMP/ph-chain-lost.json" ] &&
   echo "$out" | grep -q "shard 0 is lost: every member of its chain that held the state died before the new tail (rank 2)" &&
   ! echo "$out" | grep -q "serves its initial weights"; then ok
else bad "ph-chain-lost: rc $rc: $(echo "$out" | grep -E 'WARN|error' | tail -8)"; fi
# the spare that joins as the new tail dies while it receives the head's state: the next joins
phase ph-tail tail-join 8 --servers 1 --replicas 1 --spares 2 --recovery chain --chain-mode sync \
    --sync bsp --kill-server 40 &&
  check ph-tail "f[0]['recovered_ms'] > 0 and f[1]['role'] == 'replica' and s['pushes_acknowledged'] == s['gradients_applied'] and s['acknowledged_pushes_lost'] == 0" &&
  { grep -q "spare rank 3 joins the tail" "$TMP/ph-tail.log" && ok || bad "ph-tail: the second spare did not join the tail"; }
# the spare taking a stateless shard over dies in the middle of the workers' hand-over of their
# buffered updates (one worker's backlog taken): the next spare takes every backlog, the first
# outage's updates included, and none is lost or applied twice (300 steps: under ULFM the two outages took most of a 150-step run)
phase ph-backlog backlog 7 --servers 1 --spares 2 --recovery stateless --sync asp --kill-server 40 --steps 300 &&
  check ph-backlog "f[-1]['replaced_by'] == 2 and f[-1]['recovered_ms'] > 0 and s['buffer_overflow'] == 0 and s['buffered_updates'] > 0 and s['buffered_updates'] == sum(x['buffered_updates_applied'] for x in f)"
# a death while the survivors start a replacement (the promoted replica dies as the others
# spawn a new tail): Open MPI 4.1 cannot abandon the spawn's collective, so every survivor
# ends after --peer-timeout with the one-line error (docs/errors.md), no hang, no summary
export PHX_TEST_KILL_PHASE="promote:$TMP/ph-spawn.phase"
t0=$SECONDS
out=$(timeout 90 "${MPIRUN[@]}" -x PHX_TEST_KILL_PHASE -n 7 "$PHX" train "${COMMON[@]}" --steps 150 --log-level warn \
      --servers 1 --replicas 2 --spares 0 --recovery chain --chain-mode sync --sync bsp --kill-server 40 \
      --peer-timeout 10 --checkpoint-dir "$TMP/ph-spawn.ckpt" --summary "$TMP/ph-spawn.json" 2>&1); rc=$?
unset PHX_TEST_KILL_PHASE
echo "  ph-spawn: $((SECONDS - t0)) s"
echo "$out" > "$TMP/ph-spawn.log"
if [ $rc -ne 124 ] && [ ! -s "$TMP/ph-spawn.json" ] &&
   echo "$out" | grep -q "error: starting a replacement for rank 0 did not finish within 10 s"; then ok
elif [ $ULFM = 1 ] && [ $rc -ne 124 ] && [ -s "$TMP/ph-spawn.json" ]; then
  # ULFM can abandon the spawn (revoke, shrink, agree again): the job goes on to its end
  echo "  ph-spawn: survived under ULFM"
  check ph-spawn "s['steps_completed'] == s['steps'] and s['acknowledged_pushes_lost'] == 0"
else
  bad "ph-spawn: rc $rc: $(echo "$out" | grep -E 'WARN|error' | tail -8)"; fi
# the server dies in the middle of an asynchronous snapshot write (the writer thread): the
# half-written file is never loaded, the previous snapshot is
kill_in_write kill-in-async-write async

fi

if want_section 6; then
# 6. --recovery none: a death ends the whole job promptly, non-zero, with one clear line.
#    (Under --enable-recovery Open MPI 4's mpirun exits 0 whatever the ranks return, so the
#    check is the message, the missing summary and the time; without it mpirun exits 137.)
t0=$SECONDS
out=$(timeout 60 "${MPIRUN[@]}" -n 4 "$PHX" train --model mlp --steps 300 --threads 1 \
      --log-level warn --recovery none --kill-server 20 --summary "$TMP/none.json" 2>&1); rc=$?
if [ $rc -ne 124 ] && [ ! -e "$TMP/none.json" ] && [ $((SECONDS - t0)) -lt 30 ] &&
   echo "$out" | grep -q "recovery none ends the job"; then ok; else
  bad "recovery none: rc $rc: $(echo "$out" | tail -5)"; fi

fi

if want_section 7; then
# 7. Asking for recovery without a launch that lets survivors live is refused up front.
out=$(timeout 60 mpirun --oversubscribe -n 3 "$PHX" train --model mlp --steps 5 --recovery checkpoint 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q -- "mpirun ${FT_FLAG[*]} "; then ok; else
  bad "launch check: rc $rc: $(echo "$out" | tail -3)"; fi

fi

if want_section 8; then
# 8. --resume: a new job starts from the newest valid snapshot of the last one.
job first 4 --servers 1 --steps 60 --checkpoint-mode sync && {
  cp -r "$TMP/first.ckpt" "$TMP/resume.ckpt"
  out=$(timeout 120 "${MPIRUN[@]}" -n 4 "$PHX" train "${COMMON[@]}" "${CK[@]}" --recovery checkpoint --steps 100 --log-level info \
        --servers 1 --resume "$TMP/resume.ckpt" --summary "$TMP/resume.json" 2>&1); rc=$?
  if [ $rc -eq 0 ] && echo "$out" | grep -q "resuming from .* at step 60 of 100"; then ok; else
    bad "resume: rc $rc: $(echo "$out" | grep -i 'resum\|error' | head)"; fi
  check resume "s['updates_applied'] == 100"
  # The same with the newest snapshot truncated (a write cut short by a full disk): it is
  # skipped, named, and the job resumes from the one before (step 50).
  cp -r "$TMP/first.ckpt" "$TMP/trunc.ckpt"
  newest=$(ls "$TMP"/trunc.ckpt/shard0/snap-*.h5 | tail -1)
  truncate -s 2000 "$newest"
  out=$(timeout 120 "${MPIRUN[@]}" -n 4 "$PHX" train "${COMMON[@]}" "${CK[@]}" --recovery checkpoint --steps 100 --log-level info \
        --servers 1 --resume "$TMP/trunc.ckpt" --summary "$TMP/trunc.json" 2>&1); rc=$?
  if [ $rc -eq 0 ] && echo "$out" | grep -q "$(basename "$newest").*truncated" &&
     echo "$out" | grep -q "resuming from .* at step 50 of 100"; then ok; else
    bad "resume past a truncated snapshot: rc $rc: $(echo "$out" | grep -i 'resum\|skip\|truncat\|error' | head)"; fi
  check trunc "s['updates_applied'] == 100"
}

fi

if want_section 9; then
# 9. phoenix inspect: a valid snapshot prints, a truncated one is named and refused.
snap=$(ls "$TMP"/first.ckpt/shard0/snap-*.h5 | tail -1)
"$PHX" inspect "$snap" | grep -q "valid Phoenix shard snapshot" && ok || bad "inspect of $snap"
truncate -s 1000 "$snap"
out=$("$PHX" inspect "$snap" 2>&1); rc=$?
if [ $rc -eq 2 ] && echo "$out" | grep -q "truncated"; then ok; else bad "inspect truncated: rc $rc: $out"; fi

fi

if want_section 10; then
# 10. phoenix bench recovery: one real kill, timed, from the summary.
if timeout 120 "$PHX" bench recovery --kills 1 --modes chain-sync --steps 60 --dir "$TMP/brec" \
     --json "$TMP/brec.json" > "$TMP/brec.txt" 2>&1 &&
   /usr/bin/python3 -c "import json,sys; j=json.load(open('$TMP/brec.json'))[0]; sys.exit(0 if j['kills'] == 1 and j['failed_jobs'] == 0 and 0 < j['detected_ms_median'] <= 1500 and j['recovered_ms_median'] >= j['detected_ms_median'] and j['acknowledged_pushes_lost_max'] == 0 else 1)"; then
  ok
else
  bad "bench recovery: $(cat "$TMP/brec.txt" "$TMP/brec.json" 2>/dev/null | tail -5)"
fi

fi

if want_section 11; then
# 11. SIGUSR1 to mpirun (what SLURM's --signal sends before a time limit): every worker ends
#     after the same round, the servers (2 shards) write a snapshot, exit 0; --resume finishes.
t0=$SECONDS
timeout 120 "${MPIRUN[@]}" -n 4 "$PHX" train "${COMMON[@]}" --recovery none --steps 3000 --servers 2 \
  --sync bsp --log-level info --checkpoint-dir "$TMP/usr1.ckpt" --summary "$TMP/usr1.json" \
  > "$TMP/usr1.log" 2>&1 &
tm=$!
for _ in $(seq 300); do grep -q "eval  step" "$TMP/usr1.log" && break; sleep 0.1; done
# to mpirun itself (timeout would die of SIGUSR1): the child of the timeout process, by PID
kill -USR1 "$(ps -o pid= --ppid $tm | head -1)"
wait $tm; rc=$?
echo "  usr1: $((SECONDS - t0)) s"
if [ $rc -eq 0 ] && /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/usr1.json')); sys.exit(0 if s['stopped_by_signal'] and 0 < s['steps_completed'] < 3000 and s['updates_applied'] == s['steps_completed'] else 1)" &&
   ls "$TMP/usr1.ckpt/shard0/"snap-*.h5 "$TMP/usr1.ckpt/shard1/"snap-*.h5 >/dev/null 2>&1; then
  ok
  stopped=$(/usr/bin/python3 -c "import json; print(json.load(open('$TMP/usr1.json'))['steps_completed'])")
  out=$(timeout 120 "${MPIRUN[@]}" -n 4 "$PHX" train "${COMMON[@]}" --recovery none --steps 3000 --servers 2 \
        --sync bsp --log-level info --checkpoint-dir "$TMP/usr1.ckpt" --resume "$TMP/usr1.ckpt" \
        --summary "$TMP/usr1b.json" 2>&1); rc=$?
  if [ $rc -eq 0 ] && echo "$out" | grep -q "resuming from .* at step $stopped of 3000" &&
     /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/usr1b.json')); sys.exit(0 if not s['stopped_by_signal'] and s['steps_completed'] == 3000 and s['updates_applied'] == 3000 else 1)"; then
    ok
  else
    bad "usr1 resume: rc $rc: $(echo "$out" | grep -iE 'resum|error' | head -3) $(cat "$TMP/usr1b.json" 2>/dev/null | head -c 300)"
  fi
else
  bad "usr1: rc $rc: $(grep -iE 'SIGUSR1|error|stop' "$TMP/usr1.log" | head -5) $(cat "$TMP/usr1.json" 2>/dev/null | head -c 300)"
fi

fi

if want_section 12; then
# 12. Failures and stragglers at once: EPSP (enforced) with a 3x straggler whose shards move to
#     the others, and the hybrid server killed at a seeded step: the backup takes over, no
#     acknowledged push is lost, every sample is still trained on exactly once, transfer goes on.
k1=$((20 + RANDOM % 50))
if job epsp-hybrid 6 --servers 1 --replicas 1 --sync epsp --recovery hybrid --straggle 3:3 \
     --kill-server $k1 --audit-samples "$TMP/epsp-hybrid.audit"; then
  survived epsp-hybrid 1 hybrid
  check epsp-hybrid "s['shards_transferred'] > 0 and s['steps_completed'] == 150"
  if /usr/bin/python3 - "$TMP/epsp-hybrid.audit" <<'PY'
import collections, glob, sys
c = collections.Counter(tuple(l.split()) for f in glob.glob(sys.argv[1] + ".w*") for l in open(f))
sys.exit(0 if len(c) == 4 * 150 * 32 and max(c.values()) == 1 else 1)
PY
  then ok; else bad "epsp-hybrid: a sample was lost or trained on twice"; fi
fi

# Sync-opt (a backup worker) with a sync chain and a killed head: the dropped late pushes are
# told to their workers, so the invariant "every acknowledged push is applied" still holds.
k1=$((20 + RANDOM % 50))
if job syncopt-chain 6 --servers 1 --replicas 1 --sync syncopt --backup-workers 1 --recovery chain \
     --chain-mode sync --straggle 3:3 --kill-server $k1; then
  survived syncopt-chain 1 chain-sync
  check syncopt-chain "s['gradients_dropped'] > 0"
fi

fi

if want_section 12; then
# 12. A worker dies, then the server: the spare that takes over must leave the dead worker out of
#     its rounds from the start (the chaos soak found a replacement waiting for its pushes forever).
for rm in checkpoint stateless; do
  if job "worker-then-server-$rm" 6 --servers 1 --spares 1 --sync bsp --recovery $rm --steps 200 \
       --kill-worker 40 --kill-server 120; then
    check "worker-then-server-$rm" "len(f) == 2 and [x['role'] for x in f] == ['worker', 'server'] and s['steps_completed'] == 200 and f[1]['replaced_by'] >= 0"
  fi
done
# A chaos-soak run replayed: a spare, then the server die, then the chief dies as SIGUSR1 reaches
# every rank (the chief's successor used to die of an escaped view change while it sent its
# counters, and the summary held "nan"): the job stops cleanly with a valid summary.
if timeout 300 /usr/bin/python3 "$(dirname "$0")/../../apps/scripts/soak.py" "$PHX" --steps 600 \
     --replay 'stateless:spare@160,server@292,chief@366;usr1@366' --repeat 2 > "$TMP/replay.log" 2>&1; then
  ok
else
  bad "soak replay (chief killed during a stop): $(grep -E '^replay|fatal|error' "$TMP/replay.log" | head -6)"
fi
fi
echo "fault tests: $pass passed, $fail failed"
[ $fail -eq 0 ]
