"""What the alternative MLP and attention implementations would buy inside one Litespark layer.

    python -m litespark.bench.layer_variants --preset llama-3b --micro-batch 8 \
        --out benchmarks/results/layer_variants_h200

The step profile (``python -m litespark.bench.profile_step``) says where a step's time goes; this says whether
swapping one slot's implementation would move it.  For the MLP slot it times forward + backward of

* ``megatron-mlp`` (the reference): Megatron's ``MLP`` with TE ``LayerNormLinear`` (RMSNorm fused
  in), Megatron's compiled SwiGLU and TE ``Linear``;
* ``megatron-mlp-te-swiglu`` (shipped): the same with TE's SwiGLU in the activation slot
  (``kernels.te_swiglu``);
* ``te-layernorm-mlp``: TE's monolithic ``LayerNormMLP``, whose SwiGLU writes FP8 directly;
* ``te-fused-mlp``: Megatron's ``TEFusedMLP`` (TE's operation fuser; ``kernels.fused_mlp``);

under BF16 and the FP8 recipes, on the same weights and inputs, with each variant's relative
difference from the reference module in BF16 (so a faster variant that computes something else shows)
and the peak memory one layer's forward + backward adds (saved activations included).  For the
attention slot it times TE's ``DotProductAttention`` (shipped; cuDNN fused attention) against
PyTorch's SDPA backends on the same causal GQA inputs.  Writes ``OUT.json``, ``OUT.md`` and
``OUT.png``.  Needs a CUDA GPU with Transformer Engine; FP8 needs Hopper.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

from litespark.bench.cuda_timing import time_cuda_ms

RECIPES = ("bf16", "delayed", "tensorwise")


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _config_for(recipe_name: str, cfg):
    """A copy of ``cfg`` with FP8 under ``recipe_name`` ('bf16': without FP8); ``cfg`` is unchanged."""
    import copy

    from litespark.config import apply_overrides

    fp8 = (
        ["precision.fp8=false"]
        if recipe_name == "bf16"
        else ["precision.fp8=true", f"precision.fp8_recipe={recipe_name}"]
    )
    return apply_overrides(copy.deepcopy(cfg), fp8)


def _recipe(recipe_name: str, cfg):
    """TE's recipe for ``recipe_name`` as training gets it (Megatron's ``get_fp8_recipe``), or None for BF16."""
    if recipe_name == "bf16":
        return None
    from megatron.core.fp8_utils import get_fp8_recipe

    return get_fp8_recipe(_transformer_config(_config_for(recipe_name, cfg)))


def _transformer_config(cfg):
    """Megatron's config of ``cfg``'s layers on the te backend (one GPU; the micro-batch plays no part)."""
    from litespark.config import plan_for
    from litespark.model.transformer_config import to_transformer_config

    return to_transformer_config(plan_for(cfg, 1, "te", 1))


def _error_text(exc: Exception) -> str:
    first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def _requantize_weights(module) -> None:
    """Make Megatron's TE linears cast their weights again, as training does once per optimizer step
    (``litespark.training.step.refresh_fp8_weight_cache``): without it they would keep the FP8 weights of
    the first call, cast before delayed scaling had an amax history, and skip every later weight cast.
    Each timed call stands for one step at the bench's 8 sequences = 1 micro-batch of 8."""
    for sub in module.modules():
        if hasattr(sub, "is_first_microbatch"):
            sub.is_first_microbatch = True


