"""The planner against measurement: predicted peak memory and tokens/s next to what real training runs
measure on this GPU.

    python -m litespark.bench.planner_accuracy --out-dir OUT --name planner_h200 [--steps 10] [--only 0 1 2]

Each configuration is a short ``python -m litespark.train`` run on mock data (checkpoints off), one
after another: the user's path, not a benchmark harness.  Measured: the peak memory the trainer logs
(reserved, what the device must hold; allocated beside it, which leaves out the free memory of CUDA
graphs' private pools; the pool's size from the capture's log line) and the tokens/s of the
last logging interval (the first includes warm-up and graph capture).  Predicted: the planner for this
host's GPU (:mod:`litespark.planner`).  Writes ``OUT/NAME.json``, ``OUT/NAME.md`` and ``OUT/NAME.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from litespark.config import apply_overrides
from litespark.config.presets import get_preset
from litespark.log import get_logger, setup_logging
from litespark.planner.gpus import Gpu

log = get_logger(__name__)

CONFIGS: list[tuple[str, str, list[str]]] = [
    ("llama-3b FP8, automatic micro-batch (the preset as shipped)", "llama-3b", []),
    ("llama-3b FP8, micro-batch 4", "llama-3b", ["data.micro_batch_size=4"]),
    ("llama-3b FP8, micro-batch 2 (CUDA graphs)", "llama-3b", ["data.micro_batch_size=2"]),
    ("llama-3b BF16, micro-batch 4", "llama-3b", ["precision.fp8=false", "data.micro_batch_size=4"]),
    ("llama-3b BF16, micro-batch 2 (CUDA graphs)", "llama-3b", ["precision.fp8=false", "data.micro_batch_size=2"]),
    *(
        (
            f"llama-30b width, 4 layers, FP8, micro-batch {mb}" + (" (CUDA graphs)" if mb == 2 else ""),
            "llama-30b",
            [
                "model.num_layers=4",
                "parallel.tensor_parallel=1",
                "data.global_batch_size=8",
                "optim.warmup_iters=2",
                f"data.micro_batch_size={mb}",
            ],
        )
        for mb in (2, 4)
    ),
    # CUDA-graph rows held out from the BF16-gradient memory term (written from memory_peak's
    # diagnostics of the micro-batch-2 rows above; benchmarks/results/planner_graphs_20261207):
    ("llama-3b FP8, micro-batch 1 (CUDA graphs)", "llama-3b", ["data.micro_batch_size=1"]),
    ("llama-3b BF16, micro-batch 1 (CUDA graphs)", "llama-3b", ["precision.fp8=false", "data.micro_batch_size=1"]),
    *(
        (
            f"llama-30b width, {layers} layers, FP8, micro-batch {mb} (CUDA graphs)",
            "llama-30b",
            [
                f"model.num_layers={layers}",
                "parallel.tensor_parallel=1",
                "data.global_batch_size=8",
                "optim.warmup_iters=2",
                f"data.micro_batch_size={mb}",
            ],
        )
        for layers, mb in ((4, 1), (8, 2))
    ),
]
"""(label, preset, --set overrides); the first row is also the "preset as shipped" throughput check."""


def predict(preset: str, sets: list[str], gpu: Gpu | None = None) -> dict:
    """The planner's prediction for a row on ``gpu`` (default: this host's)."""
    from litespark.planner import choose_micro_batch, plan_candidates
    from litespark.planner.gpus import gpu_of_this_host

    gpu = gpu or gpu_of_this_host()
    if gpu is None:
        raise SystemExit("planner_accuracy.py: needs a CUDA GPU to measure on")
    cfg = apply_overrides(get_preset(preset), sets)
    mb = cfg.data.micro_batch_size or choose_micro_batch(cfg, 1, gpu)
    chosen = next(c for c in plan_candidates(cfg, 1, gpu) if c.plan.micro_batch_size == mb)
    return {
        "micro_batch": mb,
        "cuda_graphs": chosen.plan.cuda_graphs,
        "memory_gib": chosen.memory.total / 2**30,
        "memory_terms_gib": chosen.memory.gib(),
        "tokens_per_s": chosen.speed.tokens_per_s_per_gpu,
        "gpu": gpu.name,
        "gpu_spec": f"{gpu.name}:{gpu.memory_gib}:{gpu.bf16_tflops}:{gpu.hbm_tb_per_s}",
    }


def errors(row: dict) -> None:
    """Set ``row``'s memory error (against the reserved peak) and tokens/s error."""
    p, m = row["predicted"], row["measured"]
    row["memory_error"] = p["memory_gib"] / m["peak_reserved_gib"] - 1
    row["speed_error"] = p["tokens_per_s"] / m["tokens_per_s"] - 1


def repredict(report: dict) -> dict:
    """``report`` with every row's prediction made again by this checkout's planner, for the GPU it
    was measured on (the measurements are kept)."""
    from litespark.planner.gpus import GPUS, parse_gpu

    out = copy.deepcopy(report)
    for row in out["rows"]:
        old = row["predicted"]
        known = next((g for k, g in GPUS.items() if k in old["gpu"].lower()), None)
        gpu = parse_gpu(old["gpu_spec"]) if "gpu_spec" in old else known
        if gpu is None:
            raise SystemExit(f"planner_accuracy.py: cannot tell which GPU {old['gpu']!r} was")
        row["predicted"] = {**predict(row["preset"], row["sets"], gpu), "gpu": old["gpu"]}
        if "error" not in row["measured"]:
            errors(row)
    out["command"] += "  # predictions re-made by: python -m litespark.bench.planner_accuracy --repredict"
    return out


