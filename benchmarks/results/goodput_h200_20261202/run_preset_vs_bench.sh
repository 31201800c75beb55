#!/usr/bin/env bash
# The preset as shipped against the benchmark's Litespark stack, one after the other on one GPU host:
#  1. python -m litespark.bench --stacks litespark (micro-batches tried from 8 down, random tokens);
#  2. python -m litespark.train --preset llama-3b with no override but the step count and run directory
#     (mock data is the preset's default); its one save, at the end, measures the copy of the whole
#     llama-3b state (40 GB) into the host buffers, the time a save blocks training.
# Run on the GPU host from the checkout: bash benchmarks/results/goodput_h200_20261202/run_preset_vs_bench.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD
STEPS=${STEPS:-60}
{ df -h / /tmp /dev/shm; free -g; nproc; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; } > "$OUT/host.txt" 2>&1
python3 -m litespark.environment > "$OUT/environment.txt" 2>&1 || true
python3 -m litespark.bench --preset llama-3b --data random --stacks litespark --out-dir "$OUT" --name bench_litespark \
  > "$OUT/bench.log" 2>&1 || echo "exit $?" >> "$OUT/bench.log"
run=/tmp/runs/preset; rm -rf "$run"
python3 -m litespark.train --preset llama-3b --train-iters "$STEPS" --run-dir "$run" \
  > "$OUT/train_preset.log" 2>&1 || echo "exit $?" >> "$OUT/train_preset.log"
python3 -m litespark.report "$run" > "$OUT/report_preset.log" 2>&1 || true
mkdir -p "$OUT/preset"; cp "$run"/{metrics.jsonl,config.yaml,plan.yaml,environment.json} "$run"/report.md "$OUT/preset/" || true
du -sh "$run"/checkpoints/step_* > "$OUT/preset/checkpoint_size.txt" || true
rm -rf "$run"
cat "$OUT/host.txt"
grep -h "tokens/s" "$OUT/bench.md" "$OUT/bench_litespark.md" 2>/dev/null | head -20 || true
grep -h "micro-batch\|tokens/s\|copied to host\|saved checkpoint\|allocated" "$OUT/train_preset.log" | tail -25
