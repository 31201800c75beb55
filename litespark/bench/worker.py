"""One benchmark measurement: one stack, one micro-batch size, in a process of its own.

The parent (``python -m litespark.bench``) starts one worker per attempt so that every stack starts
from an empty GPU and an out-of-memory attempt cannot leave fragments behind for the next.  The
worker writes one JSON object to ``--out`` and exits 0, or exits 3 after writing ``{"oom": true}``
when the micro-batch does not fit.

Timing: ``--warmup`` optimizer steps (excluded: allocator growth, TE workspace and FP8 amax
history set-up, cuDNN plan search), then ``--steps`` timed steps between two device
synchronisations.  Energy is NVML's counter over the same window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from litespark.runtime.allocator import use_expandable_segments

EXIT_OOM = 3


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, whichever layer raised it (torch, TE, cuBLAS workspace, DeepSpeed)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text


def oom_site(exc: BaseException) -> str:
    """The innermost Litespark frame of ``exc``'s traceback ('litespark/runtime/engine.py:64 build_engine'):
    which phase (build, capture, forward, optimizer step) ran out of memory."""
    import traceback

    import litespark

    package = Path(litespark.__file__).resolve().parent
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package):
            return f"litespark/{path.relative_to(package).as_posix()}:{frame.lineno} {frame.name}"
    return "?"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(stack: str, plan, tokens: torch.Tensor, warmup: int, steps: int) -> dict:
    """Build ``stack`` for ``plan`` (a :class:`~litespark.config.RunPlan`), run ``warmup + steps`` optimizer steps on ``tokens``, return figures.

    ``tokens`` is [(warmup + steps) * global_batch, seq + 1]; step k uses rows [k*G, (k+1)*G).
    """
    from litespark.bench.stacks import build_stack
    from litespark.training.energy import EnergyMeter
    from litespark.training.metrics import flops_per_token, peak_bf16_tflops

    cfg = plan.config
    d = cfg.data
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    t0 = time.perf_counter()
    built = build_stack(stack, plan)
    build_s = time.perf_counter() - t0

    def batches(k: int) -> list[torch.Tensor]:
        rows = tokens[k * d.global_batch_size : (k + 1) * d.global_batch_size].to(device, non_blocking=True)
        return list(rows.split(d.micro_batch_size))

    losses = []
    for k in range(warmup):
        losses.append(float(built.step(batches(k))))
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    energy = EnergyMeter()
    energy.interval_joules()
    start = time.perf_counter()
    timed = []
    for k in range(warmup, warmup + steps):
        timed.append(built.step(batches(k)))
    _sync()
    seconds = time.perf_counter() - start
    joules = energy.interval_joules()
    losses += [float(x) for x in timed]

    n_tokens = steps * d.global_batch_size * cfg.model.seq_length
    tok_s = n_tokens / seconds
    out = {
        "stack": stack,
        "description": built.description,
        "micro_batch": d.micro_batch_size,
        "global_batch": d.global_batch_size,
        "seq_length": cfg.model.seq_length,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "build_seconds": build_s,
        "timed_seconds": seconds,
        "tokens_per_s": tok_s,
        "tflops": tok_s * flops_per_token(cfg.model) / 1e12,
        "losses": losses,
        "final_loss": losses[-1],
    }
    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    if peak:
        out["mfu"] = out["tflops"] / peak
    if joules is not None:
        out.update(energy_j=joules, joules_per_token=joules / n_tokens, avg_watts=joules / seconds)
    if torch.cuda.is_available():
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    from litespark.bench.data import load_windows
    from litespark.config import from_dict, resolve
    from litespark.config.cli import quiet_optional_dependency_warnings
    from litespark.runtime.distributed import destroy_distributed, init_distributed

    p = argparse.ArgumentParser(prog="litespark.bench.worker")
    p.add_argument("--stack", required=True)
    p.add_argument("--config-json", required=True, help="LitesparkConfig as JSON (micro-batch set)")
    p.add_argument("--data", required=True, help="'random' or an indexed-dataset prefix")
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    quiet_optional_dependency_warnings()
    use_expandable_segments()
    plan = resolve(from_dict(json.loads(Path(args.config_json).read_text())))
    cfg = plan.config
    out = Path(args.out)
    init_distributed(1, cfg.run.seed, graph_safe_rng=plan.cuda_graphs)
    try:
        tokens = load_windows(
            args.data,
            (args.warmup + args.steps) * cfg.data.global_batch_size,
            cfg.model.seq_length + 1,
            cfg.model.vocab_size,
            cfg.run.seed,
        )
        result = measure(args.stack, plan, tokens, args.warmup, args.steps)
    except Exception as exc:
        if is_oom(exc):
            out.write_text(
                json.dumps(
                    {
                        "stack": args.stack,
                        "micro_batch": cfg.data.micro_batch_size,
                        "oom": True,
                        "error": str(exc).splitlines()[0][:400],
                        "where": oom_site(exc),
                    }
                )
            )
            print(f"{args.stack} micro-batch {cfg.data.micro_batch_size}: out of memory", file=sys.stderr)
            return EXIT_OOM
        raise
    finally:
        destroy_distributed()
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
