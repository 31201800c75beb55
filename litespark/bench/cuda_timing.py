"""Mean CUDA time of a callable, shared by the benchmark scripts that time kernels or layers in isolation."""

from __future__ import annotations


def time_cuda_ms(fn, warmup: int, iters: int) -> float:
    """Mean milliseconds of ``fn()`` over ``iters`` calls after ``warmup`` calls (CUDA events)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
