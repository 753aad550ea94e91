# Sourced by the sbatch scripts of slurm/: paths and flags from SLURM's variables and the
# PHOENIX_* knobs (README.md), nothing specific to one cluster. Not a job script itself.

# The repository the job was submitted from (sbatch copies the script away, so $0 says nothing).
PHOENIX_HOME=${PHOENIX_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
PHOENIX_BIN=${PHOENIX_BIN:-$PHOENIX_HOME/build/bin/phoenix}
# One directory per job (requeued runs of a job share it): metrics, summary, snapshots, logs.
PHOENIX_RUN_DIR=${PHOENIX_RUN_DIR:-$PHOENIX_HOME/phoenix-run/slurm-${SLURM_JOB_ID:-manual}}
PHOENIX_SERVERS=${PHOENIX_SERVERS:-1}
PHOENIX_SPARES=${PHOENIX_SPARES:-0}
PHOENIX_MODEL=${PHOENIX_MODEL:-cnn}
PHOENIX_EPOCHS=${PHOENIX_EPOCHS:-1}
# Anything else for `phoenix train` (e.g. "--sync ssp --staleness 3 --data-dir /shared/fmnist").
PHOENIX_ARGS=${PHOENIX_ARGS:-}
NTASKS=${SLURM_NTASKS:-${SLURM_NPROCS:-4}}

if [ ! -x "$PHOENIX_BIN" ]; then
  echo "phoenix-slurm: error: $PHOENIX_BIN is not an executable; build Phoenix (make build) in" \
       "$PHOENIX_HOME or set PHOENIX_BIN" >&2
  exit 2
fi
mkdir -p "$PHOENIX_RUN_DIR"

# Open MPI's mpirun inside the allocation: it reads the hosts and slots from SLURM. More ranks
# than allocated cores need --oversubscribe (set PHOENIX_OVERSUBSCRIBE=0 to forbid it); root
# needs --allow-run-as-root.
MPIRUN=(mpirun -n "$NTASKS" --bind-to none)
[ "${PHOENIX_OVERSUBSCRIBE:-1}" = 1 ] && MPIRUN+=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
# The flag that keeps survivors alive, for the mpirun on PATH: Open MPI 4 --enable-recovery,
# Open MPI 5 --with-ft ulfm (apps/scripts/mpirun_ft_flag.sh); empty when neither is known.
read -r -a FT_FLAG <<< "$("$PHOENIX_HOME/apps/scripts/mpirun_ft_flag.sh" 2>/dev/null || true)"

TRAIN_ARGS=(train --servers "$PHOENIX_SERVERS" --spares "$PHOENIX_SPARES" --model "$PHOENIX_MODEL"
            --metrics "$PHOENIX_RUN_DIR/metrics.csv"
            --summary "$PHOENIX_RUN_DIR/summary.json" --checkpoint-dir "$PHOENIX_RUN_DIR/checkpoints")
# --steps in PHOENIX_ARGS sets the length instead of --epochs (phoenix refuses both at once)
case " $PHOENIX_ARGS " in *" --steps "*) ;; *) TRAIN_ARGS+=(--epochs "$PHOENIX_EPOCHS");; esac
# shellcheck disable=SC2206  # PHOENIX_ARGS is a list of flags on purpose
TRAIN_ARGS+=($PHOENIX_ARGS)

echo "phoenix-slurm: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}," \
     "$NTASKS tasks, run dir $PHOENIX_RUN_DIR"
