# The body of slurm/pretrain_{3b,30b}.sh and slurm/sft.sh (sourced after they set their defaults; not
# submitted itself).
#
# Environment (all optional):
#   LITESPARK_ENTRY           litespark.train (default), litespark.sft or litespark.dpo
#   LITESPARK_PRESET          preset name (the calling script sets its own default)
#   LITESPARK_DATA            litespark.train: comma-separated indexed-dataset prefixes, or "mock";
#                             litespark.sft / litespark.dpo: the examples or preference pairs (JSONL file or
#                             Hugging Face dataset; required)
#   LITESPARK_HF              litespark.sft / litespark.dpo: the Hugging Face Llama directory to start from
#   LITESPARK_RUN_NAME        default: the preset
#   LITESPARK_RUN_DIR         default runs/<run name>-<job id>; stable across requeues, so a requeued job resumes
#   LITESPARK_SET             extra overrides, space-separated KEY=VALUE (e.g. "optim.lr=1e-4 run.train_iters=500")
#   LITESPARK_GPUS_PER_NODE   processes per node (default: the allocation's tasks per node)
#   LITESPARK_MAX_RESTARTS    requeues after a failure that is not a preemption (default 2)
#   LITESPARK_PYTHON          interpreter (default: python)
#   LITESPARK_LAUNCHER        srun (default) or torchrun (one host, no Slurm step: the scaling runs)
#   LITESPARK_MASTER_PORT     rendezvous port (default 20000 + job id mod 40000)
# Arguments: --dry-run prints the resolved launch and config and exits; anything else goes to
# `python -m $LITESPARK_ENTRY` after the overrides above (e.g. --export-hf OUT for litespark.sft and litespark.dpo).
set -euo pipefail

# A mistake in the environment is one line and exit 2, which the job never requeues.
die() { echo "litespark: error: $*" >&2; exit 2; }
integer() {  # NAME VALUE MIN: VALUE must be a whole number >= MIN
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || die "$1=$2 is not a whole number >= $3"
}

PY=${LITESPARK_PYTHON:-python}
PRESET=${LITESPARK_PRESET:?the job script sets LITESPARK_PRESET}
JOB=${SLURM_JOB_ID:-local}
RESTART=${SLURM_RESTART_COUNT:-0}
NODES=${SLURM_JOB_NUM_NODES:-${LITESPARK_NODES:-1}}
integer LITESPARK_NODES "$NODES" 1
PER_NODE=${LITESPARK_GPUS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-8}}
PER_NODE=${PER_NODE%%(*}                     # "8(x4)" -> 8
integer LITESPARK_GPUS_PER_NODE "$PER_NODE" 1
WORLD=$((NODES * PER_NODE))
ENTRY=${LITESPARK_ENTRY:-litespark.train}
case "$ENTRY" in
    litespark.train | litespark.sft | litespark.dpo) ;;
    *) die "LITESPARK_ENTRY=$ENTRY is not litespark.train, litespark.sft or litespark.dpo" ;;
