# Shared by the shell tests that run mpirun jobs (sourced, after `set -u` and PHX=...): a
# temporary directory removed at exit, pass/fail counters, and the environment every job needs
# here (root allowed, passive OpenMP waits on 2 oversubscribed cores).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_WAIT_POLICY=PASSIVE

# The mpirun flag that keeps survivors alive, for the MPI in use (Open MPI 4: --enable-recovery,
# Open MPI 5: --with-ft ulfm), as an array: "${FT_FLAG[@]}".
read -r -a FT_FLAG <<< "$("$(dirname "${BASH_SOURCE[0]}")/../../apps/scripts/mpirun_ft_flag.sh")"
# Open MPI 5: a job's ranks and spawned replacements must also reach each other over TCP
# (a spawned job is not reachable over shared memory alone; shared/infra-notes.md), and TCP
# must stay on loopback here (with every interface, 5.0.7's TCP component found "no reachable
# pairing" between this machine's own addresses and every job failed at its first message).
# Open MPI 4.1 as well: its TCP (a spawned replacement's links, the runtime's own channel)
# stays on loopback, never on this machine's eth0 address. The several-hosts tests set their
# bed's network after sourcing this.
MPI_EXTRA=()
export OMPI_MCA_btl_tcp_if_include=lo
if [ "${FT_FLAG[0]}" = "--with-ft" ]; then
  MPI_EXTRA=(--mca btl self,sm,tcp)
else
  export OMPI_MCA_oob_tcp_if_include=lo
fi

# audit_once PREFIX N: the --audit-samples files PREFIX.w* list N distinct samples, each once.
audit_once() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import collections, glob, sys
c = collections.Counter(tuple(l.split()) for f in glob.glob(sys.argv[1] + ".w*") for l in open(f))
sys.exit(0 if len(c) == int(sys.argv[2]) and max(c.values()) == 1 else 1)
PY
}
