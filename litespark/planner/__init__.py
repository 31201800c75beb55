"""The planner: before a run starts, what each micro-batch would cost in memory and time on a given
GPU and layout, and which micro-batch the automatic setting (``data.micro_batch_size=null``) takes.

``python -m litespark.train --plan WORLD_SIZE [--gpu h200|h100|NAME:GiB:TFLOPS]`` prints it on any
machine; :mod:`~litespark.planner.memory` and :mod:`~litespark.planner.speed` hold the two models and
their assumptions.  The automatic micro-batch is the fastest candidate whose predicted peak fits in
:data:`MEMORY_HEADROOM` of the GPU's memory.  A faster candidate that the model cannot rule in or out
(its prediction within :data:`MEMORY_ERROR` of the device memory) is tried by a start-up probe where
the launch allows one (:mod:`litespark.planner.probe`): taken if it ran, else the safe choice stands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from litespark.config import ConfigError, LitesparkConfig, RunPlan, plan_for
from litespark.planner.gpus import Gpu
from litespark.planner.memory import MemoryEstimate, estimate_memory
from litespark.planner.speed import SpeedEstimate, estimate_speed

MEMORY_ERROR = 0.05
"""The memory model's stated error: the largest measured (docs/planner.md), rounded up."""
MEMORY_HEADROOM = 1 - MEMORY_ERROR
"""Share of the device memory a plan may fill without a probe: the rest absorbs the model's error."""


@dataclass(frozen=True)
class Candidate:
    plan: RunPlan
    memory: MemoryEstimate
    speed: SpeedEstimate
    fits: bool
    """Predicted to fit even if the model under-estimates by MEMORY_ERROR."""
    unsure: bool
    """Does not surely fit, but would if the model over-estimates by MEMORY_ERROR: only a probe can tell."""

    @property
    def verdict(self) -> str:
        return "yes" if self.fits else "unsure" if self.unsure else "no"


@dataclass(frozen=True)
class ProbeResult:
    """What running a candidate told: whether it fits, and the measurement (or failure) in words."""

    fits: bool
    detail: str


Probe = Callable[[RunPlan, Gpu], ProbeResult]
"""Runs a candidate plan for a few steps on this host's GPU (:func:`litespark.planner.probe.run_probe`)."""


def micro_batch_candidates(cfg: LitesparkConfig, world_size: int) -> list[int]:
    """Micro-batches that divide each data-parallel rank's share of the global batch."""
    dp = max(1, world_size // cfg.parallel.tensor_parallel)
    per_rank, rest = divmod(cfg.data.global_batch_size, dp)
    if rest or per_rank < 1:
        raise ConfigError(
            f"data.global_batch_size ({cfg.data.global_batch_size}) is not a multiple of the data-parallel size ({dp})"
        )
    return [mb for mb in range(1, per_rank + 1) if per_rank % mb == 0]


def plan_candidates(cfg: LitesparkConfig, world_size: int, gpu: Gpu) -> list[Candidate]:
    """Every candidate micro-batch of ``cfg`` (validated) on ``world_size`` ``gpu``s, smallest first
    (the te backend: the planner models GPU runs)."""
    out = []
    for mb in micro_batch_candidates(cfg, world_size):
        plan = plan_for(cfg, world_size, "te", mb, f"planner candidate for {gpu.name}")
        memory = estimate_memory(plan)
        speed = estimate_speed(plan, gpu)
        device = gpu.memory_gib * 2**30
        fits = memory.total <= MEMORY_HEADROOM * device
        out.append(Candidate(plan, memory, speed, fits, not fits and memory.total <= (1 + MEMORY_ERROR) * device))
    return out


def best(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate that fits, or None."""
    fitting = [c for c in candidates if c.fits]
    return max(fitting, key=lambda c: c.speed.tokens_per_s_per_gpu) if fitting else None


def to_probe(candidates: list[Candidate]) -> list[Candidate]:
    """The unsure candidates faster than the best sure one, fastest first: what a probe tries."""
    chosen = best(candidates)
    floor = chosen.speed.tokens_per_s_per_gpu if chosen else 0.0
    faster = [c for c in candidates if c.unsure and c.speed.tokens_per_s_per_gpu > floor]
    return sorted(faster, key=lambda c: -c.speed.tokens_per_s_per_gpu)


def automatic_micro_batch(
    cfg: LitesparkConfig, world_size: int, gpu: Gpu, probe: Probe | None = None
) -> tuple[int, str]:
    """The automatic micro-batch and why; ConfigError when not even 1 fits.

    The fastest candidate that surely fits, unless ``probe`` runs a faster unsure one (fastest first)
    and it fits; without ``probe`` unsure candidates are not taken and the reason says so."""
    candidates = plan_candidates(cfg, world_size, gpu)
    chosen = best(candidates)
    tried = []
    for candidate in to_probe(candidates):
        mb = candidate.plan.micro_batch_size
        if probe is None:
            tried.append(f"{mb} (not probed)")
            continue
        result = probe(candidate.plan, gpu)
        if result.fits:
            return mb, f"automatic: a start-up probe on {gpu.name} ran it ({result.detail})"
        tried.append(f"{mb} (probed: {result.detail})")
    if chosen is None:
        smallest = candidates[0]
        raise ConfigError(
            f"data.micro_batch_size: even micro-batch 1 needs about {smallest.memory.total / 2**30:.1f} GiB per GPU, "
            f"more than {MEMORY_HEADROOM:.0%} of the {gpu.memory_gib:.1f} GiB of {gpu.name}"
            + (f" and micro-batch {'; '.join(tried)} did not fit" if tried else "")
            + " (more GPUs with ZeRO-2/3 or tensor parallelism would split it): see python -m litespark.train --plan"
        )
    why = f"automatic: the fastest that the planner fits in {gpu.name} ({gpu.memory_gib:.0f} GiB)"
    if tried:
        why += f"; faster, within the model's {MEMORY_ERROR:.0%} error of the memory: {'; '.join(tried)}"
    return chosen.plan.micro_batch_size, why


def choose_micro_batch(cfg: LitesparkConfig, world_size: int, gpu: Gpu) -> int:
    """The automatic micro-batch without a probe; ConfigError when not even 1 fits."""
    return automatic_micro_batch(cfg, world_size, gpu)[0]
