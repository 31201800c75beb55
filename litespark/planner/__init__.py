"""The planner: before a run starts, what each micro-batch would cost in memory and time on a given
GPU and layout, and which micro-batch the automatic setting (``data.micro_batch_size=null``) takes.

``python -m litespark.train --plan WORLD_SIZE [--gpu h200|h100|NAME:GiB:TFLOPS]`` prints it on any
machine; :mod:`~litespark.planner.memory` and :mod:`~litespark.planner.speed` hold the two models and
their assumptions.  The automatic micro-batch is the fastest candidate whose predicted peak fits in
:data:`MEMORY_HEADROOM` of the GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from litespark.config import ConfigError, LitesparkConfig, RunPlan, plan_for
from litespark.planner.gpus import Gpu
from litespark.planner.memory import MemoryEstimate, estimate_memory
from litespark.planner.speed import SpeedEstimate, estimate_speed

MEMORY_HEADROOM = 0.95
"""Share of the device memory a plan may fill: the rest absorbs the allocator's fragmentation and
the model's error (docs/planner.md)."""


@dataclass(frozen=True)
class Candidate:
    plan: RunPlan
    memory: MemoryEstimate
    speed: SpeedEstimate
    fits: bool


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
        out.append(Candidate(plan, memory, speed, memory.total <= MEMORY_HEADROOM * gpu.memory_gib * 2**30))
    return out


def best(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate that fits, or None."""
    fitting = [c for c in candidates if c.fits]
    return max(fitting, key=lambda c: c.speed.tokens_per_s_per_gpu) if fitting else None


def choose_micro_batch(cfg: LitesparkConfig, world_size: int, gpu: Gpu) -> int:
    """The automatic micro-batch; ConfigError when not even 1 fits."""
    candidates = plan_candidates(cfg, world_size, gpu)
    chosen = best(candidates)
    if chosen is None:
        smallest = candidates[0]
        raise ConfigError(
            f"data.micro_batch_size: even micro-batch 1 needs about {smallest.memory.total / 2**30:.1f} GiB per GPU, "
            f"more than {MEMORY_HEADROOM:.0%} of the {gpu.memory_gib:.1f} GiB of {gpu.name} "
            "(more GPUs with ZeRO-2/3 or tensor parallelism would split it): see python -m litespark.train --plan"
        )
    return chosen.plan.micro_batch_size
