#!/usr/bin/env bash
# This folder's GPU measurements, in one call on one GPU host (after the stack is installed):
#   1. the 300-step goodput run (14 layers: two of its checkpoints fit the host's disk), evaluation and
#      a checkpoint every 100 steps (../async_checkpoint_h200_20261202/run_goodput.sh);
#   2. the preset as shipped against the benchmark's Litespark stack (run_preset_vs_bench.sh).
# The device returns few files: each part's outputs are packed into one archive under $OUT.
# Run on the GPU host from the checkout: bash benchmarks/results/goodput_h200_20261202/run_all.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
HERE=benchmarks/results/goodput_h200_20261202
NLAYERS=14 bash benchmarks/results/async_checkpoint_h200_20261202/run_goodput.sh > "$OUT/goodput.txt" 2>&1
STEPS=${STEPS:-60} bash $HERE/run_preset_vs_bench.sh > "$OUT/preset_vs_bench.txt" 2>&1
cd "$OUT" || exit 1
grep -h "warm-up\|page-locked\|micro-batch" train_*.log | cut -c1-260
tar czf results.tgz --exclude results.tgz . && find . -mindepth 1 ! -name results.tgz ! -name '*.txt' -exec rm -rf {} + 2>/dev/null
tail -25 "$OUT/goodput.txt"; tail -12 "$OUT/preset_vs_bench.txt"
