"""What is alive at a training run's peak GPU memory, by where it was allocated, next to the planner's
terms: how the memory model (:mod:`litespark.planner.memory`) is checked term by term, not only in
total.

    python -m litespark.bench.memory_peak --out OUT/NAME.json --preset llama-3b [--set KEY=VALUE ...] [--steps 3]

Runs ``--steps`` training steps of the config on mock data in this process (checkpoints off) with
PyTorch's allocator history recording, then replays the recorded allocations: the peak of allocated
bytes and what made it up, grouped by the innermost frame outside torch (the Litespark, DeepSpeed,
Transformer Engine or Megatron line that asked for the memory), the peak of reserved bytes, and the
segments of CUDA-graph private pools at the end.  Writes ``OUT/NAME.json`` and ``OUT/NAME.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from litespark.log import get_logger, setup_logging
from litespark.runtime.allocator import use_expandable_segments

log = get_logger(__name__)

GIB = 2**30
HISTORY_ENTRIES = 3_000_000
"""Allocator events kept; a trace that fills them lost its start and is refused."""
POOL_PREFIX = "[graph pool] "
_OUTSIDE_TORCH = ("litespark/", "deepspeed/", "transformer_engine/", "megatron/")


def allocation_site(frames: list[dict]) -> str:
    """``package/file.py:line function`` of the innermost frame in Litespark, DeepSpeed, TE or
    Megatron (frames are innermost first), else of the innermost frame, else ``unknown``."""
    for frame in frames:
        name = frame.get("filename", "")
        for package in _OUTSIDE_TORCH:
            at = name.rfind(package)
            if at >= 0:
                return f"{name[at:]}:{frame.get('line', 0)} {frame.get('name', '')}"
    if frames:
        f = frames[0]
        return f"{f.get('filename', '?')}:{f.get('line', 0)} {f.get('name', '')}"
    return "unknown"


def _is_private_pool(pool_id: Any) -> bool:
    return pool_id is not None and tuple(pool_id) != (0, 0)


def peak_breakdown(trace: list[dict]) -> dict:
    """Replay one device's allocator trace: the allocated peak with the live bytes per allocation
    site at that moment, and the reserved peak."""
    live: dict[int, tuple[int, str]] = {}
    by_site: dict[str, int] = defaultdict(int)
    allocated = reserved = in_pools = 0
    peak: dict[str, Any] = {"allocated": 0, "event": -1, "by_site": {}}
    pool_peak: dict[str, Any] = {"allocated": 0, "by_site": {}}
    peak_reserved = 0
    for i, event in enumerate(trace):
        action, size = event["action"], int(event.get("size", 0))
        if action == "alloc":
            site = allocation_site(event.get("frames", []))
            if _is_private_pool(event.get("pool_id")):
                site = POOL_PREFIX + site
                in_pools += size
            live[event["addr"]] = (size, site)
            by_site[site] += size
            allocated += size
            if allocated > peak["allocated"]:
                peak = {"allocated": allocated, "event": i, "by_site": dict(by_site)}
            if in_pools > pool_peak["allocated"]:
                pool_peak = {
                    "allocated": in_pools,
                    "by_site": {s: b for s, b in by_site.items() if s.startswith(POOL_PREFIX)},
                }
        elif action == "free_completed":
            entry = live.pop(event["addr"], None)
            if entry is not None:
                allocated -= entry[0]
                by_site[entry[1]] -= entry[0]
                if entry[1].startswith(POOL_PREFIX):
                    in_pools -= entry[0]
        elif action in ("segment_alloc", "segment_map"):
            reserved += size
            peak_reserved = max(peak_reserved, reserved)
        elif action in ("segment_free", "segment_unmap"):
            reserved -= size
    return {
        "events": len(trace),
        "peak_allocated_gib": peak["allocated"] / GIB,
        "peak_event": peak["event"],
        "peak_reserved_gib": peak_reserved / GIB,
        "live_at_peak_gib": _by_size(peak["by_site"]),
        "pool_peak_allocated_gib": pool_peak["allocated"] / GIB,
        "live_in_pools_at_their_peak_gib": _by_size(pool_peak["by_site"]),
    }


def _by_size(by_site: dict[str, int]) -> list[dict]:
    return [{"site": s, "gib": b / GIB} for s, b in sorted(by_site.items(), key=lambda sb: -sb[1]) if b > 0]


def private_pool_gib(segments: list[dict]) -> float:
    """Reserved bytes of CUDA-graph private pools in a snapshot's segments."""
    return sum(s["total_size"] for s in segments if _is_private_pool(s.get("segment_pool_id"))) / GIB


