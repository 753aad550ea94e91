#!/usr/bin/env bash
# Jobs over several hosts (ctest label `multihost`, root): a bed of test hosts in network
# namespaces (apps/scripts/hostbed.sh: head + node1..node3, each its own address and hostname,
# TCP between them), jobs started with apps/scripts/phoenix-launch (one mpirun per host, joined
# through ompi-server) from the head, and real losses: every process of a host SIGKILLed at once
# (its mpirun included), a host's link cut for longer and for shorter than the failure timeout.
# Every job runs under `timeout`; the bed is removed on every exit path.
# Usage: multihost_test.sh PATH/TO/phoenix
set -u
PHX=$(realpath "${1:?usage: multihost_test.sh PATH/TO/phoenix}")
HERE=$(cd "$(dirname "$0")" && pwd)
BEDSH=$HERE/../../apps/scripts/hostbed.sh
LAUNCH=$HERE/../../apps/scripts/phoenix-launch
why=$("$BEDSH" check) || { echo "multihost: skipped: $why"; exit 77; }
. "$HERE/../lib/mpi_job_lib.sh"
. "$HERE/../lib/multihost_lib.sh"
case $(mpirun --version | head -1) in
  *") 4."*) ;;
  *) echo "multihost: skipped: phoenix-launch needs Open MPI 4 (ompi-server); found $(mpirun --version | head -1)"; exit 77 ;;
esac
BED=phxmh$$
BED=${BED:0:6}
"$BEDSH" down "$BED" > /dev/null  # a bed of this name left by a killed earlier run
trap '"$BEDSH" down "$BED" > /dev/null; [ -n "${MH_KEEP:-}" ] && cp -r "$TMP" "$MH_KEEP"; rm -rf "$TMP"' EXIT
"$BEDSH" up "$BED" 4 || exit 1
export PHX_BED=$BED OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=198.18.0.0/24 \
  OMPI_MCA_oob_tcp_if_include=198.18.0.0/24 OMPI_MCA_orte_base_help_aggregate=1
cd "$TMP" || exit 1
COMMON=(--model mlp --batch 32 --threads 1 --eval-every 25 --log-level warn)

# launch NAME HOSTS ARGS...: phoenix-launch from the head (job name NAME, its directory
# $TMP/NAME.launch); rc in $TMP/NAME.rc, log, summary NAME.json, metrics NAME.csv, checkpoints
# NAME.ckpt.
launch() {
  local name=$1 hosts=$2; shift 2
  timeout 150 "$BEDSH" exec "$BED" head "$LAUNCH" --agent "$BEDSH agent" --hosts "$hosts" \
    --job "$name" --dir "$TMP/$name.launch" -- \
    "$PHX" train "${COMMON[@]}" --summary "$TMP/$name.json" --metrics "$TMP/$name.csv" \
    --checkpoint-dir "$TMP/$name.ckpt" "$@" > "$TMP/$name.log" 2>&1
  echo $? > "$TMP/$name.rc"
}
# 1. The same BSP job (2 workers, fixed seed: bit-identical final weights on one host) on one
#    host, over 3 hosts as 3 joined launches, and over 3 hosts in one ordinary mpirun.
if want sec1; then
t0=$SECONDS
timeout 120 "$BEDSH" exec "$BED" node1 mpirun --oversubscribe --bind-to none --enable-recovery -n 4 \
  "$PHX" train "${COMMON[@]}" --steps 60 --servers 1 --spares 1 --sync bsp --summary "$TMP/one.json" \
  > "$TMP/one.log" 2>&1; echo $? > "$TMP/one.rc"
launch three 'node1:1,node2:2,node3:1' --steps 60 --servers 1 --spares 1 --sync bsp
timeout 120 "$BEDSH" exec "$BED" head mpirun --oversubscribe --bind-to none --enable-recovery \
  --mca plm_rsh_agent "$BEDSH agent" --host 198.18.0.11:1,198.18.0.12:2,198.18.0.13:1 -n 4 \
  "$PHX" train "${COMMON[@]}" --steps 60 --servers 1 --spares 1 --sync bsp --summary "$TMP/span.json" \
  > "$TMP/span.log" 2>&1; echo $? > "$TMP/span.rc"
echo "  bsp on 1 host, 3 launches, 1 mpirun over 3 hosts: $((SECONDS - t0)) s"
if finished one && finished three && finished span; then
  c1=$(field one final_weights_crc32) c3=$(field three final_weights_crc32) cs=$(field span final_weights_crc32)
  [ "$c1" = "$c3" ] && [ "$c1" = "$cs" ] && ok || bad "final weights differ: one host $c1, 3 launches $c3, one mpirun $cs"
  check three "s['updates_applied'] == 60 and s['samples'] == 2 * 60 * 32"
fi
fi

