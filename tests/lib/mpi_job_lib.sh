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
