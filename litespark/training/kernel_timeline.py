"""Kernel-timeline arithmetic shared by the step profilers: kernel families, idle stretches.

A profile of CUDA kernels answers two questions: which kinds of kernel the time goes to (GEMMs,
attention, FP8 casts, ...), and how long the GPU sat with no kernel at all (the host launching too
slowly, or waiting for the device).  ``python -m litespark.bench.profile_step`` asks them of a
benchmark stack and ``run.profile_steps`` (:mod:`litespark.training.profiling`) of a real run; both
sum the same way, here.
"""

from __future__ import annotations

import re
from collections import defaultdict

# First match wins; patterns are matched against the lower-cased kernel name.  Norms, RoPE and
# copies come before the FP8 row: TE's norm kernels that write FP8 name the FP8 type, and torch's
# dtype-converting copies are templated on ``LoadWithCast`` (and its elementwise kernels on
# ``gpu_kernel_impl_nocast``, hence ``cast_`` rather than ``cast``).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("attention", r"fmha|flash|cudnn.*attn|attn.*cudnn|sdpa|fprop_attn|bprop_attn|scaled_dot|cudnn_generated"),
    ("nccl", r"nccl"),
    ("optimizer", r"adam|multi_tensor|foreach|_amp_|clip"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|cublas|wgmma|matmul"),
    ("norm", r"rmsnorm|layernorm|layer_norm|rms_norm|^ln_(tma_)?(fwd|bwd)"),  # ln_*: cuDNN's norm graphs
    ("rope", r"rope|rotary"),
    ("swiglu/activation", r"swiglu|silu|gelu|act_|dact|glu"),
    ("cross entropy / softmax", r"cross_entropy|softmax|log_softmax|nll|vocab"),
    ("copy/fill", r"copy|memcpy|memset|fill|cat\b|index"),
    ("fp8 cast/transpose/amax", r"cast_|transpose|amax|quantiz|fp8|scale"),
    ("elementwise/reduce", r"elementwise|vectorized|reduce|unrolled"),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, pattern in FAMILIES:
        if re.search(pattern, low):
            return fam
    return "other"


GAP_BUCKETS_US: tuple[tuple[str, float], ...] = (
    ("< 10 us", 10.0),
    ("10-100 us", 100.0),
    ("0.1-1 ms", 1000.0),
    (">= 1 ms", float("inf")),
)


def idle_gaps(kernels: list[tuple[float, float, str]]) -> list[tuple[float, float, str, str]]:
    """The stretches in which no kernel runs on any stream, in time order.

    ``kernels`` are ``(start_us, end_us, name)``; returns ``(start_us, length_us, kernel before,
    kernel after)`` where "before" is the kernel whose end opened the gap.
    """
    ordered = sorted(kernels)
    if not ordered:
        return []
    gaps = []
    busy_until, last = ordered[0][1], ordered[0][2]
    for start, end, name in ordered[1:]:
        if start > busy_until:
            gaps.append((busy_until, start - busy_until, last, name))
        if end > busy_until:
            busy_until, last = end, name
    return gaps


def gap_histogram(gaps: list[tuple[float, float, str, str]]) -> dict[str, dict]:
    """Idle stretches by length bucket: how many and how much time (ms) each bucket holds."""
    out = {label: {"count": 0, "ms": 0.0} for label, _ in GAP_BUCKETS_US}
    for _, length, _, _ in gaps:
        label = next(lab for lab, upper in GAP_BUCKETS_US if length < upper)
        out[label]["count"] += 1
        out[label]["ms"] += length / 1e3
    return out


def families_of(kernels_ms: dict[str, float]) -> dict[str, float]:
    """Kernel times summed by :func:`family`, largest first."""
    by_family: dict[str, float] = defaultdict(float)
    for name, ms in kernels_ms.items():
        by_family[family(name)] += ms
    return dict(sorted(by_family.items(), key=lambda kv: -kv[1]))


def kernel_times(events) -> tuple[dict[str, float], list[tuple[float, float, str]]]:
    """The CUDA kernels among the PyTorch profiler's ``events`` (``prof.events()``): milliseconds per
    kernel name, and the ``(start_us, end_us, name)`` timeline that :func:`idle_gaps` reads."""
    import torch

    per_kernel: dict[str, float] = defaultdict(float)
    timeline = []
    for evt in events:
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[evt.key] += evt.time_range.elapsed_us() / 1e3  # us -> ms
            timeline.append((evt.time_range.start, evt.time_range.end, evt.key))
    return per_kernel, timeline


def idle_report(timeline: list[tuple[float, float, str]], steps: int, longest: int) -> dict:
    """The stretches with no kernel in ``timeline`` over ``steps`` steps: ``idle_ms_per_step``,
    ``idle_by_length`` (per step) and the ``longest`` ones with the kernels on either side."""
    gaps = idle_gaps(timeline)
    first = min((t[0] for t in timeline), default=0.0)
    return {
        "idle_ms_per_step": sum(length for _, length, _, _ in gaps) / 1e3 / steps,
        "idle_by_length": {
            k: {"count": v["count"] / steps, "ms": v["ms"] / steps} for k, v in gap_histogram(gaps).items()
        },
        "longest_idle": [
            {"at_ms": (start - first) / 1e3, "ms": length / 1e3, "after": before, "before": after}
            for start, length, before, after in sorted(gaps, key=lambda gap: -gap[1])[:longest]
        ],
    }
