#!/usr/bin/env bash
# Per-rank CPU budgets: a heterogeneous cluster on one machine (Linux cgroup v1 `cpu` quotas).
# Each rank of a job gets a cgroup of its own whose CFS quota is its budget in cores, so a
# rank's speed is set by its budget, not by who else is runnable, and a rank that waits leaves
# its budget unused (nobody else can take it). A straggler is a rank with a smaller budget.
#
#   cpu_budget.sh run --budgets SPEC [--default CORES] [--period-us N] -- CMD...
#       creates the job's cgroup parent, runs CMD (typically mpirun ... cpu_budget.sh exec ...),
#       and removes every cgroup it made, by path, on every exit path. Exit status: CMD's.
#   cpu_budget.sh exec CMD...
#       inside a job (one per rank): joins this rank's cgroup (rank from OMPI_COMM_WORLD_RANK,
#       PMIX_RANK or SLURM_PROCID), then execs CMD.
#   cpu_budget.sh check
#       exit 0 when budgets can be set here (root, cgroup v1 cpu controller writable), else a
#       one-line reason and exit 3.
#
# SPEC: comma-separated RANK:CORES entries (e.g. "4:0.133"); ranks not named get --default
# (default 1 core). A transient straggler: RANK:CORES@FROM-TO (seconds since start: the budget
# applies from FROM to TO, the default outside), e.g. "3:0.13@5-15". The budgets of the ranks
# should add up to no more than the machine's cores (`run` warns otherwise).
set -euo pipefail
CG=${PHX_CGROUP_CPU:-/sys/fs/cgroup/cpu}

die() { echo "cpu_budget: $*" >&2; exit 3; }

check() {
  [ "$(id -u)" -eq 0 ] || die "CPU budgets need root (cgroup v1 writes); run as root"
  { [ -d "$CG" ] && [ -w "$CG" ]; } || die "no writable cgroup v1 cpu controller at $CG"
  [ -f "$CG/cpu.cfs_quota_us" ] || die "$CG has no cpu.cfs_quota_us (not the cgroup v1 cpu controller)"
}

# budget_of RANK SECONDS: the cores this rank has now.
budget_of() {
  local rank=$1 now=$2 e r rest cores win from to out
  out=${PHX_BUDGET_DEFAULT:-1}
  IFS=, read -r -a entries <<< "${PHX_BUDGETS:-}"
  for e in "${entries[@]}"; do
    [ -n "$e" ] || continue
    r=${e%%:*}; rest=${e#*:}
    [ "$r" = "$rank" ] || continue
    cores=${rest%%@*}
    if [ "$rest" != "$cores" ]; then
      win=${rest#*@}; from=${win%-*}; to=${win#*-}
      awk -v n="$now" -v f="$from" -v t="$to" 'BEGIN{exit !(n >= f && n < t)}' && out=$cores
    else
      out=$cores
    fi
  done
  echo "$out"
}

quota_of() {  # cores -> quota in us for the period
  awk -v c="$1" -v p="$PERIOD" 'BEGIN{q=int(c*p+0.5); if (q < 1000) q=1000; print q}'
}

case "${1:-}" in
check) check ;;
run)
  shift
  PHX_BUDGETS="" PHX_BUDGET_DEFAULT=1 PERIOD=10000
  while [ $# -gt 0 ]; do
    case "$1" in
      --budgets) PHX_BUDGETS=$2; shift 2 ;;
      --default) PHX_BUDGET_DEFAULT=$2; shift 2 ;;
      --period-us) PERIOD=$2; shift 2 ;;
      --) shift; break ;;
      *) echo "cpu_budget: unknown option $1 (usage: run --budgets SPEC [--default CORES] -- CMD...)" >&2; exit 2 ;;
    esac
  done
  [ $# -gt 0 ] || { echo "cpu_budget: run needs a command after --" >&2; exit 2; }
  check
  for e in ${PHX_BUDGETS//,/ }; do
    [[ "$e" =~ ^[0-9]+:[0-9.]+(@[0-9.]+-[0-9.]+)?$ ]] || { echo "cpu_budget: bad budget '$e' (expected RANK:CORES or RANK:CORES@FROM-TO)" >&2; exit 2; }
  done
  PARENT="$CG/phoenix-budget-$$"
  mkdir "$PARENT"
  cleanup() {
    # every rank group the job made, then the parent (processes still inside go back to the
    # root group first so that nothing is left behind)
    # (after an MPI_Abort, ranks may still be exiting, or a rank's budget watcher may still be
    # moving in: a few tries over up to 5 s)
    local d p i
    for d in "$PARENT"/rank*; do
      [ -d "$d" ] || continue
      for i in $(seq 1 50); do
        while read -r p; do echo "$p" > "$CG/cgroup.procs" 2>/dev/null || true; done < "$d/cgroup.procs"
        rmdir "$d" 2>/dev/null && break
        sleep 0.1
      done
      [ -d "$d" ] && echo "cpu_budget: could not remove $d" >&2
    done
    rmdir "$PARENT" 2>/dev/null || echo "cpu_budget: could not remove $PARENT" >&2
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  export PHX_BUDGET_CGROUP=$PARENT PHX_BUDGETS PHX_BUDGET_DEFAULT PHX_BUDGET_PERIOD=$PERIOD
  export PHX_BUDGET_START=$(date +%s.%N)
  rc=0
  "$@" || rc=$?
  exit $rc
  ;;
exec)
  shift
  [ $# -gt 0 ] || { echo "cpu_budget: exec needs a command" >&2; exit 2; }
  [ -n "${PHX_BUDGET_CGROUP:-}" ] || exec "$@"   # not under `run`: no budget
  rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
  PERIOD=${PHX_BUDGET_PERIOD:-10000}
  G="$PHX_BUDGET_CGROUP/rank$rank"
  mkdir -p "$G"
  echo "$PERIOD" > "$G/cpu.cfs_period_us"
  quota_of "$(budget_of "$rank" 0)" > "$G/cpu.cfs_quota_us"
  echo $$ > "$G/cgroup.procs"
  # A transient straggler: a watcher (in the root group, bounded by the rank's life) moves the
  # quota at the window's edges.
  if [[ "${PHX_BUDGETS:-}" == *"$rank:"*"@"* ]]; then
    ( me=$$
      echo "$BASHPID" > "$CG/cgroup.procs"
      while kill -0 "$me" 2>/dev/null; do
        now=$(awk -v s="$PHX_BUDGET_START" -v n="$(date +%s.%N)" 'BEGIN{print n - s}')
        quota_of "$(budget_of "$rank" "$now")" > "$G/cpu.cfs_quota_us" 2>/dev/null || break
        sleep 0.2
      done ) &
  fi
  exec "$@"
  ;;
*) echo "usage: $0 run --budgets SPEC [--default CORES] -- CMD... | exec CMD... | check" >&2; exit 2 ;;
esac
