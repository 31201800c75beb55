"""Where one optimizer step's GPU time goes, by kernel family, for any benchmark stack.

    python -m litespark.bench.profile_step --stack litespark --preset llama-3b --micro-batch 4 \
        --out benchmarks/results/profile_litespark_h200

Builds the stack exactly as ``python -m litespark.bench`` does, runs ``--warmup`` steps, then records
``--steps`` steps with the PyTorch profiler (CUDA activity) and sums kernel time into families
(GEMM, attention, FP8 casts, norms, optimizer, copies, ...).  Writes ``OUT.json`` and ``OUT.md`` with
the family table and the 40 most expensive kernels (the JSON has all); the step's wall time and the GPU-busy fraction
show how much is launch or host overhead rather than kernels.  Where the GPU waits is shown three
ways: the idle stretches of the kernel timeline (by length, and the longest with the kernels on either
side), the host time of the engine's forward, backward and step calls, and the Python lines that made
the host wait for the device during one more step (``torch.cuda.set_sync_debug_mode``).  Who
launched the costliest kernels outside GEMMs and attention (the op, its callers and the Python lines
above it) comes from one more step profiled with CPU ops and stacks, kept apart from the timed steps
because that profiling slows the host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from litespark.runtime.allocator import use_expandable_segments
from litespark.training.kernel_timeline import (  # noqa: F401 - re-exported: the CLI and its tests read them here
    FAMILIES,
    GAP_BUCKETS_US,
    families_of,
    family,
    gap_histogram,
    idle_gaps,
    idle_report,
    kernel_times,
)


def sync_site(stack: list, skip: tuple[str, ...] = (f"{os.sep}torch{os.sep}", f"{os.sep}warnings.py")) -> str:
    """'path:line function' of the innermost frame of ``stack`` (``traceback.extract_stack()``) outside
    torch itself: the line whose call made the host wait for the device."""
    for frame in reversed(stack):
        if not any(part in frame.filename for part in skip):
            parts = Path(frame.filename).parts
            short = "/".join(parts[-3:])
            return f"{short}:{frame.lineno} {frame.name}"
    return "?"


def find_sync_sites(run_step) -> dict[str, int]:
    """Run ``run_step()`` once with torch's sync debug mode on; count the device syncs by call site."""
    import traceback
    import warnings

    import torch

    sites: dict[str, int] = defaultdict(int)
    previous = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            sites[sync_site(traceback.extract_stack()[:-1])] += 1
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = previous
    torch.cuda.synchronize()
    return dict(sorted(sites.items(), key=lambda kv: -kv[1]))


# Frames that say nothing about who launched a kernel: torch itself (the profiler shortens its paths
# to ``torch/...``), C functions, decorators.
_STACK_NOISE = re.compile(r"(^|/)torch/|^<built-in|(^|/)(contextlib|functools)\.py")
# A module's layer number (``nn.Module: SwiGLU_21``): dropped, so that a kernel launched once per
# layer shows one site with its total.
_LAYER_NUMBER = re.compile(r"(nn\.Module: \w+?)_\d+\b")


def _ranked(by_site: dict[str, float]) -> list[dict]:
    return [{"site": site, "ms": ms} for site, ms in sorted(by_site.items(), key=lambda kv: -kv[1])]


def launch_sites(events, kernels: set[str], frames: int = 3, ancestors: int = 3) -> dict[str, list[dict]]:
    """For each kernel name in ``kernels``: the CPU sites that launched it, costliest first, as
    ``{"site", "ms"}`` with the time summed over the profile.

    ``events`` are the profiler's CPU op events (``prof.events()`` with ``with_stack`` and a verbose
    experimental config).  Each has ``name``, ``kernels`` (objects with ``name`` and ``duration`` in
    us: the kernels this op itself launched), ``cpu_parent``, ``is_python_function`` and ``stack``
    (innermost frame first; the profiler gives backward ops their forward op's stack).  A site is the
    op and up to ``ancestors`` enclosing ops, then up to ``frames`` Python frames outside torch, with
    layer numbers dropped from module names.
    """
    by_site: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for evt in events:
        launched = [k for k in getattr(evt, "kernels", ()) if k.name in kernels]
        if not launched:
            continue
        chain, parent = [evt.name], getattr(evt, "cpu_parent", None)
        while parent is not None and len(chain) <= ancestors:
            if not getattr(parent, "is_python_function", False):  # Python frames: in the stack below
                chain.append(parent.name)
            parent = getattr(parent, "cpu_parent", None)
        where = [entry for entry in (getattr(evt, "stack", None) or ()) if not _STACK_NOISE.search(entry)][:frames]
        site = " < ".join(chain) + (
            "" if not where else " @ " + " < ".join("/".join(Path(entry).parts[-2:]) for entry in where)
        )
        for k in launched:
            by_site[k.name][_LAYER_NUMBER.sub(r"\1", site)] += k.duration / 1e3
    return {name: _ranked(sites) for name, sites in by_site.items()}