esac
[ "$ENTRY" = litespark.train ] || [ -n "${LITESPARK_DATA:-}" ] || die "LITESPARK_DATA must name the fine-tuning data ($ENTRY)"
[ -z "${LITESPARK_HF:-}" ] || [ "$ENTRY" != litespark.train ] || die "LITESPARK_HF is read by litespark.sft and litespark.dpo only (LITESPARK_ENTRY=$ENTRY)"
RUN_DIR=${LITESPARK_RUN_DIR:-runs/${LITESPARK_RUN_NAME:-$PRESET}-${JOB}}
MAX_RESTARTS=${LITESPARK_MAX_RESTARTS:-2}
integer LITESPARK_MAX_RESTARTS "$MAX_RESTARTS" 0
LAUNCHER=${LITESPARK_LAUNCHER:-srun}
[ "$LAUNCHER" = srun ] || [ "$LAUNCHER" = torchrun ] || die "LITESPARK_LAUNCHER=$LAUNCHER is not srun or torchrun"
export MASTER_PORT=${LITESPARK_MASTER_PORT:-$((20000 + ${JOB//[^0-9]/0} % 40000))}
integer LITESPARK_MASTER_PORT "$MASTER_PORT" 1

DRY_RUN=0
passthrough=()
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then DRY_RUN=1; else passthrough+=("$a"); fi
done
args=(--preset "$PRESET" --run-dir "$RUN_DIR")
[ -n "${LITESPARK_DATA:-}" ] && args+=(--data "$LITESPARK_DATA")
[ -n "${LITESPARK_HF:-}" ] && args+=(--hf "$LITESPARK_HF")
for kv in ${LITESPARK_SET:-}; do args+=(--set "$kv"); done
args+=("${passthrough[@]}")

# Rendezvous on the first host of the allocation.  Its address comes from Slurm (NodeAddr), because
# node names do not always resolve from the compute nodes' own resolver.  First lines are taken with
# sed, which reads its whole input: `| head` would end the writer with SIGPIPE (exit 141), which
# pipefail turns into a failed job whenever the output is long.
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n '1p')
  addr=$(scontrol show node "$first" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | sed -n '1p')
  export MASTER_ADDR=${LITESPARK_MASTER_ADDR:-${addr:-$first}}
else
  export MASTER_ADDR=${LITESPARK_MASTER_ADDR:-127.0.0.1}
fi

# shellcheck source=slurm/cluster_env.sh
source "$LITESPARK_HOME/slurm/cluster_env.sh"
cd "$LITESPARK_HOME"

if [ "$LAUNCHER" = "srun" ]; then
  launch=(srun --kill-on-bad-exit=1 --nodes="$NODES" --ntasks-per-node="$PER_NODE" --ntasks="$WORLD"
          "$PY" -m "$ENTRY" "${args[@]}")
else
  launch=("$PY" -m torch.distributed.run --nnodes=1 --nproc-per-node="$PER_NODE" --master-addr="$MASTER_ADDR"
          --master-port="$MASTER_PORT" -m "$ENTRY" "${args[@]}")
fi

# The interpreter must be the project's: without it every rank would fail with its own traceback.
"$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'deepspeed', 'megatron.core', 'yaml')))" 2>/dev/null \
  || die "$PY cannot import torch, deepspeed, megatron-core and yaml: activate the project's environment or set LITESPARK_PYTHON"

echo "litespark job $JOB (restart $RESTART): $PRESET on $NODES node(s) x $PER_NODE = $WORLD processes," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, run dir $RUN_DIR"
echo "launch: ${launch[*]}"
if [ "$DRY_RUN" = 1 ]; then
  "$PY" -m "$ENTRY" "${args[@]}" --preflight "$WORLD"
  WORLD_SIZE="$WORLD" "$PY" -m "$ENTRY" "${args[@]}" --print-config
  exit 0
fi

# Preflight: a config, data or allocation mistake fails here in seconds (exit 2, never requeued).
"$PY" -m "$ENTRY" "${args[@]}" --preflight "$WORLD" || exit 2

# One log directory per job start: resolved config, git revision, versions, the launch itself.
logdir="$RUN_DIR/slurm/job-${JOB}-restart-${RESTART}"
mkdir -p "$logdir"
WORLD_SIZE="$WORLD" "$PY" -m "$ENTRY" "${args[@]}" --print-config > "$logdir/config.yaml"
{ git -C "$LITESPARK_HOME" rev-parse HEAD 2>/dev/null || echo "not a git checkout"
  git -C "$LITESPARK_HOME" status --short 2>/dev/null | sed -n '1,50p'; } > "$logdir/git.txt"
"$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|megatron|deepspeed|transformer|nvidia-nccl|numpy) ' > "$logdir/versions.txt" || true
{ echo "${launch[*]}"; env | grep -E '^(SLURM_JOB|SLURM_NNODES|NCCL_|CUDA_DEVICE_MAX|MASTER_|LITESPARK_)' | sort; } > "$logdir/launch.txt"

# Preemption: Slurm sends USR1 to this shell (--signal=B:USR1@300); pass it to the training processes,
# which checkpoint and exit 75; then the job is requeued and the next start resumes from the checkpoint.
preempted=0
forward() { preempted=1; echo "$(date +%T) USR1: preemption notice, asking the training processes to checkpoint"; kill -USR1 "$child" 2>/dev/null || true; }
"${launch[@]}" &
child=$!
trap forward USR1 TERM
rc=0
while true; do
  set +e; wait "$child"; rc=$?; set -e
  kill -0 "$child" 2>/dev/null || break      # wait returned because a signal arrived: keep waiting
done
trap - USR1 TERM

requeue() {
  if [ "$JOB" = "local" ]; then echo "not under Slurm: run the same command again to resume"; exit "$rc"; fi
  echo "$(date +%T) requeueing job $JOB ($1)"
  scontrol requeue "$JOB"
  exit 0
}
case "$rc" in
  0) echo "$(date +%T) training finished"; exit 0 ;;
  2) echo "$(date +%T) configuration or data error (exit 2): not requeued"; exit 2 ;;
  74) echo "$(date +%T) a checkpoint could not be written (exit 74, disk full?): not requeued; the previous checkpoint is intact"; exit 74 ;;
  75) requeue "preempted: checkpoint taken" ;;
  *)
    if [ "$preempted" = 1 ]; then requeue "preempted while exiting (exit $rc)"; fi
    if [ "$RESTART" -lt "$MAX_RESTARTS" ]; then requeue "failure $rc, restart $((RESTART + 1)) of $MAX_RESTARTS"; fi
    echo "$(date +%T) failed with exit $rc after $RESTART restart(s): giving up"; exit "$rc" ;;
esac
