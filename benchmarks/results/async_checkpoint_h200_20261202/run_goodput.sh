#!/usr/bin/env bash
# 300 steps with an evaluation and a checkpoint every 100, the automatic micro-batch, asynchronous saves, then the
# report.  NLAYERS=14 (half of llama-3b, a 21 GB checkpoint) lets two checkpoints share the host's
# 64 GiB disk, which a 300-step run with a save every 100 steps needs (the previous checkpoint stays
# until the next is committed).
# Run on the GPU host from the checkout: NLAYERS=14 bash benchmarks/results/async_checkpoint_h200_20261202/run_goodput.sh
# EXTRA_SETS adds settings, e.g. EXTRA_SETS="--set checkpoint.overlap_copy=true".
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD
NLAYERS=${NLAYERS:-28}
run=/tmp/runs/goodput_l$NLAYERS; rm -rf "$run"
python3 -m litespark.train --preset llama-3b --data mock --train-iters 300 --run-dir "$run" \
  --set model.num_layers=$NLAYERS --set run.log_interval=10 \
  --set run.eval_interval=100 --set run.eval_iters=10 --set checkpoint.save_interval=100 \
  --set checkpoint.keep_last=1 ${EXTRA_SETS:-} > "$OUT/train_goodput_l$NLAYERS.log" 2>&1 || echo "exit $?" >> "$OUT/train_goodput_l$NLAYERS.log"
python3 -m litespark.report "$run" > "$OUT/report_goodput_l$NLAYERS.log" 2>&1 || true
mkdir -p "$OUT/goodput_l$NLAYERS"
cp "$run"/{metrics.jsonl,config.yaml,environment.json} "$run"/report* "$OUT/goodput_l$NLAYERS/" || true
du -sh "$run"/checkpoints/step_* > "$OUT/goodput_l$NLAYERS/checkpoint_size.txt" || true
rm -rf "$run"
grep -h "saved checkpoint\|checkpoint of step\|validation" "$OUT/train_goodput_l$NLAYERS.log" || true
sed -n '/Where the time went/,/Plots/p' "$OUT/goodput_l$NLAYERS/report.md" || true
