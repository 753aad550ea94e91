#!/usr/bin/env bash
# make fuzz: builds the libFuzzer harnesses (tests/fuzz, clang, ASan+UBSan, build-fuzz), replays
# each one's seed corpus (tests/fuzz/corpus/NAME) and every crash kept from earlier runs
# (tests/fuzz/crashes/NAME: each a regression test), then fuzzes each for FUZZ_SECONDS (60).
# New inputs go to build-fuzz/corpus/NAME (not into the repository); a crash is written to
# tests/fuzz/crashes/NAME/ and fails the run: fix it, keep the file.
# Usage: fuzz.sh [BUILD_DIR]   (FUZZ_SECONDS=10 in CI; FUZZ_ONLY="view idx" picks harnesses)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-$ROOT/build-fuzz}
SECS=${FUZZ_SECONDS:-60}
HARNESSES=${FUZZ_ONLY:-view idx snapshot config server}
command -v clang++ > /dev/null || { echo "fuzz: clang++ is not installed (apps/scripts/install_deps.sh installs it)" >&2; exit 2; }
cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DPHX_FUZZ=ON -DPHX_WITH_CUDA=OFF -DPHX_BUILD_TESTS=OFF \
  -DPHX_BUILD_BENCHMARKS=OFF > "$B.configure.log" 2>&1 || { tail -20 "$B.configure.log"; exit 1; }
targets=()
for h in $HARNESSES; do targets+=("fuzz_$h"); done
cmake --build "$B" -j "${JOBS:-2}" --target "${targets[@]}" > "$B.build.log" 2>&1 || { tail -30 "$B.build.log"; exit 1; }
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rc=0
for h in $HARNESSES; do
  seeds=$ROOT/tests/fuzz/corpus/$h crashes=$ROOT/tests/fuzz/crashes/$h work=$B/corpus/$h
  mkdir -p "$work" "$crashes"
  # replay: the seeds and every kept crash must run clean
  replay=("$seeds")
  [ -n "$(ls -A "$crashes")" ] && replay+=("$crashes")
  if ! "$B/tests/fuzz/fuzz_$h" -runs=0 "${replay[@]}" > "$B/$h.replay.log" 2>&1; then
    echo "fuzz: $h: a seed or a kept crash fails: $(grep -m1 -E 'ERROR|SUMMARY|deadly' "$B/$h.replay.log")"; rc=1; continue
  fi
  t0=$SECONDS
  if "$B/tests/fuzz/fuzz_$h" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
       -artifact_prefix="$crashes/" "$work" "$seeds" > "$B/$h.log" 2>&1; then
    echo "  fuzz_$h: $(grep -E '^#[0-9]+' "$B/$h.log" | tail -1 | awk '{print $1 " runs, coverage " $4 " edges, " $6 " features"}' | tr -d '#'), $((SECONDS - t0)) s, no crash"
  else
    echo "fuzz: $h: CRASH (input kept in tests/fuzz/crashes/$h): $(grep -m1 -E 'ERROR|SUMMARY|deadly' "$B/$h.log")"
    rc=1
  fi
done
exit $rc
