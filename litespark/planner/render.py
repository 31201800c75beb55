"""The text ``python -m litespark.train --plan`` prints: per candidate micro-batch, the predicted
memory by term, tokens/s and MFU, and which one the automatic setting takes; with ``--plan-layouts``,
the same for every tensor-parallel size and ZeRO stage the world size allows."""

from __future__ import annotations

import copy

from litespark.config import ConfigError, LitesparkConfig
from litespark.planner import MEMORY_ERROR, MEMORY_HEADROOM, Candidate, best, plan_candidates, to_probe
from litespark.planner.gpus import Gpu
from litespark.planner.probe import startup_probe

_TERMS = ("weights", "optimizer", "gradients", "fp8_caches", "activations", "logits", "workspace")


def render_plan(cfg: LitesparkConfig, world_size: int, gpu: Gpu) -> str:
    """The micro-batch table of ``cfg``'s own layout."""
    candidates = plan_candidates(cfg, world_size, gpu)
    chosen = best(candidates)
    tp = cfg.parallel.tensor_parallel
    lines = [
        f"plan: {cfg.preset}, {world_size} x {gpu.name} ({gpu.memory_gib:.1f} GiB, {gpu.bf16_tflops:.0f} TFLOP/s BF16), "
        f"TP {tp} x DP {world_size // tp}, ZeRO-{cfg.parallel.zero_stage}, "
        f"{'FP8' if cfg.precision.fp8 else 'BF16' if cfg.precision.bf16 else 'FP32'}, "
        f"global batch {cfg.data.global_batch_size} x {cfg.model.seq_length}",
        f"memory budget: {MEMORY_HEADROOM:.0%} of the device = {MEMORY_HEADROOM * gpu.memory_gib:.1f} GiB",
        "",
        "| micro-batch | graphs | fp32 grads | " + " | ".join(_TERMS) + " | total GiB | fits | tokens/s/GPU | MFU |",
        "|" + "---|" * (len(_TERMS) + 8),
    ]
    for c in candidates:
        g = c.memory.gib()
        mark = " <- automatic" if c is chosen else ""
        lines.append(
            f"| {c.plan.micro_batch_size}{mark} | {'yes' if c.plan.cuda_graphs else 'no'} | "
            f"{'yes' if c.plan.fp32_grad_accumulation else 'no'} | "
            + " | ".join(f"{g[t]:.1f}" for t in _TERMS)
            + f" | {g['total']:.1f} | {c.verdict} | {c.speed.tokens_per_s_per_gpu:,.0f} | "
            f"{100 * c.speed.mfu:.1f}% |"
        )
    lines.append("")
    if chosen is None:
        lines.append("nothing fits: use more GPUs, ZeRO-2/3 or tensor parallelism (--plan-layouts compares them)")
    else:
        terms = ", ".join(f"{k} {v:.3f}" for k, v in chosen.speed.terms.items() if v)
        lines.append(f"automatic micro-batch: {chosen.plan.micro_batch_size}; seconds per step by cost: {terms}")
    unsure = to_probe(candidates)
    if unsure:
        lines.append(
            f"unsure: micro-batch {', '.join(str(c.plan.micro_batch_size) for c in unsure)} (within the memory "
            f"model's {MEMORY_ERROR:.0%} error of the device): "
            + (
                "the launch probes it at start-up and takes it if it runs"
                if startup_probe(cfg, world_size) is not None
                else f"a launch of {world_size} processes does not probe; pin data.micro_batch_size to try it"
                if world_size > 1
                else "SFT and DPO launches do not probe; pin data.micro_batch_size to try it"
            )
        )
    return "\n".join(lines)


def render_layouts(cfg: LitesparkConfig, world_size: int, gpu: Gpu) -> str:
    """The best micro-batch of every TP size (dividing the world and the heads) and ZeRO stage."""
    lines = [
        f"layouts for {cfg.preset} on {world_size} x {gpu.name}:",
        "",
        "| TP | DP | ZeRO | micro-batch | total GiB | tokens/s/GPU | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[float, str]] = []
    for tp in (1, 2, 4, 8):
        if world_size % tp or cfg.model.num_attention_heads % tp or cfg.model.num_query_groups % tp:
            continue
        for stage in (1, 2, 3):
            if stage == 3 and tp > 1:
                continue  # refused: ZeRO-3 needs TP 1
            c = copy.deepcopy(cfg)
            c.parallel.tensor_parallel, c.parallel.zero_stage = tp, stage
            try:
                chosen: Candidate | None = best(plan_candidates(c, world_size, gpu))
            except ConfigError:
                continue
            if chosen is None:
                lines_row = f"| {tp} | {world_size // tp} | {stage} | - | does not fit | - | - |"
                rows.append((0.0, lines_row))
                continue
            rows.append(
                (
                    chosen.speed.tokens_per_s_per_gpu,
                    f"| {tp} | {world_size // tp} | {stage} | {chosen.plan.micro_batch_size} | "
                    f"{chosen.memory.total / 2**30:.1f} | {chosen.speed.tokens_per_s_per_gpu:,.0f} | "
                    f"{100 * chosen.speed.mfu:.1f}% |",
                )
            )
    lines += [row for _, row in sorted(rows, key=lambda r: -r[0])]
    return "\n".join(lines)