def build_mlps(cfg) -> dict:
    """The MLP variants on one device, all holding the reference module's weights."""
    import torch
    import transformer_engine.pytorch as te
    from megatron.core.transformer.spec_utils import build_module

    from litespark.model.layer_spec import get_litespark_layer_spec

    megatron_cfg = copy.deepcopy(cfg)
    megatron_cfg.kernels.te_swiglu = False
    tc = _transformer_config(megatron_cfg)
    megatron = build_module(get_litespark_layer_spec("te", te_swiglu=False).submodules.mlp, config=tc).cuda()
    swiglu_cfg = copy.deepcopy(cfg)
    swiglu_cfg.kernels.te_swiglu = True
    te_swiglu = build_module(
        get_litespark_layer_spec("te", te_swiglu=True).submodules.mlp, config=_transformer_config(swiglu_cfg)
    ).cuda()
    te_swiglu.load_state_dict(megatron.state_dict(), strict=False)  # TE's SwiGLU adds an _extra_state
    fused = build_module(get_litespark_layer_spec("te", fused_mlp=True).submodules.mlp, config=tc).cuda()
    fused.load_state_dict(megatron.state_dict())
    m = cfg.model
    monolithic = te.LayerNormMLP(
        m.hidden_size,
        m.ffn_hidden_size,
        eps=m.norm_epsilon,
        bias=False,
        normalization="RMSNorm",
        activation="swiglu",
        params_dtype=torch.bfloat16,
        device="cuda",
    )
    with torch.no_grad():
        monolithic.layer_norm_weight.copy_(megatron.linear_fc1.layer_norm_weight)
        monolithic.fc1_weight.copy_(megatron.linear_fc1.weight)
        monolithic.fc2_weight.copy_(megatron.linear_fc2.weight)
    # name -> (module, forward returning the output tensor, its FC1 weight)
    return {
        "megatron-mlp": (megatron, lambda x: megatron(x)[0], megatron.linear_fc1.weight),
        "megatron-mlp-te-swiglu": (te_swiglu, lambda x: te_swiglu(x)[0], te_swiglu.linear_fc1.weight),
        "te-layernorm-mlp": (monolithic, monolithic, monolithic.fc1_weight),
        "te-fused-mlp": (fused, lambda x: fused(x)[0], fused.linear_fc1.weight),
    }


