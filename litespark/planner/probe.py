"""The start-up probe: run a micro-batch the planner is unsure of for a few steps before the run
starts, and take it only if it ran.

Why: the memory model is within a few percent of measured peaks (docs/planner.md), so a candidate
predicted within that error of the device's memory may or may not fit; guessing wrong either way
costs the user (out of memory on the cluster, or a slower run than the GPU allows).  Running it tells.

How: the candidate runs in a child ``python -m litespark.train`` on this GPU: the run's own config
with the micro-batch pinned, the run's gradient accumulation (at most ``PROBE_MICRO_BATCHES``
micro-batches per step), ``PROBE_STEPS`` steps on mock tokens (a
pretraining row's memory does not depend on its tokens), no checkpoints or evaluation, in a temporary
run directory that is removed afterwards.  A child process, because a run that ran out of memory
leaves the CUDA allocator, DeepSpeed and Transformer Engine in states that only a new process clears.
The candidate fits if the child exits 0 with its peak reserved memory at most ``PROBE_MEMORY_SHARE``
of the device (what a few steps do not exercise: the allocator's later fragmentation, evaluation).
The probe runs in one-process launches; :func:`startup_probe` says when.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from litespark.config import LitesparkConfig, RunPlan, to_dict
from litespark.config.schema import PACKED_SOURCES
from litespark.log import get_logger
from litespark.planner import Probe, ProbeResult
from litespark.planner.gpus import Gpu

log = get_logger(__name__)

PROBE_STEPS = 2
"""Optimizer steps the child runs: the first allocates Adam's moments (and captures CUDA graphs),
the second runs with everything resident."""
PROBE_MICRO_BATCHES = 4
"""Most micro-batches per probe step.  Accumulation changes the peak: between micro-batches every
parameter keeps its gradient beside DeepSpeed's reduced copy, which a step of one micro-batch never
holds (llama-3b, 30 layers, micro-batch 2 on an H100: 76.9 GiB in one-micro-batch steps, out of memory
in the run's steps of 4).  Later micro-batches repeat the second's allocations."""
PROBE_MEMORY_SHARE = 0.99
"""Largest share of the device's memory the probe's peak may reserve for the candidate to be taken
(llama-3b at micro-batch 2 trains at 98.1% of an H100's, measured)."""
PROBE_TIMEOUT_S = 1800


def startup_probe(cfg: LitesparkConfig, world_size: int) -> Probe | None:
    """The probe a training launch of ``cfg`` on ``world_size`` processes may run, or None: only a
    one-process launch of pretraining rows (a probe in each of several ranks would need its own
    process group, and packed SFT/DPO rows need the prepared corpus)."""
    if world_size != 1 or cfg.data.source in PACKED_SOURCES:
        return None
    return run_probe


def probe_config(cfg: LitesparkConfig, micro_batch: int, run_dir: Path) -> LitesparkConfig:
    """``cfg`` as the probe's child runs it (a copy)."""
    c = copy.deepcopy(cfg)
    c.data.source, c.data.prefixes, c.data.weights = "mock", [], []
    accumulation = max(1, min(cfg.data.global_batch_size // micro_batch, PROBE_MICRO_BATCHES))
    c.data.micro_batch_size, c.data.global_batch_size = micro_batch, micro_batch * accumulation
    c.run.train_iters, c.run.log_interval, c.run.eval_interval = PROBE_STEPS, 1, 0
    c.run.profile_start, c.run.run_dir = 0, str(run_dir)
    c.optim.warmup_iters, c.optim.decay_iters = 0, None
    c.checkpoint.enabled = c.checkpoint.resume = False
    c.checkpoint.load = None
    return c


def probe_command(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "litespark.train", "--preset", "tiny", "--config", str(config_file)]


def read_probe(run_dir: Path, returncode: int, stderr: str, gpu: Gpu, seconds: float) -> ProbeResult:
    """The verdict from the child's exit code, its stderr and its metrics (the GPU's peak reserved
    memory; on the torch backend, which has none, the process's peak resident memory)."""
    if returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        if "out of memory" in stderr.lower():
            return ProbeResult(False, f"ran out of memory in {seconds:.0f} s")
        return ProbeResult(False, f"exited with {returncode}: {lines[-1] if lines else 'no output'}")
    metrics = run_dir / "metrics.jsonl"
    records = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    )
    train = [r for r in records if r.get("split") == "train"]
    peaks = [r.get("peak_reserved_gib", r.get("peak_rss_gib")) for r in train]
    if not peaks or None in peaks:
        return ProbeResult(False, f"wrote no memory reading in {metrics}")
    peak, limit = max(peaks), PROBE_MEMORY_SHARE * gpu.memory_gib
    detail = f"{peak:.1f} GiB at its peak in {PROBE_STEPS} steps, {seconds:.0f} s"
    if peak > limit:
        return ProbeResult(False, f"{detail}: more than {PROBE_MEMORY_SHARE:.0%} of {gpu.memory_gib:.1f} GiB")
    return ProbeResult(True, detail)


def run_probe(plan: RunPlan, gpu: Gpu) -> ProbeResult:
    """Run ``plan``'s micro-batch in a child training process on this host (see the module docstring)."""
    mb = plan.micro_batch_size
    log.info(
        "micro-batch %d is within the planner's error of the %.1f GiB of %s: probing it (%d steps in a child process)",
        mb,
        gpu.memory_gib,
        gpu.name,
        PROBE_STEPS,
    )
    work = Path(tempfile.mkdtemp(prefix="litespark-probe-"))
    try:
        run_dir, config_file = work / "run", work / "config.yaml"
        config_file.write_text(yaml.safe_dump(to_dict(probe_config(plan.config, mb, run_dir)), sort_keys=False))
        start = time.perf_counter()
        try:
            proc = subprocess.run(probe_command(config_file), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result = ProbeResult(False, f"did not finish in {PROBE_TIMEOUT_S} s")
        else:
            result = read_probe(run_dir, proc.returncode, proc.stderr, gpu, time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("probe of micro-batch %d: %s; %s", mb, "fits" if result.fits else "not taken", result.detail)
    return result
