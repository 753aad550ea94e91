#!/usr/bin/env bash
# Phoenix under Open MPI 5 with real ULFM (ctest label `ulfm`): builds (or reuses) the Debian 13
# root (apps/scripts/ulfm_root.sh), builds Phoenix inside it against Open MPI 5.0.x, oneDNN 3,
# HDF5 1.14, CLI11 2.4, GoogleTest 1.16, and runs the unit, mpi and fault labels there (the fault
# label then also checks that kills are detected by the MPI: detected_by "mpi").
# Exit 77 (skipped) when not root; a root that cannot be built is a failure with its reason.
# Usage: ulfm_test.sh [LABEL-REGEX]   (default: unit|mpi|fault)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOTSH=$HERE/../../apps/scripts/ulfm_root.sh
LABELS=${1:-unit|mpi|fault}
if [ "$(id -u)" -ne 0 ]; then echo "ulfm tests skipped: they need root (debootstrap, chroot)"; exit 77; fi
t0=$SECONDS
"$ROOTSH" ensure || { echo "FAIL: the Open MPI 5 root could not be built (above)"; exit 1; }
echo "ulfm: root ready in $((SECONDS - t0)) s"
t1=$SECONDS
# build-ulfm lives in the project tree (mounted at /phoenix inside the root); CUDA is off there
# (the root has no CUDA toolkit), everything else is Debian 13's.
timeout 1500 "$ROOTSH" run "cmake -S . -B build-ulfm -DCMAKE_BUILD_TYPE=Release -DPHX_WITH_CUDA=OFF \
    -DPHX_BUILD_BENCHMARKS=OFF > build-ulfm.configure.log 2>&1 || { tail -20 build-ulfm.configure.log; exit 1; }; \
    cmake --build build-ulfm -j \${JOBS:-2} > build-ulfm.build.log 2>&1 || { grep -E 'error|Error' build-ulfm.build.log | head -20; exit 1; }" \
  || { echo "FAIL: Phoenix does not build under Open MPI 5 (logs: build-ulfm.*.log)"; exit 1; }
echo "ulfm: built in $((SECONDS - t1)) s"
# (the chaos soak, soak_short, runs under the host's Open MPI 4.1 only: its kills of spares and
# replicas under Open MPI 5 + ULFM are not measured yet)
timeout 2400 "$ROOTSH" run "mpirun --version | head -1; cd build-ulfm && ctest --output-on-failure -j 2 --timeout 900 -L '$LABELS' -E '^soak_short$'"
rc=$?
echo "ulfm: labels $LABELS under Open MPI 5 + ULFM: rc $rc, $((SECONDS - t0)) s in all"
exit $rc