def measure_mlps(cfg, micro_batch: int, warmup: int, iters: int) -> list[dict]:
    import torch
    import transformer_engine.pytorch as te

    m = cfg.model
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m.seq_length, micro_batch, m.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
    x.requires_grad_()
    dy = 1e-2 * torch.randn(
        m.seq_length, micro_batch, m.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen
    )
    mlps = build_mlps(cfg)
    rows, reference = [], None
    for recipe_name in RECIPES:
        recipe = _recipe(recipe_name, cfg)
        for name, (module, fn, fc1_weight) in mlps.items():

            def step(module=module, fn=fn, recipe=recipe):
                module.zero_grad(set_to_none=True)
                x.grad = None
                _requantize_weights(module)
                with te.fp8_autocast(enabled=recipe is not None, fp8_recipe=recipe):
                    y = fn(x)
                y.backward(dy)
                return y

            row = {"slot": "mlp", "variant": name, "recipe": recipe_name}
            try:
                ms = time_cuda_ms(step, warmup, iters)
                module.zero_grad(set_to_none=True)
                x.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                y = step()
                torch.cuda.synchronize()
                row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
                grads = [p.grad for p in module.parameters() if p.grad is not None]
                row["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
                dx: Any = x.grad
                result = (y.detach().clone(), dx.detach().clone(), fc1_weight.grad.detach().clone())
                if name == "megatron-mlp" and recipe_name == "bf16":
                    reference = result
                if reference is not None:
                    row["rel_out"], row["rel_dgrad"], row["rel_fc1_wgrad"] = (
                        _rel(a, b) for a, b in zip(result, reference)
                    )
                row["ms"] = ms
            except Exception as exc:
                row["error"] = _error_text(exc)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def measure_attention(cfg, micro_batch: int, warmup: int, iters: int) -> list[dict]:
    import torch
    import torch.nn.functional as F
    import transformer_engine.pytorch as te
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = cfg.model
    s, heads, groups, d = (
        m.seq_length,
        m.num_attention_heads,
        m.num_query_groups,
        m.hidden_size // m.num_attention_heads,
    )
    gen = torch.Generator(device="cuda").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)

    # Megatron's layout for TE: [s, b, heads, d]; torch SDPA: [b, heads, s, d].
    q, k, v = rand(s, micro_batch, heads, d), rand(s, micro_batch, groups, d), rand(s, micro_batch, groups, d)
    dy = rand(s, micro_batch, heads * d)
    tq, tk, tv = (t.permute(1, 2, 0, 3).contiguous().requires_grad_() for t in (q, k, v))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    tdy = dy.view(s, micro_batch, heads, d).permute(1, 2, 0, 3).contiguous()
    dpa = te.DotProductAttention(heads, d, num_gqa_groups=groups, attn_mask_type="causal", qkv_format="sbhd")

    def te_dpa():
        dpa(q, k, v).backward(dy)

    def sdpa(backend):
        def run():
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True).backward(tdy)

        return run

    rows = []
    for name, fn in (
        ("te-dot-product-attention", te_dpa),
        ("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION)),
        ("sdpa-cudnn", sdpa(SDPBackend.CUDNN_ATTENTION)),
        ("sdpa-efficient", sdpa(SDPBackend.EFFICIENT_ATTENTION)),
    ):
        row: dict[str, Any] = {"slot": "attention", "variant": name, "recipe": "bf16"}
        try:
            row["ms"] = time_cuda_ms(fn, warmup, iters)
        except Exception as exc:
            row["error"] = _error_text(exc)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def to_markdown(report: dict) -> str:
    layers, mb = report["num_layers"], report["micro_batch"]
    lines = [
        f"# One layer's MLP and attention implementations, {report['preset']}, micro-batch {mb}, on {report['gpu']}",
        "",
        f"`{report['command']}`",
        "",
        f"Forward + backward of one layer's slot on [{report['seq_length']}, {mb}, {report['hidden_size']}] "
        f"inputs; 'per step' is that x {layers} layers (one micro-batch).  Relative differences are against "
        "Megatron's MLP (`megatron-mlp`) in BF16 on the same weights and inputs.",
        "",
        "| slot | variant | recipe | ms per layer | ms per step | vs reference | peak extra GiB | finite | rel. out | rel. dgrad | rel. FC1 wgrad |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = {
        (r["slot"], r["recipe"]): r.get("ms")
        for r in report["rows"]
        if r["variant"] in ("megatron-mlp", "te-dot-product-attention")
    }

    def f(v, spec):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['slot']} | {r['variant']} | {r['recipe']} | failed: {r['error']} | | | | | | | |")
            continue
        base = reference.get((r["slot"], r["recipe"]))
        delta = f"{100 * (r['ms'] / base - 1):+.1f}%" if base else ""
        lines.append(
            f"| {r['slot']} | {r['variant']} | {r['recipe']} | {r['ms']:.2f} | {r['ms'] * layers:.0f} | {delta} | "
            f"{f(r.get('peak_extra_gib'), '.2f')} | {'' if 'finite' not in r else ('yes' if r['finite'] else 'NO')} | "
            f"{f(r.get('rel_out'), '.3g')} | {f(r.get('rel_dgrad'), '.3g')} | {f(r.get('rel_fc1_wgrad'), '.3g')} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "ms" in r]
    labels = [f"{r['variant']}\n{r['recipe']}" if r["slot"] == "mlp" else r["variant"] for r in rows]
    colors = ["tab:blue" if r["variant"] in ("megatron-mlp", "te-dot-product-attention") else "tab:gray" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(rows)), 4.5))
    ax.bar(range(len(rows)), [r["ms"] for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms per layer (forward + backward)")
    ax.set_title(f"{report['preset']} micro-batch {report['micro_batch']}, {report['gpu']} (blue: reference)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from litespark.config import resolve
    from litespark.config.cli import add_config_args, load_config, quiet_optional_dependency_warnings
    from litespark.environment import collect_versions
    from litespark.model.build import select_te_norm_kernels
    from litespark.runtime.distributed import init_distributed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out", required=True, help="output stem (OUT.json, OUT.md, OUT.png)")
    args = p.parse_args(argv)
    quiet_optional_dependency_warnings()
    if not torch.cuda.is_available():
        print("layer_variants.py: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    plan = resolve(load_config(args, ["kernels.cuda_graphs=false", "data.micro_batch_size=1"]))
    if plan.backend != "te":
        print(
            f"layer_variants.py: error: needs Transformer Engine (kernels.backend resolved to {plan.backend!r})",
            file=sys.stderr,
        )
        return 2
    cfg = plan.config
    init_distributed(1, cfg.run.seed)
    select_te_norm_kernels(plan.norm_kernel)  # as build_model does: the shipped norm kernels
    rows = measure_mlps(cfg, args.micro_batch, args.warmup, args.iters)
    torch.cuda.empty_cache()
    rows += measure_attention(cfg, args.micro_batch, args.warmup, max(args.iters // 3, 3))
    m = cfg.model
    report = {
        "preset": cfg.preset,
        "micro_batch": args.micro_batch,
        "seq_length": m.seq_length,
        "hidden_size": m.hidden_size,
        "num_layers": m.num_layers,
        "rows": rows,
        "gpu": torch.cuda.get_device_name(),
        "versions": collect_versions(),
        "command": "python -m litespark.bench.layer_variants " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(report))
    plot(report, out.with_suffix(".png"))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
