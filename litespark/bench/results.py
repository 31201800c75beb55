"""Turn the workers' measurements into the comparison: ratios, target checks, JSON, markdown, PNG.

Pure functions of the result dicts, so the arithmetic is unit-tested on CPU with recorded numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The performance issue's targets, checked on every run and printed with the table.
TARGET_SPEEDUP_VS_HF = 2.0
TARGET_SPEEDUP_VS_MCORE_FP8 = 1.3
TARGET_ENERGY_VS_HF = 0.45
FP8_LOSS_TOLERANCE = 0.02


def compare(results: dict[str, dict]) -> dict:
    """Ratios of ``litespark`` to the baselines, FP8 numerics against BF16, and the target verdicts.

    ``results`` maps stack name to a worker result (a stack that did not run is absent).  A figure
    that cannot be computed (missing stack, no energy counter) is None, and its target is None, not
    failed.
    """
    ls, hf, fp8, bf16 = (results.get(k) for k in ("litespark", "hf", "mcore-fp8", "mcore-bf16"))

    def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
        if not a or not b or a.get(key) is None or not b.get(key):
            return None
        return a[key] / b[key]

    out: dict[str, Any] = {
        "speedup_vs_hf": ratio(ls, hf, "tokens_per_s"),
        "speedup_vs_mcore_fp8": ratio(ls, fp8, "tokens_per_s"),
        "speedup_vs_mcore_bf16": ratio(ls, bf16, "tokens_per_s"),
        "energy_vs_hf": ratio(ls, hf, "joules_per_token"),
        "energy_vs_mcore_fp8": ratio(ls, fp8, "joules_per_token"),
    }
    # FP8 against BF16 of the same stack (same initial weights, same data): the mean loss over the
    # timed steps, because single early-training steps swing by 10% and more between neighbours.
    numerics = {}
    for name, ref in (("litespark", "litespark-bf16"), ("mcore-fp8", "mcore-bf16")):
        a, b = results.get(name), results.get(ref)
        if a and b:
            numerics[name] = {
                "reference": ref,
                "mean_timed_loss": mean_timed_loss(a),
                "reference_mean_timed_loss": mean_timed_loss(b),
                "rel_diff_mean_timed_loss": abs(mean_timed_loss(a) - mean_timed_loss(b)) / mean_timed_loss(b),
                "rel_diff_final_loss": abs(a["final_loss"] - b["final_loss"]) / b["final_loss"],
            }
    out["fp8_numerics"] = numerics

    def verdict(value: float | None, ok) -> bool | None:
        return None if value is None else bool(ok(value))

    out["targets"] = {
        f"litespark >= {TARGET_SPEEDUP_VS_HF}x HF tokens/s": verdict(
            out["speedup_vs_hf"], lambda v: v >= TARGET_SPEEDUP_VS_HF
        ),
        f"litespark >= {TARGET_SPEEDUP_VS_MCORE_FP8}x Megatron-Core TE FP8 + DeepSpeed": verdict(
            out["speedup_vs_mcore_fp8"], lambda v: v >= TARGET_SPEEDUP_VS_MCORE_FP8
        ),
        f"litespark J/token <= {TARGET_ENERGY_VS_HF}x HF": verdict(
            out["energy_vs_hf"], lambda v: v <= TARGET_ENERGY_VS_HF
        ),
        f"FP8 mean loss over the timed steps within {FP8_LOSS_TOLERANCE:.0%} of BF16 (same stack)": (
            None
            if not numerics
            else all(v["rel_diff_mean_timed_loss"] <= FP8_LOSS_TOLERANCE for v in numerics.values())
        ),
    }
    return out


def mean_timed_loss(result: dict) -> float:
    """Mean of the per-step losses after the warm-up steps."""
    timed = result["losses"][result["warmup_steps"] :]
    return sum(timed) / len(timed)


def _fmt(value, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"


def to_markdown(report: dict) -> str:
    """The results table, the ratios and the verdicts, with the command and versions."""
    v, s = report["versions"], report["setup"]
    lines = [
        f"# Training throughput and energy: {s['preset']} on {v.get('gpu', 'CPU')}, {report['date']}",
        "",
        f"Shape `{s['preset']}` (sequence {s['seq_length']}, {s['global_batch']} sequences per optimizer step, "
        f"gradient accumulation fills the rest), fp32 master weights in every stack, data: {s['data_description']}. "
        f"{s['warmup']} warm-up steps excluded, {s['steps']} timed steps. MFU counts 6N + 12·L·h·s FLOPs per token "
        f"against the dense BF16 peak ({s.get('peak_tflops') or '-'} TFLOP/s), also for FP8. "
        "With CUDA graphs the captured layers' activations sit in the graphs' private memory pool, which counts "
        "as reserved, not allocated: compare the reserved figure.",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        "| stack | micro-batch | tokens/s | TFLOP/s | MFU | J/token | avg W | peak GiB allocated (reserved) | final loss | mean timed loss | vs HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hf = report["results"].get("hf")
    for name in report["stacks"]:
        r = report["results"].get(name)
        if r is None:
            why = report["attempts"].get(name, [{}])[-1].get("status", "not run")
            lines.append(f"| {name} | - | {why} | | | | | | | | |")
            continue
        speed = _fmt(r["tokens_per_s"] / hf["tokens_per_s"], ".2f", suffix="x") if hf else "-"
        lines.append(
            f"| {name} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {_fmt(r.get('mfu'), '.1f', 100, '%')} | "
            f"{_fmt(r.get('joules_per_token'), '.4f')} | {_fmt(r.get('avg_watts'), '.0f')} | "
            f"{_fmt(r.get('peak_memory_gib'), '.1f')} ({_fmt(r.get('peak_reserved_gib'), '.1f')}) | {r['final_loss']:.4f} | {mean_timed_loss(r):.4f} | {speed} |"
        )
    c = report["comparison"]
    lines += ["", "Stacks:", ""]
    for name in report["stacks"]:
        r = report["results"].get(name)
        tried = ", ".join(
            f"{a['micro_batch']}: {a['status']}" + (f" in `{a['where']}`" if a.get("where") else "")
            for a in report["attempts"].get(name, [])
        )
        lines.append(f"- `{name}`: {r['description'] if r else 'did not run'} (micro-batches tried: {tried})")
    lines += ["", "| ratio | value |", "|---|---|"]
    for key in (
        "speedup_vs_hf",
        "speedup_vs_mcore_fp8",
        "speedup_vs_mcore_bf16",
        "energy_vs_hf",
        "energy_vs_mcore_fp8",
    ):
        lines.append(f"| {key} | {_fmt(c[key], '.3f')} |")
    for name, n in c["fp8_numerics"].items():
        lines.append(
            f"| {name} vs {n['reference']}: mean loss over the timed steps {n['mean_timed_loss']:.4f} vs "
            f"{n['reference_mean_timed_loss']:.4f} | {n['rel_diff_mean_timed_loss']:.2%} (final step: "
            f"{n['rel_diff_final_loss']:.2%}) |"
        )
    lines += ["", "| target | met |", "|---|---|"]
    for target, ok in c["targets"].items():
        lines.append(f"| {target} | {'n/a' if ok is None else ('yes' if ok else 'NO')} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Bar charts of tokens/s and joules per token per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["stacks"] if n in report["results"]]
    rs = [report["results"][n] for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = ["tab:orange" if n == "litespark" else "tab:gray" for n in names]
    a.barh(names, [r["tokens_per_s"] for r in rs], color=colors)
    a.set_xlabel("tokens/s (one GPU)")
    a.invert_yaxis()
    b.barh(names, [r.get("joules_per_token") or 0.0 for r in rs], color=colors)
    b.set_xlabel("joules per token" + ("" if any(r.get("joules_per_token") for r in rs) else " (no NVML counter)"))
    b.invert_yaxis()
    b.set_yticks([])
    fig.suptitle(
        f"{report['setup']['preset']}, seq {report['setup']['seq_length']}, {report['versions'].get('gpu', 'CPU')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, stem: Path, render=None, draw=None) -> list[Path]:
    """``stem``.json, ``stem``.md and ``stem``.png, each written under a temporary name then renamed;
    ``render`` (markdown) and ``draw`` (the plot) default to this module's, for ``litespark.bench``."""
    from litespark.files import atomic_write_text

    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (stem.with_suffix(s) for s in (".json", ".md", ".png"))
    atomic_write_text(json_path, json.dumps(report, indent=1) + "\n")
    atomic_write_text(md_path, (render or to_markdown)(report))
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    (draw or plot)(report, tmp)
    tmp.replace(png_path)
    return [json_path, md_path, png_path]
