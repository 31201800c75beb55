#!/usr/bin/env bash
# The llama-3b save measurements: one synchronous and one asynchronous save of the whole model
# (42 GB with the fp32 optimizer state; the host's 64 GiB disk holds one such checkpoint, not two).
# Run on the GPU host from the checkout: bash benchmarks/results/async_checkpoint_h200_20261202/run_saves.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD
HERE=benchmarks/results/async_checkpoint_h200_20261202
{ df -h / /tmp /dev/shm; free -g; nproc; } > "$OUT/host.txt" 2>&1
python3 -m litespark.environment > "$OUT/environment.txt" 2>&1 || true
python3 $HERE/host_copy_speed.py 16 2>&1 | tee "$OUT/host_copy_speed.log"
COMMON=(--preset llama-3b --data mock --train-iters 20 --set data.micro_batch_size=8
        --set run.log_interval=5 --set checkpoint.save_interval=20 --set checkpoint.keep_last=1)
for mode in sync async; do
  run=/tmp/runs/save_$mode; rm -rf "$run"
  flag=$([ $mode = sync ] && echo false || echo true)
  python3 -m litespark.train "${COMMON[@]}" --run-dir "$run" --set checkpoint.async_save=$flag \
    > "$OUT/train_save_$mode.log" 2>&1 || echo "exit $?" >> "$OUT/train_save_$mode.log"
  mkdir -p "$OUT/save_$mode"; cp "$run"/{metrics.jsonl,config.yaml,environment.json} "$OUT/save_$mode/"
  du -sh "$run"/checkpoints/step_* >> "$OUT/save_$mode/checkpoint_size.txt"
  rm -rf "$run"
done
grep -h '"checkpoint"' "$OUT"/save_*/metrics.jsonl
grep -h "saved checkpoint\|copied to host" "$OUT"/train_save_*.log