def measure(preset: str, sets: list[str], steps: int, run_dir: Path) -> dict:
    interval = max(1, steps // 2)
    cmd = [sys.executable, "-m", "litespark.train", "--preset", preset, "--data", "mock", "--run-dir", str(run_dir)]
    for s in [
        *sets,
        f"run.train_iters={steps}",
        f"run.log_interval={interval}",
        "checkpoint.enabled=false",
        "checkpoint.resume=false",
    ]:
        cmd += ["--set", s]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    pool = re.search(r"of which the graph pool ([0-9.]+) GiB", proc.stderr)
    config = (run_dir / "config.yaml").read_text()
    mb = next(int(line.split(":")[1]) for line in config.splitlines() if line.strip().startswith("micro_batch_size:"))
    return {
        "micro_batch": mb,
        "tokens_per_s": train[-1]["tokens_per_s_per_gpu"],
        "peak_memory_gib": max(r.get("peak_memory_gib", 0.0) for r in train),
        "peak_reserved_gib": max(r.get("peak_reserved_gib", 0.0) for r in train),
        "graph_pool_gib": float(pool.group(1)) if pool else 0.0,
        "seconds": time.perf_counter() - t,
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Planner against measurement on {report['gpu']}",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        "| configuration | micro-batch | memory predicted GiB | measured reserved (allocated) | error | "
        "tokens/s predicted | measured | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        p, m = row["predicted"], row["measured"]
        if "error" in m:
            lines.append(f"| {row['label']} | {p['micro_batch']} | {p['memory_gib']:.1f} | {m['error']} | | | | |")
            continue
        lines.append(
            f"| {row['label']} | {m['micro_batch']} | {p['memory_gib']:.1f} | {m['peak_reserved_gib']:.1f} "
            f"({m['peak_memory_gib']:.1f}) | {100 * row['memory_error']:+.1f}% | {p['tokens_per_s']:,.0f} | "
            f"{m['tokens_per_s']:,.0f} | {100 * row['speed_error']:+.1f}% |"
        )
    lines += [
        "",
        "Error = predicted / measured - 1; memory against the reserved peak.  Targets: within 10% (memory) "
        "and 15% (tokens/s).",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "error" not in r["measured"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key_p, key_m, title in (
        (axes[0], "memory_gib", "peak_reserved_gib", "peak reserved memory (GiB)"),
        (axes[1], "tokens_per_s", "tokens_per_s", "tokens/s per GPU"),
    ):
        xs = [r["measured"][key_m] for r in rows]
        ys = [r["predicted"][key_p] for r in rows]
        ax.scatter(xs, ys)
        top = max(xs + ys) * 1.05
        ax.plot([0, top], [0, top], "k--", linewidth=0.8)
        ax.set_xlabel(f"measured {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    fig.suptitle(f"Planner against measurement, {report['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m litespark.bench.planner_accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", default="planner_accuracy")
    p.add_argument("--steps", type=int, default=10, help="training steps per configuration (>= 2)")
    p.add_argument("--only", type=int, nargs="+", metavar="I", help="run only these rows of CONFIGS (0-based)")
    p.add_argument(
        "--repredict",
        metavar="JSON",
        help="re-make the predictions of a saved report with this checkout's planner (no GPU, nothing run) "
        "and write it as OUT_DIR/NAME",
    )
    args = p.parse_args(argv)
    if args.repredict:
        report = repredict(json.loads(Path(args.repredict).read_text()))
        _write(report, Path(args.out_dir) / args.name)
        return 0
    if args.steps < 2:
        p.error("--steps must be >= 2")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="litespark-planner-") as tmp:
        for i, (label, preset, sets) in enumerate(CONFIGS):
            if args.only is not None and i not in args.only:
                continue
            predicted = predict(preset, sets)
            log.info("%s: predicted %.1f GiB, %.0f tokens/s", label, predicted["memory_gib"], predicted["tokens_per_s"])
            measured = measure(preset, sets, args.steps, Path(tmp) / f"run{i}")
            row: dict[str, Any] = {
                "label": label,
                "preset": preset,
                "sets": sets,
                "predicted": predicted,
                "measured": measured,
            }
            if "error" not in measured:
                errors(row)
                log.info(
                    "%s: measured %.1f GiB (%+.1f%%), %.0f tokens/s (%+.1f%%)",
                    label,
                    measured["peak_reserved_gib"],
                    100 * row["memory_error"],
                    measured["tokens_per_s"],
                    100 * row["speed_error"],
                )
            else:
                log.warning("%s: %s", label, measured["error"])
            rows.append(row)
    report = {
        "command": "python -m litespark.bench.planner_accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "gpu": rows[0]["predicted"]["gpu"],
        "steps": args.steps,
        "rows": rows,
    }
    _write(report, out / args.name)
    return 0


def _write(report: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(to_markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(to_markdown(report))


if __name__ == "__main__":
    sys.exit(main())
