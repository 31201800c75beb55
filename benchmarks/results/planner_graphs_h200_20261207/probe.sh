#!/usr/bin/env bash
# The start-up probe on an H200: llama-3b with 29 and 31 layers, where the planner is unsure of
# micro-batch 8 (predicted within 5% of the device memory).  On the GPU host, PYTHONPATH=/tmp/site:$PWD.
set -uo pipefail
OUT=${OUT:?}/probe; mkdir -p "$OUT"
for layers in 29 31; do
  python3 -m litespark.train --preset llama-3b --data mock --train-iters 3 --run-dir "/tmp/probe$layers" \
    --set model.num_layers=$layers --set run.log_interval=1 --set checkpoint.enabled=false \
    > "$OUT/layers$layers.log" 2>&1
  echo "layers $layers: exit $?"
  grep -E "probe|micro-batch|step +3" "$OUT/layers$layers.log" | head -20
done
