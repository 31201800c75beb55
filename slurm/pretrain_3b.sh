#!/usr/bin/env bash
# Llama-3B pretraining on one H200 node (8 GPUs): DP=8, ZeRO-1, FP8, global batch 256 sequences of
# 4096 tokens, the micro-batch the planner fits in the GPU (8 on an H200; --plan 8 shows it).
#
#   LITESPARK_DATA=/data/slimpajama_train_text_document sbatch slurm/pretrain_3b.sh
#   LITESPARK_SET="data.micro_batch_size=2" bash slurm/pretrain_3b.sh --dry-run
#
# Same mechanics as slurm/pretrain_30b.sh (see there and docs/slurm.md).
#SBATCH --job-name=litespark-3b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=litespark-%x-%j.out
export LITESPARK_PRESET=${LITESPARK_PRESET:-llama-3b}
# The preset's batch is sized for one GPU; these fit a node.  LITESPARK_SET given by the user comes later and wins.
export LITESPARK_SET="data.global_batch_size=256 ${LITESPARK_SET:-}"
export LITESPARK_HOME=${LITESPARK_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
source "$LITESPARK_HOME/slurm/pretrain_common.sh"
