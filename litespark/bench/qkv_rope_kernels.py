"""Time the single-QKV RoPE kernels of one layer: TE's fused QKV RoPE against Litespark's Triton one.

    python -m litespark.bench.qkv_rope_kernels --out benchmarks/results/rope_ds_h200_20261128/rope_mb.json

``kernels.qkv_rope_kernel`` chooses between them for the whole model; this isolates the kernel so a
step-level A/B can be read against it.  The default shape is one llama-3b layer at micro-batch 8
(sequence 4096, 8 query groups of 3 query heads, head dim 128, bf16).  For each implementation it
prints and writes the mean forward time (no autograd), forward + backward time, the forward's
effective bandwidth (the QKV tensor read once and q, k, v written once), and the largest absolute
difference of q, k, v and the input gradient from TE's.  Needs a CUDA GPU with Transformer Engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from litespark.bench.cuda_timing import time_cuda_ms


def measure(seq: int, batch: int, groups: int, heads_per_group: int, head_dim: int, rotary_base: float) -> dict:
    """{implementation: timings} plus the Triton kernels' largest differences from TE's."""
    import torch
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from transformer_engine.pytorch.attention.rope import apply_fused_qkv_rotary_pos_emb

    from litespark.model.modules.qkv_rope import apply_qkv_rope

    freqs = RotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=rotary_base)(seq)
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(
        seq, batch, groups, (heads_per_group + 2) * head_dim, device="cuda", generator=g, dtype=torch.bfloat16
    ).requires_grad_()
    split = [heads_per_group * head_dim, head_dim, head_dim]
    moved_bytes = qkv.numel() * qkv.element_size() * 2
    grads = None
    results, outputs = {}, {}
    for name, fn in (("te", apply_fused_qkv_rotary_pos_emb), ("triton", apply_qkv_rope)):
        out = fn(qkv, freqs, freqs, split)
        if grads is None:
            grads = [torch.randn_like(t) for t in out]
        (qkv_grad,) = torch.autograd.grad(out, qkv, grads)
        outputs[name] = (*out, qkv_grad)

        def forward(fn=fn):
            with torch.no_grad():
                fn(qkv, freqs, freqs, split)

        def forward_backward(fn=fn, grads=grads):
            torch.autograd.backward(fn(qkv, freqs, freqs, split), grads)

        fwd = time_cuda_ms(forward, 3, 20)
        results[name] = {
            "fwd_ms": fwd,
            "fwd_bwd_ms": time_cuda_ms(forward_backward, 3, 20),
            "fwd_TBps": moved_bytes / fwd / 1e9,
        }
    results["triton_vs_te_max_abs"] = {
        what: float((a.float() - b.float()).abs().max())
        for what, a, b in zip(("q", "k", "v", "qkv_grad"), outputs["triton"], outputs["te"])
    }
    results["shape"] = {
        "seq": seq,
        "batch": batch,
        "groups": groups,
        "heads_per_group": heads_per_group,
        "head_dim": head_dim,
        "rotary_base": rotary_base,
    }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--groups", type=int, default=8, help="query groups (KV heads)")
    p.add_argument("--heads-per-group", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rotary-base", type=float, default=500000.0)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("qkv_rope_microbench: needs a CUDA GPU", file=sys.stderr)
        return 2
    results = measure(args.seq, args.micro_batch, args.groups, args.heads_per_group, args.head_dim, args.rotary_base)
    for name in ("te", "triton"):
        r = results[name]
        print(
            f"{name:7s} forward {r['fwd_ms']:.3f} ms ({r['fwd_TBps']:.2f} TB/s), forward + backward {r['fwd_bwd_ms']:.3f} ms"
        )
    print("triton vs te, largest absolute difference:", results["triton_vs_te_max_abs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