def to_markdown(report: dict, top: int = 25) -> str:
    p = report["planner_gib"]
    lines = [
        f"# Peak memory of {report['label']}",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Allocated peak {report['peak_allocated_gib']:.2f} GiB, reserved peak {report['peak_reserved_gib']:.2f} GiB "
        f"(trainer: {report['trainer_peak_allocated_gib']:.2f} / {report['trainer_peak_reserved_gib']:.2f}); "
        f"CUDA-graph private pools {report['graph_pool_gib']:.2f} GiB.  Planner: "
        + ", ".join(f"{k} {v:.2f}" for k, v in p.items()),
        "",
        "| live at the allocated peak | GiB |",
        "|---|---|",
        *(f"| `{row['site']}` | {row['gib']:.3f} |" for row in report["live_at_peak_gib"][:top]),
    ]
    if report["live_in_pools_at_their_peak_gib"]:
        lines += [
            "",
            f"Allocated inside CUDA-graph pools at their peak: {report['pool_peak_allocated_gib']:.2f} GiB",
            "",
            "| live in the pools at their peak | GiB |",
            "|---|---|",
            *(f"| `{row['site']}` | {row['gib']:.3f} |" for row in report["live_in_pools_at_their_peak_gib"][:top]),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    use_expandable_segments()  # the allocator python -m litespark.train runs with
    import torch

    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.planner.memory import estimate_memory
    from litespark.training.loop import run

    parser = argparse.ArgumentParser(prog="python -m litespark.bench.memory_peak", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="OUT/NAME.json (NAME.md beside it)")
    parser.add_argument("--preset", default="llama-3b")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--label", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if not torch.cuda.is_available():
        raise SystemExit("memory_peak: needs a CUDA GPU")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="litespark-memory-peak-") as run_dir:
        cfg = apply_overrides(
            get_preset(args.preset),
            [
                *args.sets,
                "data.source=mock",
                f"run.train_iters={args.steps}",
                "run.log_interval=1",
                "checkpoint.enabled=false",
                "checkpoint.resume=false",
                f"run.run_dir={run_dir}",
            ],
        )
        plan = resolve(cfg, 1)
        torch.cuda.memory._record_memory_history(max_entries=HISTORY_ENTRIES, stacks="python")
        code = run(plan)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        if code != 0:
            raise SystemExit(f"memory_peak: the run exited with {code}")
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    device = torch.cuda.current_device()
    trace = snapshot["device_traces"][device]
    if len(trace) >= HISTORY_ENTRIES:
        raise SystemExit(
            f"memory_peak: the trace filled its {HISTORY_ENTRIES} entries (its start is lost): fewer --steps"
        )
    train = [r for r in records if r.get("split") == "train"]
    report = {
        "label": args.label or " ".join([args.preset, *args.sets]),
        "command": "python -m litespark.bench.memory_peak "
        + " ".join([f"--out {args.out}", f"--preset {args.preset}", *(f"--set {s}" for s in args.sets)])
        + f" --steps {args.steps}",
        "micro_batch": plan.micro_batch_size,
        "cuda_graphs": plan.cuda_graphs,
        "fp32_grad_accumulation": plan.fp32_grad_accumulation,
        "allocator": os.environ["PYTORCH_CUDA_ALLOC_CONF"],
        "planner_gib": estimate_memory(plan).gib(),
        "trainer_peak_allocated_gib": max(r["peak_memory_gib"] for r in train),
        "trainer_peak_reserved_gib": max(r["peak_reserved_gib"] for r in train),
        "graph_pool_gib": private_pool_gib(snapshot["segments"]),
        **peak_breakdown(trace),
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(report))
    log.info("wrote %s and %s", out, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