# 2. ASP and EPSP over 3 launches: every push an update; EPSP trains every sample exactly once
#    and moves shards away from a slowed worker on another host.
if want sec2; then
t0=$SECONDS
launch asp 'node1:1,node2:2,node3:2' --steps 60 --servers 1 --spares 1 --sync asp
launch epsp 'node1:1,node2:2,node3:2' --steps 40 --servers 1 --spares 1 --sync epsp --straggle 2:4 \
  --max-parallelism 1 --audit-samples "$TMP/epsp-audit"
echo "  asp, epsp over 3 launches: $((SECONDS - t0)) s"
finished asp && check asp "s['updates_applied'] == 3 * 60 and s['final_test_accuracy'] > 0.5"
if finished epsp; then
  check epsp "s['updates_applied'] == 40 and s['shards_transferred'] > 0 and s['samples'] == 3 * 40 * 32"
  audit_once "$TMP/epsp-audit" $((3 * 40 * 32)) && ok || bad "epsp: a sample was lost or computed twice"
fi
fi

# 3. A whole host lost: every process of node1 (the server and its mpirun) SIGKILLed at once
#    once the job is at step 100; the shard is taken over on another host.
host_lost() {
  local name=$1 hosts=$2 victim=$3; shift 3
  local t0=$SECONDS
  launch "$name" "$hosts" --steps 400 --servers 1 "$@" &
  local runner=$!
  if wait_step "$name" 100; then
    date +%s.%N > "$TMP/$name.killed"
    "$BEDSH" kill "$BED" "$victim" > /dev/null
  else
    echo "  $name: never reached step 100"
  fi
  wait $runner
  echo "  $name: host $victim lost, $((SECONDS - t0)) s"
  finished "$name" || return 1
  check "$name" "s['steps_completed'] == s['steps'] and s['final_test_accuracy'] > 0.6"
}
server_host_lost() {
  local name=$1 mode=$2; shift 2
  host_lost "$name" 'node1:1,node2:3,node3:2' node1 "$@" || return 1
  check "$name" "len(f) == 1 and f[0]['role'] == 'server' and f[0]['replaced_by'] > 0 and 0 < f[0]['detected_ms'] <= 1500 and f[0]['recovered_ms'] > 0"
  case $mode in
    checkpoint) check "$name" "0 <= f[0]['rolled_back_steps'] <= 10";;
    chain-sync|hybrid) check "$name" "s['pushes_acknowledged'] == s['gradients_applied'] and s['acknowledged_pushes_lost'] == 0 and s['updates_lost'] == 0";;
    stateless) check "$name" "s['buffer_overflow'] == 0 and s['buffered_updates'] == f[0]['buffered_updates_applied'] and s['buffered_updates'] > 0";;
  esac
}
if want sec3; then
server_host_lost host-ck checkpoint --spares 2 --recovery checkpoint --checkpoint-every 10 --sync bsp
server_host_lost host-chain chain-sync --replicas 1 --spares 1 --recovery chain --chain-mode sync --sync bsp
server_host_lost host-hybrid hybrid --replicas 1 --spares 1 --recovery hybrid --sync asp
server_host_lost host-stateless stateless --spares 2 --recovery stateless --sync asp
fi
if want sec3 || want host-workers; then
# The workers' host (node3: 2 of 3 workers) lost under BSP: they are dropped like dead workers.
# A 1 s failure timeout here: at 0.5 s, 2 CI runs on 2 loaded cores falsely declared a live rank
# on a surviving host after node3's loss (0 of about 16 local runs; cause not isolated).
host_lost host-workers 'node1:1,node2:2,node3:2' node3 --spares 1 --recovery checkpoint --sync bsp \
  --failure-timeout-ms 1000 &&
  check host-workers "len(f) == 2 and all(x['role'] == 'worker' for x in f)"
fi

# A worker frozen (SIGSTOP, never resumed) on a host of its own: the others declare it failed
# and finish; no survivor shares its host to end it by PID, so phoenix-launch ends that host's
# launch once the survivors say the job has ended (else its mpirun would wait for ever).
if want sec3 || want frozen-elsewhere; then
t0=$SECONDS
launch frozen-elsewhere 'node1:1,node2:2,node3:1' --steps 300 --servers 1 --spares 1 --sync bsp &
runner=$!
if wait_step frozen-elsewhere 100; then
  fp=$(for p in $("$BEDSH" pids "$BED" node3); do [ "$(cat /proc/$p/comm 2>/dev/null)" = phoenix ] && echo "$p"; done)
  [ -n "$fp" ] && kill -STOP $fp
