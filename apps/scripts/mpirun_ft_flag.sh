#!/usr/bin/env bash
# Prints the mpirun flag that keeps the surviving ranks alive when one dies, for the mpirun on
# PATH (or $1): Open MPI 4.x `--enable-recovery`, Open MPI 5.x `--with-ft ulfm` (real ULFM).
# Exit 2 with a one-line error for an mpirun that has neither (MPICH's cannot survive a death).
set -euo pipefail
MPIRUN=${1:-mpirun}
v=$("$MPIRUN" --version 2>/dev/null | head -1) || { echo "mpirun_ft_flag: '$MPIRUN --version' failed; is Open MPI installed?" >&2; exit 2; }
case "$v" in
  *"Open MPI"*" 4."*) echo "--enable-recovery" ;;
  *"Open MPI"*" 5."*|*"Open MPI"*" 6."*) echo "--with-ft ulfm" ;;
  *) echo "mpirun_ft_flag: '$v' is not Open MPI 4 or 5: no known flag keeps survivors alive (set PHX_LAUNCH_SURVIVES=1 if your launcher does)" >&2; exit 2 ;;
esac
