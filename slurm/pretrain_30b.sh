#!/usr/bin/env bash
# Llama-30B pretraining on 4 H200 nodes (32 GPUs): TP=4 inside a node, DP=8 across, ZeRO-1, FP8,
# global batch 256 sequences of 4096 tokens, the micro-batch the planner fits in the GPU (2 on an
# H200).  python -m litespark.train --preset llama-30b --plan 32 shows the arithmetic (docs/planner.md).
#
#   LITESPARK_DATA=/data/slimpajama_train_text_document sbatch slurm/pretrain_30b.sh
#   sbatch --nodes=8 slurm/pretrain_30b.sh                  # sbatch options override the lines below
#   LITESPARK_SET="optim.lr=1e-4" bash slurm/pretrain_30b.sh --dry-run   # resolved launch + config only
#
# Submit from the repository root (or export LITESPARK_HOME).  Preemption: Slurm signals USR1 five
# minutes before the end; the trainer checkpoints, the job requeues itself and resumes automatically.
#SBATCH --job-name=litespark-30b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=litespark-%x-%j.out
export LITESPARK_PRESET=${LITESPARK_PRESET:-llama-30b}
export LITESPARK_HOME=${LITESPARK_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
source "$LITESPARK_HOME/slurm/pretrain_common.sh"