def merge_layer_sites(sites: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Saved ``launch_sites`` with the layer numbers dropped from module names, as
    :func:`launch_sites` does now (reports written before it did keep one row per layer)."""
    merged = {}
    for name, rows in sites.items():
        by_site: dict[str, float] = defaultdict(float)
        for row in rows:
            by_site[_LAYER_NUMBER.sub(r"\1", row["site"])] += row["ms"]
        merged[name] = _ranked(by_site)
    return merged


def costliest_outside(
    kernels_ms: dict[str, float], skip: tuple[str, ...] = ("gemm", "attention"), top: int = 12
) -> list[str]:
    """The ``top`` kernels by time whose family is not in ``skip``: the ones worth attributing."""
    names = [name for name, _ in sorted(kernels_ms.items(), key=lambda kv: -kv[1]) if family(name) not in skip]
    return names[:top]


def time_host_calls(engine, names: tuple[str, ...] = ("forward", "backward", "step")) -> dict[str, list[float]]:
    """Wrap ``engine``'s methods so that each call's host wall time (s) is appended to the result.

    A call whose host time is near the device time of the work queued before it has waited for the
    device (a sync); one far shorter only queued kernels."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:

        def timed(*args, _fn=getattr(engine, name), _name=name, **kwargs):  # noqa: B008 - bind this method now
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                times[_name].append(time.perf_counter() - t0)

        setattr(engine, name, timed)
    return times


def to_markdown(r: dict, top: int = 40) -> str:
    """The report as markdown: families, the ``top`` kernels, idle time, host calls, sync sites."""
    busy = r["gpu_busy_ms_per_step"]
    lines = [
        f"# One optimizer step of `{r['stack']}` (micro-batch {r['micro_batch']}) on {r['gpu']}",
        "",
        f"`{r['command']}`",
        "",
        r["description"],
        "",
        f"Step wall time {r['step_wall_ms']:.1f} ms, kernels busy {busy:.1f} ms "
        f"({100 * r['gpu_busy_fraction']:.1f}% of the wall time; the sum of all kernel times), "
        f"{r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.0f} TFLOP/s; "
        f"{r['kernel_launches_per_step']:,.0f} kernels per step.",
        "",
        "| kernel family | ms per step | share of busy |",
        "|---|---|---|",
    ]
    for fam, ms in r["families_ms_per_step"].items():
        lines.append(f"| {fam} | {ms:.1f} | {100 * ms / busy:.1f}% |")
    lines += ["", f"| kernel (top {top}) | family | ms per step |", "|---|---|---|"]
    for name, ms in list(r["kernels_ms_per_step"].items())[:top]:
        lines.append(f"| `{name[:110]}` | {family(name)} | {ms:.2f} |")
    lines += [
        "",
        f"## Idle GPU: {r['idle_ms_per_step']:.1f} ms per step with no kernel on any stream",
        "",
        "| idle stretch | per step | ms per step |",
        "|---|---|---|",
    ]
    for label, v in r["idle_by_length"].items():
        lines.append(f"| {label} | {v['count']:.0f} | {v['ms']:.1f} |")
    lines += ["", "| at (ms into the profile) | idle ms | after kernel | before kernel |", "|---|---|---|---|"]
    for gap in r["longest_idle"]:
        lines.append(f"| {gap['at_ms']:.1f} | {gap['ms']:.2f} | `{gap['after'][:60]}` | `{gap['before'][:60]}` |")
    if r["host_ms_per_step"]:
        lines += ["", "## Host time of the engine's calls (ms per step)", "", "| call | host ms |", "|---|---|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in r["host_ms_per_step"].items()]
    lines += ["", "## Where the host waited for the device (one more step, sync debug mode)", ""]
    if r["device_syncs_in_one_step"]:
        lines += ["| call site | syncs |", "|---|---|"]
        lines += [f"| `{site}` | {n} |" for site, n in r["device_syncs_in_one_step"].items()]
    else:
        lines.append("none")
    if r.get("launch_sites"):
        lines += [
            "",
            "## Who launched the costliest kernels outside GEMMs and attention (one more step, CPU ops "
            "and stacks recorded)",
            "",
            "Site: the op < its enclosing ops @ the Python frames above it, innermost first.",
            "",
            "| kernel | ms per step | launched by |",
            "|---|---|---|",
        ]
        for name, sites in r["launch_sites"].items():
            for i, s in enumerate(sites[:3]):
                lines.append(f"| {'`' + name[:70] + '`' if i == 0 else ''} | {s['ms']:.2f} | `{s['site'][:200]}` |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> str:
    """Write ``out``.json and ``out``.md (each through a temporary file: a re-render overwrites a
    measured report); returns the markdown."""
    from litespark.files import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    text = to_markdown(report)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    return text


def rerender(path: Path) -> int:
    """Re-sum a saved report's per-kernel times with the current FAMILIES; rewrite its JSON and md."""
    try:
        report = json.loads(path.read_text())
        report["families_ms_per_step"] = families_of(report["kernels_ms_per_step"])
        if "launch_sites" in report:
            report["launch_sites"] = merge_layer_sites(report["launch_sites"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"profile_step.py: error: {path} is not a profile_step report ({exc})", file=sys.stderr)
        return 2
    write_report(path, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from litespark.bench.data import load_windows
    from litespark.bench.stacks import STACKS, build_stack
    from litespark.config import resolve
    from litespark.config.cli import add_config_args, load_config, quiet_optional_dependency_warnings
    from litespark.runtime.distributed import init_distributed
    from litespark.training.metrics import flops_per_token

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--stack", choices=STACKS, default="litespark")
    p.add_argument("--micro-batch", type=int, help="required unless --rerender")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--data", default="random")
    p.add_argument(
        "--launch-sites",
        type=int,
        default=12,
        metavar="N",
        help="attribute the N costliest kernels outside GEMMs and attention to their launching ops "
        "and Python lines (one more step, profiled with stacks; 0: skip)",
    )
    p.add_argument("--out", required=True, help="output stem (OUT.json, OUT.md)")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="only re-sum the families (and merge the per-layer launch sites) of the saved OUT.json and rewrite OUT.md",
    )
    args = p.parse_args(argv)
    if args.rerender:
        return rerender(Path(args.out).with_suffix(".json"))
    if args.micro_batch is None:
        p.error("--micro-batch is required")
    quiet_optional_dependency_warnings()
    use_expandable_segments()  # as the benchmark's workers run (litespark.bench.worker)
    if not torch.cuda.is_available():
        print("profile_step.py: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    # + the step run in sync debug mode and the one profiled with stacks
    n_steps = args.warmup + args.steps + 1 + (args.launch_sites > 0)
    plan = resolve(
        load_config(
            args,
            [
                "checkpoint.enabled=false",
                "checkpoint.resume=false",
                f"data.micro_batch_size={args.micro_batch}",
                f"run.train_iters={n_steps}",
            ],
        )
    )
    cfg = plan.config
    init_distributed(1, cfg.run.seed, graph_safe_rng=plan.cuda_graphs)
    g = cfg.data.global_batch_size
    tokens = load_windows(args.data, n_steps * g, cfg.model.seq_length + 1, cfg.model.vocab_size, cfg.run.seed)
    built = build_stack(args.stack, plan)

    def batches(k):
        # As the bench's worker copies them: a blocking copy would make the host wait for the previous
        # step at every step boundary, and the profile would show idle time the bench does not have.
        return list(tokens[k * g : (k + 1) * g].to("cuda", non_blocking=True).split(cfg.data.micro_batch_size))

    for k in range(args.warmup):
        built.step(batches(k))
    torch.cuda.synchronize()
    host = time_host_calls(built.engine) if built.engine is not None else {}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for k in range(args.warmup, args.warmup + args.steps):
            built.step(batches(k))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    host_ms = {name: 1e3 * sum(ts) / args.steps for name, ts in host.items()}
    syncs = find_sync_sites(lambda: built.step(batches(args.warmup + args.steps)))

    per_kernel, timeline = kernel_times(prof.events())
    attributed = costliest_outside(per_kernel, top=args.launch_sites)
    sites = {}
    if attributed:
        from torch._C._profiler import _ExperimentalConfig

        # verbose: without it the ops' Python stacks stay empty
        with profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
            with_stack=True,
            experimental_config=_ExperimentalConfig(verbose=True),
        ) as traced:
            built.step(batches(args.warmup + args.steps + 1))
            torch.cuda.synchronize()
        cpu_ops = [evt for evt in traced.events() if evt.device_type == torch.autograd.DeviceType.CPU]
        sites = launch_sites(cpu_ops, set(attributed))
    busy = sum(per_kernel.values())
    steps = args.steps
    wall_ms = 1e3 * wall / steps
    tok_s = g * cfg.model.seq_length * steps / wall
    report = {
        "stack": args.stack,
        "description": built.description,
        "micro_batch": args.micro_batch,
        "step_wall_ms": wall_ms,
        "gpu_busy_ms_per_step": busy / steps,
        "gpu_busy_fraction": busy / 1e3 / wall,
        "tokens_per_s": tok_s,
        "tflops": tok_s * flops_per_token(cfg.model) / 1e12,
        "families_ms_per_step": {k: v / steps for k, v in families_of(per_kernel).items()},
        "kernels_ms_per_step": {k: v / steps for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])},
        "kernel_launches_per_step": len(timeline) / steps,
        **idle_report(timeline, steps, longest=20),
        "host_ms_per_step": host_ms,
        "device_syncs_in_one_step": syncs,
        # ms summed over the one step profiled with stacks, per kernel and launching site
        "launch_sites": {name: sites[name] for name in attributed if name in sites},
        "gpu": torch.cuda.get_device_name(),
        "command": "python -m litespark.bench.profile_step " + " ".join(sys.argv[1:]),
    }
    print(write_report(Path(args.out), report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
