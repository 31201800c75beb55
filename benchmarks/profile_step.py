"""Where one optimizer step's GPU time goes, by kernel family, for any benchmark stack.

    python benchmarks/profile_step.py --stack litespark --preset llama-3b --micro-batch 4 \
        --out benchmarks/results/profile_litespark_h200

Builds the stack exactly as ``python -m litespark.bench`` does, runs ``--warmup`` steps, then records
``--steps`` steps with the PyTorch profiler (CUDA activity) and sums kernel time into families
(GEMM, attention, FP8 casts, norms, optimizer, copies, ...).  Writes ``OUT.json`` and ``OUT.md`` with
the family table and the 25 most expensive kernels; the step's wall time and the GPU-busy fraction
show how much is launch or host overhead rather than kernels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

# First match wins; patterns are matched against the lower-cased kernel name.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("attention", r"fmha|flash|cudnn.*attn|attn.*cudnn|sdpa|fprop_attn|bprop_attn|scaled_dot|cudnn_generated"),
    ("nccl", r"nccl"),
    ("optimizer", r"adam|multi_tensor|foreach|_amp_|clip"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|cublas|wgmma|matmul"),
    ("fp8 cast/transpose/amax", r"cast|transpose|amax|quantiz|fp8|scale"),
    ("norm", r"rmsnorm|layernorm|layer_norm|rms_norm|norm"),
    ("rope", r"rope|rotary"),
    ("swiglu/activation", r"swiglu|silu|gelu|act_|dact|glu"),
    ("cross entropy / softmax", r"cross_entropy|softmax|log_softmax|nll|vocab"),
    ("copy/fill", r"copy|memcpy|memset|fill|cat|index"),
    ("elementwise/reduce", r"elementwise|vectorized|reduce|unrolled"),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, pattern in FAMILIES:
        if re.search(pattern, low):
            return fam
    return "other"


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from litespark.bench.data import load_windows
    from litespark.bench.stacks import STACKS, build_stack
    from litespark.cli import add_config_args, load_config, quiet_optional_dependency_warnings
    from litespark.config import resolve_backend
    from litespark.distributed import init_distributed
    from litespark.metrics import flops_per_token

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--stack", choices=STACKS, default="litespark")
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--data", default="random")
    p.add_argument("--out", required=True, help="output stem (OUT.json, OUT.md)")
    args = p.parse_args(argv)
    quiet_optional_dependency_warnings()
    if not torch.cuda.is_available():
        print("profile_step.py: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = resolve_backend(load_config(args, ["checkpoint.enabled=false", "checkpoint.resume=false",
                                             f"data.micro_batch_size={args.micro_batch}",
                                             f"run.train_iters={args.warmup + args.steps}"]))
    init_distributed(1, cfg.run.seed, graph_safe_rng=cfg.kernels.cuda_graphs)
    g = cfg.data.global_batch_size
    tokens = load_windows(args.data, (args.warmup + args.steps) * g, cfg.model.seq_length + 1, cfg.model.vocab_size,
                          cfg.run.seed)
    built = build_stack(args.stack, cfg)

    def batches(k):
        return list(tokens[k * g:(k + 1) * g].cuda().split(cfg.data.micro_batch_size))

    for k in range(args.warmup):
        built.step(batches(k))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for k in range(args.warmup, args.warmup + args.steps):
            built.step(batches(k))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0

    per_kernel: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[evt.key] += evt.self_device_time_total / 1e3  # us -> ms
    by_family: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        by_family[family(name)] += ms
    busy = sum(by_family.values())
    steps = args.steps
    wall_ms = 1e3 * wall / steps
    tok_s = g * cfg.model.seq_length * steps / wall
    report = {
        "stack": args.stack, "description": built.description, "micro_batch": args.micro_batch,
        "step_wall_ms": wall_ms, "gpu_busy_ms_per_step": busy / steps, "gpu_busy_fraction": busy / 1e3 / wall,
        "tokens_per_s": tok_s, "tflops": tok_s * flops_per_token(cfg.model) / 1e12,
        "families_ms_per_step": {k: v / steps for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": {k: v / steps for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:25]},
        "gpu": torch.cuda.get_device_name(), "command": "python benchmarks/profile_step.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# One optimizer step of `{args.stack}` (micro-batch {args.micro_batch}) on {report['gpu']}", "",
             f"`{report['command']}`", "",
             f"Step wall time {wall_ms:.1f} ms, kernels busy {busy / steps:.1f} ms ({100 * report['gpu_busy_fraction']:.1f}%), "
             f"{tok_s:,.0f} tokens/s, {report['tflops']:.0f} TFLOP/s.", "",
             "| kernel family | ms per step | share of busy |", "|---|---|---|"]
    for fam, ms in report["families_ms_per_step"].items():
        lines.append(f"| {fam} | {ms:.1f} | {100 * ms * steps / busy:.1f}% |")
    lines += ["", "| kernel | ms per step |", "|---|---|"]
    for name, ms in report["top_kernels_ms_per_step"].items():
        lines.append(f"| `{name[:110]}` | {ms:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
