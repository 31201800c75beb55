#!/usr/bin/env bash
# What is alive at the peak of the CUDA-graph rows (and of one eager control with the same optimizer
# path), to find what the planner missed in them.  Run on the GPU host from the repository root,
# with PYTHONPATH=/tmp/site:$PWD; writes OUT/diagnose/.
set -uo pipefail
OUT=${OUT:?}/diagnose; mkdir -p "$OUT"
M="python3 -m litespark.bench.memory_peak --steps 3"
W30="--preset llama-30b --set model.num_layers=4 --set parallel.tensor_parallel=1 --set data.global_batch_size=8 --set optim.warmup_iters=2"
$M --out "$OUT/3b_fp8_mb2_graphs.json" --preset llama-3b --set data.micro_batch_size=2 > "$OUT/3b_fp8_mb2_graphs.log" 2>&1
$M --out "$OUT/3b_fp8_mb2_eager_bf16grads.json" --preset llama-3b --set data.micro_batch_size=2 \
  --set kernels.cuda_graphs=false --set precision.fp32_grad_accumulation=false > "$OUT/3b_fp8_mb2_eager_bf16grads.log" 2>&1
$M --out "$OUT/3b_bf16_mb2_graphs.json" --preset llama-3b --set precision.fp8=false --set data.micro_batch_size=2 \
  > "$OUT/3b_bf16_mb2_graphs.log" 2>&1
$M --out "$OUT/30bw4_fp8_mb2_graphs.json" $W30 --set data.micro_batch_size=2 > "$OUT/30bw4_fp8_mb2_graphs.log" 2>&1
for f in "$OUT"/*.md; do echo "== $f"; cat "$f"; done
