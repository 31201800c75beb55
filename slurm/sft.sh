#!/usr/bin/env bash
# Supervised fine-tuning of a Hugging Face Llama on one node (8 GPUs): DP=8, ZeRO-1, FP8, global batch
# 64 packed rows of up to 4096 tokens, the micro-batch the planner fits in the GPU.
#
#   LITESPARK_HF=/models/Llama-3.2-3B LITESPARK_DATA=/data/chat.jsonl sbatch slurm/sft.sh --export-hf /models/llama-3.2-3b-chat
#   LITESPARK_HF=... LITESPARK_DATA=... LITESPARK_SET="run.train_iters=200" bash slurm/sft.sh --dry-run
#
# Same mechanics as slurm/pretrain_30b.sh (preflight, requeue on preemption, one run directory per job
# that a requeued job resumes; see docs/slurm.md); the entry point is python -m litespark.sft
# (docs/post_training.md).  --export-hf writes the model once training has finished.
#SBATCH --job-name=litespark-sft
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
export LITESPARK_ENTRY=litespark.sft
export LITESPARK_PRESET=${LITESPARK_PRESET:-llama-3b}
export LITESPARK_RUN_NAME=${LITESPARK_RUN_NAME:-sft}
# The preset's batch is sized for one GPU; these fit a node.  LITESPARK_SET given by the user comes later and wins.
export LITESPARK_SET="data.global_batch_size=64 ${LITESPARK_SET:-}"
export LITESPARK_HOME=${LITESPARK_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
source "$LITESPARK_HOME/slurm/pretrain_common.sh"
