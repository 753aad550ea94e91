#!/usr/bin/env bash
# The sbatch scripts of slurm/ against a real single-node SLURM started here (ctest label
# `slurm`): installs slurm-wlm and munge when missing, starts munged (unless one answers
# already), slurmctld and slurmd as root with a private config and state directory, submits
# the scripts as a user would and checks each job's final state, exit code, output and
# summary: a normal mpirun job, a normal srun --mpi=pmix job, a job whose server rank is
# SIGKILLed (it completes: a spare takes over), and SIGUSR1 -> snapshot -> requeue -> resume.
# Every daemon it starts is stopped by its PID on exit, whatever failed.
# Usage: slurm_test.sh PATH/TO/phoenix
set -u
PHX=$(readlink -f "${1:?usage: slurm_test.sh PATH/TO/phoenix}")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm_test: needs root (it starts slurmctld, slurmd and munged); skipped" >&2
  exit 77
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  "$REPO/apps/scripts/install_deps.sh" --slurm >&2 || { echo "slurm_test: cannot install slurm-wlm/munge" >&2; exit 1; }
fi

T=$(mktemp -d /tmp/phx-slurm.XXXXXX)
JOBS=()  # jobs this test submitted: cancelled before the daemons stop
cleanup() {
  for j in "${JOBS[@]}"; do scancel "$j" 2>/dev/null; done
  for _ in $(seq 30); do
    [ ${#JOBS[@]} -eq 0 ] && break
    [ -z "$(squeue -h -j "$(IFS=,; echo "${JOBS[*]}")" 2>/dev/null)" ] && break
    sleep 1
  done
  for pidfile in "$T/slurmd.pid" "$T/slurmctld.pid" "${MUNGE_PIDFILE:-}"; do
    [ -n "$pidfile" ] && [ -s "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  [ "$fail" -eq 0 ] && rm -rf "$T"
}
trap cleanup EXIT

# munge: reuse a running daemon, else start one with the system key (created if missing).
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  MUNGE_PIDFILE=""
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge && chown munge:munge /etc/munge
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key || { bad "mungekey"; exit 1; }
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  MUNGE_PIDFILE=/run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged || { bad "munged did not start"; exit 1; }
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || { bad "munge does not answer"; exit 1; }
fi

# A private slurm.conf (SLURM_CONF points every daemon and command at it).
mkdir -p "$T/state" "$T/spool" "$T/log"
NODE_LINE=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]*/NodeName=localhost/')
cat > "$T/slurm.conf" <<CONF
ClusterName=phxtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldPort=$((6817 + RANDOM % 500 * 2))
SlurmdPort=$((7817 + RANDOM % 500 * 2))
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SchedulerType=sched/builtin
KillWait=5
$NODE_LINE State=UNKNOWN
PartitionName=phx Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$T/slurm.conf
slurmctld -i || { bad "slurmctld did not start: $(tail -5 "$T/log/slurmctld.log")"; exit 1; }
slurmd -N localhost || { bad "slurmd did not start: $(tail -5 "$T/log/slurmd.log")"; exit 1; }
for _ in $(seq 100); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 0.2
done
sinfo -h -o %t | grep -qE '^(idle|mix|alloc)' || { bad "node not up: $(sinfo 2>&1)"; exit 1; }
ok

# submit NAME SCRIPT [sbatch args...]: prints the job id; the job runs from the repository root.
# Each job's run directory is $T/run-NAME (the default, phoenix-run/slurm-JOBID, would collide
# with an earlier test's: a fresh SLURM numbers jobs from 1 again).
submit() {
  local name=$1 script=$2; shift 2
  (cd "$REPO" && PHOENIX_RUN_DIR=$T/run-$name sbatch --parsable --overcommit -J "$name" -o "$T/$name.out" "$@" "slurm/$script")
}
# field JOB KEY: one field of `scontrol show job`.
field() { scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# await JOB SECONDS: until the job is in a final state; prints the state.
await() {
  local j=$1 limit=$2 st=""
  for _ in $(seq "$limit"); do
    st=$(field "$j" JobState)
    case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) break ;; esac
    sleep 1
  done
  echo "$st"
}
# expect_done NAME JOB: COMPLETED with exit code 0:0 and the script's success line.
expect_done() {
  local name=$1 j=$2 st
  st=$(await "$j" 300)
  if [ "$st" = COMPLETED ] && [ "$(field "$j" ExitCode)" = 0:0 ] && grep -q "phoenix-slurm: done" "$T/$name.out"; then
    ok
  else
    bad "$name: job $j state '$st' exit '$(field "$j" ExitCode)': $(tail -20 "$T/$name.out" 2>/dev/null)"
    scancel "$j" 2>/dev/null
    return 1
  fi
}
# summary NAME JOB PYTHON-EXPR over the summary `s` of that job's run directory.
summary() {
  local name=$1 expr=$3 f="$T/run-$1/summary.json"
  if /usr/bin/python3 -c "import json,sys; s=json.load(open('$f')); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
    ok
  else
    bad "$name: $expr does not hold in $f: $(cat "$f" 2>&1 | head -c 600)"
  fi
}

export PHOENIX_MODEL=mlp
SMALL="--steps 60 --eval-every 0 --threads 1 --batch 32"

# 1. mpirun launch, no failure: 1 server + 1 spare + 2 workers.
J1=$(PHOENIX_ARGS="$SMALL" submit mpirun train_mpirun.sbatch -n 4); JOBS+=("$J1")
# 2. srun --mpi=pmix launch: 1 server + 2 workers.
J2=$(PHOENIX_ARGS="$SMALL" submit srun train_srun.sbatch -n 3); JOBS+=("$J2")
if expect_done mpirun "$J1"; then
  summary mpirun "$J1" "s['steps'] == 60 and s['workers'] == 2 and s['failures'] == [] and s['final_test_accuracy'] > 0.6"
fi
if expect_done srun "$J2"; then
  summary srun "$J2" "s['steps'] == 60 and s['workers'] == 2 and s['recovery'] == 'none'"
fi

# 3. The server SIGKILLs itself at step 60; the spare restores the newest snapshot; the job
#    completes and its summary names the failure.
J3=$(PHOENIX_ARGS="--steps 150 --eval-every 0 --threads 1 --kill-server 60 --checkpoint-every 20" \
     submit kill train_mpirun.sbatch -n 5); JOBS+=("$J3")
if expect_done kill "$J3"; then
  summary kill "$J3" "len(s['failures']) == 1 and s['failures'][0]['role'] == 'server' and s['failures'][0]['replaced_by'] >= 0 and s['steps_completed'] == 150"
  grep -q "FAILURE rank 0" "$T/kill.out" && ok || bad "kill: no FAILURE line in the output"
fi

# 4. SIGUSR1 -> snapshot -> requeue -> resume. The job trains long enough to be caught running;
#    `scancel --signal=USR1 --batch` reaches the batch shell at once (as --signal would).
J4=$(PHOENIX_ARGS="--steps 4000 --eval-every 500 --threads 1" PHOENIX_CHECKPOINT_EVERY=0 \
     submit requeue train_requeue.sbatch -n 3); JOBS+=("$J4")
for _ in $(seq 120); do
  grep -q "step [0-9]*/4000" "$T/requeue.out" 2>/dev/null && break
  sleep 1
done
scancel --signal=USR1 --batch "$J4" || bad "requeue: scancel --signal=USR1 failed"
if expect_done requeue "$J4"; then
  [ "$(field "$J4" Restarts)" = 1 ] && ok || bad "requeue: Restarts=$(field "$J4" Restarts), expected 1"
  stopped=$(sed -n 's/.*stopped on a stop signal after step \([0-9]*\) of 4000.*/\1/p' "$T/requeue.out" | head -1)
  resumed=$(sed -n 's/.*resuming from .* at step \([0-9]*\) of 4000.*/\1/p' "$T/requeue.out" | head -1)
  if [ -n "$stopped" ] && [ "$stopped" -gt 0 ] && [ "$stopped" -lt 4000 ] && [ "$stopped" = "$resumed" ]; then
    ok
  else
    bad "requeue: stopped at '$stopped', resumed at '$resumed': $(grep -E 'SIGUSR1|resum|requeue' "$T/requeue.out")"
  fi
  grep -q "requeueing job $J4" "$T/requeue.out" && ok || bad "requeue: the script did not requeue"
  summary requeue "$J4" "s['steps_completed'] == 4000 and not s['stopped_by_signal']"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
