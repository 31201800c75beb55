"""Profile a few optimizer steps of a real run (``run.profile_start``, ``run.profile_steps``).

A benchmark's step is one fixed shape; a fine-tuning or DPO run has packs of another length and
number of documents at every micro-batch, its own loss, data and logging, and can be slower than the
benchmark for reasons the benchmark never shows.  This records the steps the user names with the
PyTorch profiler (CPU and CUDA activity) and writes, per rank, into ``RUN_DIR/profile/``:

- ``steps_A-B_rankR.json`` and ``.md``: wall time per step, the time kernels ran (by family and
  the costliest kernels), the stretches with no kernel on the GPU, and the CUDA runtime calls the host
  spent the most time in (``cudaStreamSynchronize``, ``cudaMemcpyAsync`` from pageable memory and
  ``cudaFree`` are where a host waits for the device);
- ``steps_A-B_rankR.trace.json.gz``: the full timeline, for Perfetto or ``chrome://tracing``.

The window starts after step A - 1 has finished (so it includes making step A's batches) and ends
once step B's kernels have finished; an evaluation or checkpoint due inside it is in it too.  The
profiled steps run slower than the others (the profiler records every kernel and runtime call), and
writing the report is kept out of the training time that tokens/s and goodput count.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from litespark.files import atomic_write_text
from litespark.log import get_logger
from litespark.training.kernel_timeline import families_of, family, idle_report, kernel_times

log = get_logger(__name__)

TOP_KERNELS = 30
TOP_RUNTIME_CALLS = 15
LONGEST_IDLE = 12


def summarize(events, steps: int, wall_s: float, tokens: int) -> dict:
    """The report of ``steps`` profiled steps that took ``wall_s`` and ``tokens`` (real tokens, all of
    this rank's micro-batches): ``events`` are the profiler's (``prof.events()``), CUDA kernels and
    CPU-side CUDA runtime calls among them."""
    per_kernel, timeline = kernel_times(events)
    runtime: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for evt in events:
        host_call = evt.device_type != torch.autograd.DeviceType.CUDA and evt.key.startswith("cuda")
        if host_call and not evt.key.startswith("cudaGetDevice"):
            calls = runtime[evt.key]
            calls[0] += 1
            calls[1] += evt.time_range.elapsed_us() / 1e3
    busy = sum(per_kernel.values())
    return {
        "steps": steps,
        "step_wall_ms": 1e3 * wall_s / steps,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "kernel_ms_per_step": busy / steps,
        "kernel_busy_fraction": busy / 1e3 / wall_s if wall_s > 0 else 0.0,
        "kernels_per_step": len(timeline) / steps,
        "families_ms_per_step": {k: v / steps for k, v in families_of(per_kernel).items()},
        "kernels_ms_per_step": {
            k: v / steps for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
        },
        **idle_report(timeline, steps, longest=LONGEST_IDLE),
        "cuda_runtime_ms_per_step": {
            name: {"calls": n / steps, "ms": ms / steps}
            for name, (n, ms) in sorted(runtime.items(), key=lambda kv: -kv[1][1])[:TOP_RUNTIME_CALLS]
        },
    }


def to_markdown(r: dict) -> str:
    """``summarize``'s report as markdown."""
    busy = r["kernel_ms_per_step"] or 1.0
    lines = [
        f"# Steps {r['first_step']}-{r['last_step']} of {r['run_dir']} (rank {r['rank']}, {r['gpu']})",
        "",
        f"Step wall time {r['step_wall_ms']:.1f} ms, kernels {r['kernel_ms_per_step']:.1f} ms "
        f"({100 * r['kernel_busy_fraction']:.1f}% of the wall time; all kernel times summed, so streams that "
        f"overlap can exceed it), no kernel on the GPU for {r['idle_ms_per_step']:.1f} ms; "
        f"{r['tokens_per_s']:,.0f} real tokens/s while profiled; {r['kernels_per_step']:,.0f} kernels per step.",
        "",
        "| kernel family | ms per step | share of kernel time |",
        "|---|---|---|",
    ]
    lines += [f"| {fam} | {ms:.1f} | {100 * ms / busy:.1f}% |" for fam, ms in r["families_ms_per_step"].items()]
    lines += ["", "| kernel | family | ms per step |", "|---|---|---|"]
    lines += [f"| `{name[:110]}` | {family(name)} | {ms:.2f} |" for name, ms in r["kernels_ms_per_step"].items()]
    lines += ["", "## No kernel on the GPU", "", "| idle stretch | per step | ms per step |", "|---|---|---|"]
    lines += [f"| {k} | {v['count']:.1f} | {v['ms']:.1f} |" for k, v in r["idle_by_length"].items()]
    lines += ["", "| at (ms into the window) | idle ms | after kernel | before kernel |", "|---|---|---|---|"]
    lines += [
        f"| {g['at_ms']:.1f} | {g['ms']:.2f} | `{g['after'][:60]}` | `{g['before'][:60]}` |" for g in r["longest_idle"]
    ]
    lines += ["", "## CUDA runtime calls on the host", "", "| call | per step | ms per step |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['calls']:.1f} | {v['ms']:.1f} |" for k, v in r["cuda_runtime_ms_per_step"].items()]
    return "\n".join(lines) + "\n"


class StepProfiler:
    """Profiles optimizer steps ``first`` .. ``first + count - 1`` (numbered from 1, as the log lines
    count them) on this rank; a no-op when ``first`` is 0 or the window lies before ``start_step``."""

    def __init__(self, first: int, count: int, start_step: int, run_dir: Path, rank: int, device: torch.device):
        self.first, self.last = first, first + count - 1
        self.run_dir, self.rank, self.device = run_dir, rank, device
        self.enabled = first > 0
        if self.enabled and start_step >= first:
            log.warning(
                "run.profile_start %d: the run resumes after step %d, so steps %d-%d are not profiled",
                first,
                start_step,
                first,
                self.last,
            )
            self.enabled = False
        self._prof: Any = None
        self._t0 = 0.0
        self._tokens = 0

    def ends_at(self, steps_done: int) -> bool:
        """Whether :meth:`after_step` with ``steps_done`` ends the window (and writes the report)."""
        return self._prof is not None and steps_done >= self.last

    def after_step(self, steps_done: int, tokens: int = 0) -> None:
        """Call when ``steps_done`` steps are done (and once before the first step with the start
        step): starts the window before step ``first``, and ends it after step ``last``, writing the
        report.  ``tokens``: the real tokens of the step just done on this rank."""
        if not self.enabled:
            return
        if self._prof is not None:
            self._tokens += tokens
            if steps_done >= self.last:
                self._finish()
        elif steps_done == self.first - 1:
            self._start()

    def _start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        prof = profile(activities=activities)
        prof.__enter__()
        self._prof = prof
        self._t0 = time.perf_counter()

    def _finish(self) -> None:
        prof, self._prof, self.enabled = self._prof, None, False
        assert prof is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._t0
        prof.__exit__(None, None, None)
        out = self.run_dir / "profile"
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"steps_{self.first}-{self.last}_rank{self.rank}"
        report = {
            "first_step": self.first,
            "last_step": self.last,
            "rank": self.rank,
            "run_dir": str(self.run_dir),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
            **summarize(prof.events(), self.last - self.first + 1, wall, self._tokens),
        }
        atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
        atomic_write_text(stem.with_suffix(".md"), to_markdown(report))
        trace = Path(f"{stem}.trace.json")
        partial = Path(f"{trace}.gz.partial")
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as src, gzip.open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, f"{trace}.gz")
        trace.unlink()
        families = ", ".join(f"{k} {v:.0f}" for k, v in list(report["families_ms_per_step"].items())[:4])
        log.info(
            "profile of steps %d-%d: %.0f ms a step, kernels busy %.0f%% of it (%s ms), GPU idle %.0f ms; %s.md",
            self.first,
            self.last,
            report["step_wall_ms"],
            100 * report["kernel_busy_fraction"],
            families,
            report["idle_ms_per_step"],
            stem,
        )
