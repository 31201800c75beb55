#!/usr/bin/env bash
# The start-up probe: ./probe.sh LAYERS... runs python -m litespark.train --preset llama-3b with each
# layer count (10 steps, mock data, no checkpoints) and shows what the planner and the probe decided.
# On an H100, llama-3b (28 layers) has micro-batch 2 unsure and 30 layers has it predicted over the
# device; on an H200, micro-batch 8 is unsure at 29 and 31 layers.  On the GPU host from the
# repository root, with PYTHONPATH=/tmp/site:$PWD; writes OUT/probe/.
set -uo pipefail
OUT=${OUT:?}/probe; mkdir -p "$OUT"
for layers in "$@"; do
  python3 -m litespark.train --preset llama-3b --plan 1 --set model.num_layers="$layers" > "$OUT/plan$layers.txt" 2>&1
  python3 -m litespark.train --preset llama-3b --data mock --train-iters 10 --run-dir "/tmp/probe$layers" \
    --set model.num_layers="$layers" --set run.log_interval=5 --set checkpoint.enabled=false \
    > "$OUT/layers$layers.log" 2>&1
  echo "layers $layers: exit $?"
  grep -E "probe|micro-batch|step +(5|10)/" "$OUT/layers$layers.log" | grep -v Warning | head -12
done
