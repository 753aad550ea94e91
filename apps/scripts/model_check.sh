#!/usr/bin/env bash
# make model-check: the membership and chain fail-over model (recovery/model/membership.pml)
# checked exhaustively with spin, then each earlier form of the protocol (OLD_RESEND,
# OLD_AHEAD, OLD_EPOCHS: the code before the fixes the model check led to) must FAIL, so the
# model is shown to catch what it was written for. recovery/model/README.md says what each
# property means and what the model abstracts away.
# Usage: model_check.sh [WORKDIR]   (needs spin and gcc; apps/scripts/install_deps.sh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=$HERE/../../recovery/model/membership.pml
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
command -v spin > /dev/null || { echo "model-check: spin is not installed (apps/scripts/install_deps.sh installs it)" >&2; exit 2; }
cd "$WORK"
cp "$MODEL" membership.pml
# verify NAME EXPECT(pass|fail) SPIN-DEFINES...
verify() {
  local name=$1 expect=$2; shift 2
  local t0=$SECONDS
  spin "$@" -a membership.pml > /dev/null
  gcc -O2 -DSAFETY -DCOLLAPSE -DMEMLIM=16000 -w -o "pan_$name" pan.c
  "./pan_$name" -m400000 > "$name.out" 2>&1 || true
  local errors states
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$name.out" | tail -1)
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$name.out" | tail -1)
  if grep -q "Search not completed\|out of memory" "$name.out" && [ "$errors" = 0 ]; then
    echo "model-check: $name: the search did not complete ($states states): not a proof" >&2; return 1
  fi
  local what
  what=$(grep -m1 "^pan:1:" "$name.out" | cut -c1-120 || true)
  echo "  $name: ${errors:-?} error(s), $states states, $((SECONDS - t0)) s ${what:+($what)}"
  case $expect in
    pass) [ "$errors" = 0 ] ;;
    fail) [ "${errors:-0}" != 0 ] ;;
  esac
}
rc=0
verify current pass || { echo "model-check: FAIL: the protocol as built violates a property (trail: $WORK)"; rc=1; }
verify old-resend fail -DOLD_RESEND || { echo "model-check: FAIL: the model no longer finds the lost-view bug"; rc=1; }
verify old-ahead fail -DOLD_AHEAD || { echo "model-check: FAIL: the model no longer finds the stale-coordinator bug"; rc=1; }
verify old-epochs fail -DOLD_EPOCHS || { echo "model-check: FAIL: the model no longer finds the two-heads-in-one-epoch bug"; rc=1; }
[ $rc = 0 ] && echo "model-check: passed (the current protocol holds P1-P3; each older form is caught)"
exit $rc
