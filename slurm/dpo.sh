#!/usr/bin/env bash
# DPO of a Hugging Face Llama (usually an SFT result) on one node (8 GPUs): DP=8, ZeRO-1, FP8, global
# batch 64 packed rows of whole preference pairs, the micro-batch the planner fits in the GPU.
#
#   LITESPARK_HF=/models/llama-3.2-3b-chat LITESPARK_DATA=/data/prefs.jsonl sbatch slurm/dpo.sh --export-hf /models/llama-3.2-3b-dpo
#   LITESPARK_HF=... LITESPARK_DATA=... LITESPARK_SET="dpo.beta=0.1" bash slurm/dpo.sh --dry-run
#
# Same mechanics as slurm/pretrain_30b.sh (preflight, requeue on preemption, one run directory per job
# that a requeued job resumes, its reference log-probabilities included; see docs/slurm.md); the
# entry point is python -m litespark.dpo (docs/post_training.md).
#SBATCH --job-name=litespark-dpo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=litespark-%x-%j.out
export LITESPARK_ENTRY=litespark.dpo
export LITESPARK_PRESET=${LITESPARK_PRESET:-llama-3b}
export LITESPARK_RUN_NAME=${LITESPARK_RUN_NAME:-dpo}
# The preset's batch is sized for one GPU; these fit a node.  LITESPARK_SET given by the user comes later and wins.
export LITESPARK_SET="data.global_batch_size=64 ${LITESPARK_SET:-}"
export LITESPARK_HOME=${LITESPARK_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
source "$LITESPARK_HOME/slurm/pretrain_common.sh"
