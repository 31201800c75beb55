"""Per-step (loss, gradient norm) of test_fp32_grad_accumulation_trains_like_bf16_gradients[fp8]'s two
runs, with the FP8 output layer on and off: run on a GPU host from the repository root as
``python benchmarks/results/fp8head_h100_20261128/diag_fp32_grads.py`` (output: diag_fp32_grads.txt)."""
import sys

import torch

sys.path.insert(0, "tests")
import test_gpu as T  # noqa: E402

from litespark.engine import build_engine  # noqa: E402

out = {}
for head in ("true", "false"):
    for fused in (True, False):
        cfg, model = T._build("te", "precision.fp8=true", "data.global_batch_size=4", "optim.lr=1e-3",
                              "optim.warmup_iters=2", "optim.min_lr=1e-3", "optim.clip_grad=0.5",
                              f"precision.fp32_grad_accumulation={str(fused).lower()}",
                              f"precision.fp8_output_layer={head}")
        engine, opt, _ = build_engine(cfg, model, 1)
        r = T._losses_and_norms(engine, cfg, 8)
        out[f"head={head} fused={fused}"] = r
        print(f"head={head} fused={fused}", [f"{l:.4f}/{n:.4f}" for l, n in r], flush=True)
        del engine, model, opt
        torch.cuda.empty_cache()
for head in ("true", "false"):
    a, b = out[f"head={head} fused=True"], out[f"head={head} fused=False"]
    print("head", head, "norm rel diff %", [round(100 * (x[1] - y[1]) / y[1], 2) for x, y in zip(a, b)],
          "loss rel diff %", [round(100 * (x[0] - y[0]) / y[0], 2) for x, y in zip(a, b)])