fi
wait $runner
echo "  frozen-elsewhere: a worker frozen on node3, $((SECONDS - t0)) s"
if finished frozen-elsewhere; then
  check frozen-elsewhere "len(f) == 1 and f[0]['rank'] == 3 and f[0]['role'] == 'worker' and s['steps_completed'] == s['steps']"
  grep -q "launch on node3 still runs, and every rank of it was declared failed" "$TMP/frozen-elsewhere.log" && ok ||
    bad "frozen-elsewhere: the launcher did not end node3's launch: $(tail -5 "$TMP/frozen-elsewhere.log")"
fi
for p in ${fp:-}; do [ "$(cat /proc/$p/comm 2>/dev/null)" = phoenix ] && kill -KILL "$p"; done  # (if still there)
fi

# 4. The server's link cut: for 3 s (> the 0.5 s failure timeout) it is declared failed and
#    replaced; when the link is back the old server finds itself fenced and leaves. For 0.3 s
#    under a 3 s timeout nothing is declared and nothing lost.
link_cut() {
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  launch "$name" 'node1:1,node2:3,node3:2' --steps 500 --servers 1 --replicas 1 --spares 1 \
    --recovery chain --chain-mode sync --sync bsp "$@" &
  local runner=$!
  if wait_step "$name" 100; then
    "$BEDSH" link "$BED" node1 down; sleep "$secs"; "$BEDSH" link "$BED" node1 up
  fi
  wait $runner
  echo "  $name: node1's link down for $secs s, $((SECONDS - t0)) s"
  finished "$name" || return 1
  check "$name" "s['steps_completed'] == s['steps'] and s['acknowledged_pushes_lost'] == 0 and s['updates_lost'] == 0"
}
if want sec4; then
if link_cut cut-long 3; then
  check cut-long "len(f) == 1 and f[0]['rank'] == 0 and f[0]['replaced_by'] == 1"
  grep -q "^\[node1\] .*\(declared failed by\|leaving the job\)" "$TMP/cut-long.log" && ok ||
    bad "cut-long: the old server did not find itself fenced: $(grep '^\[node1\]' "$TMP/cut-long.log" | tail -5)"
fi
link_cut cut-short 0.3 --failure-timeout-ms 3000 &&
  check cut-short "len(f) == 0 and s['updates_applied'] == 500"
fi

# 5. A replacement host joins a running job: once the job is under way a standby launch starts
#    on node4 (`phoenix-launch --join`); node1 (the server) is lost and the spare on node2 takes
#    over; node2 is lost in turn, no spare is left, and the standby takes the dead rank's place
#    (it restores the newest snapshot). Opt-in (MH_ONLY=sec5): it passed 7 of 9 runs; twice the
#    job did not finish (once a worker stalled 3.3 s after the first loss and the job waited
#    out --peer-timeout), not yet understood (docs/recovery.md "Several hosts").
if [ -n "${MH_ONLY:-}" ] && want sec5; then
  t0=$SECONDS
  name=replace
  launch $name 'node1:1,node2:1,node3:3' --steps 700 --servers 1 --spares 1 --recovery checkpoint \
    --checkpoint-every 10 --sync bsp &
  runner=$!
  if wait_step $name 50; then
    timeout 150 "$BEDSH" exec "$BED" head "$LAUNCH" --agent "$BEDSH agent" --join node4:1 --job $name \
      --dir "$TMP/$name.launch" -- "$PHX" train "${COMMON[@]}" --summary "$TMP/$name.json" \
      --metrics "$TMP/$name.csv" --checkpoint-dir "$TMP/$name.ckpt" --steps 700 --servers 1 --spares 1 \
      --recovery checkpoint --checkpoint-every 10 --sync bsp > "$TMP/$name.standby.log" 2>&1 &
    standby=$!
    for i in $(seq 200); do grep -q "waiting until the job needs" "$TMP/$name.standby.log" && break; sleep 0.1; done
    wait_step $name 200 && "$BEDSH" kill "$BED" node1 > /dev/null
    wait_step $name 400 && "$BEDSH" kill "$BED" node2 > /dev/null
    wait $standby; echo "  $name: standby exit $?"
  fi
  wait $runner
  echo "  $name: a standby on node4, node1 lost, node2 lost: $((SECONDS - t0)) s"
  if finished $name; then
    check $name "len(f) == 2 and f[0]['replaced_by'] == 1 and not f[0]['spawned'] and f[1]['rank'] == 1 and f[1]['spawned'] and f[1]['replaced_by'] == 1"
    check $name "s['steps_completed'] == s['steps'] and all(0 <= x['rolled_back_steps'] <= 10 for x in f) and s['final_test_accuracy'] > 0.6"
    grep -q "^\[node4\] .*takes over shard 0" "$TMP/$name.standby.log" && ok ||
      bad "$name: the standby on node4 did not take the shard over: $(grep -v '^\[node4\] *$' "$TMP/$name.standby.log" | tail -5)"
  fi
fi

echo "multihost: $pass passed, $fail failed"
[ $fail -eq 0 ]
