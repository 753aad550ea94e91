#!/usr/bin/env bash
# The accuracy figures of docs/perf.md: Phoenix with the papers' settings (batch 32, plain SGD,
# lr 0.01) for 3 epochs over seeds 0-2, PyTorch with the same settings and seeds, and Phoenix's
# defaults (momentum 0.9) for 3 epochs. Prints test accuracy after each epoch.
# Usage: apps/scripts/accuracy.sh build/bin/phoenix [OUTDIR]
set -euo pipefail
PHX=${1:?usage: accuracy.sh PATH/TO/phoenix [OUTDIR]}
OUT=${2:-phoenix-run/accuracy}
mkdir -p "$OUT"
for seed in 0 1 2; do
  "$PHX" train --epochs 3 --momentum 0 --lr 0.01 --lr-schedule constant --batch 32 --seed $seed --threads 1 \
    --metrics "$OUT/paper_seed$seed.csv" --log-level warn
  echo "phoenix paper-settings seed $seed: $(cut -d, -f2,5 "$OUT/paper_seed$seed.csv" | tail -n +2 | tr '\n' ' ')"
  if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "$(dirname "$0")/torch_ref.py" --epochs 3 --seed $seed \
      | sed "s/^/pytorch paper-settings seed $seed: /"
  fi
done
for seed in 0 1 2; do
  "$PHX" train --epochs 3 --seed $seed --threads 1 --metrics "$OUT/default_seed$seed.csv" --log-level warn
  echo "phoenix defaults seed $seed: $(cut -d, -f2,5 "$OUT/default_seed$seed.csv" | tail -n +2 | tr '\n' ' ')"
done
