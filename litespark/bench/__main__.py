"""``python -m litespark.bench``: Hugging Face vs Megatron-Core + TE + DeepSpeed vs Litespark, one GPU.

Each stack runs in its own worker process (see :mod:`litespark.bench.worker`) on the same token
windows; for each stack the micro-batch sizes are tried from the largest down and the first one that
fits is measured ("the largest that fits", which on these shapes is also the fastest; ``--pin``
fixes one instead).  The comparison is written as JSON + markdown + PNG named after the preset,
the GPU and the date.

Example (GPU host, about 6 minutes)::

    python -m litespark.bench --preset llama-3b --data random
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from litespark.config import ConfigError, resolve, to_dict
from litespark.config.cli import add_config_args, load_config, quiet_optional_dependency_warnings, user_errors_exit_2
from litespark.log import get_logger, setup_logging
from litespark.runtime.allocator import use_expandable_segments

log = get_logger(__name__)
EXIT_OOM = 3


def _parse_pins(pins: list[str], stacks: list[str]) -> dict[str, int]:
    out = {}
    for pin in pins:
        name, _, mb = pin.partition("=")
        if name not in stacks or not mb.isdigit() or int(mb) < 1:
            raise ConfigError(f"--pin {pin!r}: expected STACK=MICRO_BATCH with STACK one of {', '.join(stacks)}")
        out[name] = int(mb)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_attempt(
    stack: str, cfg, data: str, warmup: int, steps: int, workdir: Path, timeout: float
) -> tuple[str, dict | None]:
    """One worker process; returns (status, result) with status 'ok', 'out of memory' or 'failed: ...'
    (for 'out of memory' the result holds the worker's error line and where it was raised)."""
    tag = f"{stack}-mb{cfg.data.micro_batch_size}"
    cfg_path, out_path = workdir / f"{tag}.config.json", workdir / f"{tag}.result.json"
    cfg_path.write_text(json.dumps(to_dict(cfg)))
    cmd = [
        sys.executable,
        "-m",
        "litespark.bench.worker",
        "--stack",
        stack,
        "--config-json",
        str(cfg_path),
        "--data",
        data,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--out",
        str(out_path),
    ]
    log.info("%s: micro-batch %d ...", stack, cfg.data.micro_batch_size)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"failed: timed out after {timeout:.0f} s", None
    wall = time.perf_counter() - t0
    if proc.returncode == EXIT_OOM:
        oom = json.loads(out_path.read_text()) if out_path.is_file() else {}
        log.info(
            "%s: micro-batch %d does not fit (%.0f s) at %s: %s",
            stack,
            cfg.data.micro_batch_size,
            wall,
            oom.get("where", "?"),
            oom.get("error", "?"),
        )
        return "out of memory", oom
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        log.error("%s: worker failed (exit %d); its last lines:\n%s", stack, proc.returncode, tail)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        return f"failed: exit {proc.returncode}: {last[:200]}", None
    result = json.loads(out_path.read_text())
    result["worker_wall_seconds"] = wall
    log.info(
        "%s: micro-batch %d: %.0f tokens/s%s, loss %.4f (%.0f s incl. build)",
        stack,
        result["micro_batch"],
        result["tokens_per_s"],
        f", MFU {100 * result['mfu']:.1f}%" if "mfu" in result else "",
        result["final_loss"],
        wall,
    )
    return "ok", result


@user_errors_exit_2("litespark.bench")
def main(argv: list[str] | None = None) -> int:
    from litespark.bench.results import compare, to_markdown, write_report
    from litespark.bench.stacks import NEEDS_TE, STACKS
    from litespark.environment import collect_versions, te_available
    from litespark.training.metrics import flops_per_token, peak_bf16_tflops

    p = argparse.ArgumentParser(prog="python -m litespark.bench", description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.set_defaults(preset="llama-3b")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, from {', '.join(STACKS)}")
    p.add_argument("--micro-batches", default="8,4,2,1", help="candidates, tried largest first (default 8,4,2,1)")
    p.add_argument(
        "--pin", action="append", default=[], metavar="STACK=MB", help="measure STACK at this micro-batch only"
    )
    p.add_argument(
        "--data",
        default="random",
        help="'random' (default) or an indexed-dataset prefix, e.g. data/sample_text_document",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--out-dir", default="benchmarks/results", help="where NAME.{json,md,png} go")
    p.add_argument("--name", help="file stem (default bench_PRESET_GPU_DATE)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per worker before it is killed")
    args = p.parse_args(argv)
    quiet_optional_dependency_warnings()
    setup_logging()

    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in stacks if s not in STACKS]
    if unknown:
        raise ConfigError(f"--stacks: unknown {', '.join(unknown)} (known: {', '.join(STACKS)})")
    try:
        candidates = sorted({int(x) for x in args.micro_batches.split(",")}, reverse=True)
    except ValueError:
        raise ConfigError(f"--micro-batches {args.micro_batches!r}: expected comma-separated integers") from None
    pins = _parse_pins(args.pin, stacks)
    if args.warmup < 1 or args.steps < 1:
        raise ConfigError("--warmup and --steps must be >= 1")
    base = load_config(args, ["checkpoint.enabled=false", "checkpoint.resume=false"])
    base.run.train_iters = args.warmup + args.steps
    resolve(base)  # a config this host cannot run (FP8 without Transformer Engine) fails here, in one line
    corpus_size = None
    if args.data != "random":
        from litespark.bench.data import corpus_tokens

        corpus_size = corpus_tokens(args.data).size  # fail now, in one line, not in every worker

    import torch

    versions = collect_versions()
    gb = base.data.global_batch_size
    data_description = (
        "uniform random token ids (seeded; a speed test, the loss cannot fall far)"
        if args.data == "random"
        else f"token windows read in order from the indexed dataset `{args.data}`"
    )
    if corpus_size is not None:
        reps = (args.warmup + args.steps) * gb * (base.model.seq_length + 1) / corpus_size
        if reps > 1:
            data_description += f" (the corpus is repeated {reps:.1f} times to fill the windows)"
    results: dict[str, dict] = {}
    attempts: dict[str, list[dict]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="litespark-bench-") as tmp:
        for stack in stacks:
            attempts[stack] = []
            if stack in NEEDS_TE and not te_available():
                attempts[stack].append({"micro_batch": None, "status": "skipped: needs CUDA and Transformer Engine"})
                log.warning("%s: skipped (needs CUDA and Transformer Engine)", stack)
                continue
            for mb in [pins[stack]] if stack in pins else candidates:
                if gb % mb:
                    continue
                cfg = copy.deepcopy(base)
                cfg.data.micro_batch_size = mb
                if not stack.startswith("litespark"):  # the baselines never capture graphs
                    cfg.kernels.cuda_graphs = False
                resolve(cfg)  # checked here; the worker resolves it again, on this host: the same plan
                status, result = run_attempt(stack, cfg, args.data, args.warmup, args.steps, Path(tmp), args.timeout)
                attempts[stack].append({"micro_batch": mb, "status": status})
                if status == "out of memory":  # where and how much, for the report
                    attempts[stack][-1].update({k: v for k, v in (result or {}).items() if k in ("where", "error")})
                    continue
                if result is not None:
                    results[stack] = result
                break
    total = time.perf_counter() - t_start

    date = datetime.date.today().isoformat()
    gpu = versions.get("gpu", "cpu")
    name = args.name or f"bench_{base.preset}_{_slug(gpu.replace('NVIDIA', ''))}_{date.replace('-', '')}"
    command = "python -m litespark.bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    report = {
        "date": date,
        "command": command,
        "versions": versions,
        "stacks": stacks,
        "wall_seconds": total,
        "setup": {
            "preset": base.preset,
            "seq_length": base.model.seq_length,
            "global_batch": gb,
            "warmup": args.warmup,
            "steps": args.steps,
            "data": args.data,
            "data_description": data_description,
            "flops_per_token": flops_per_token(base.model),
            "peak_tflops": peak_bf16_tflops(gpu) if torch.cuda.is_available() else None,
            "litespark_config": to_dict(base),
        },
        "results": results,
        "attempts": attempts,
        "comparison": compare(results),
    }
    paths = write_report(report, Path(args.out_dir) / name)
    print(to_markdown(report))
    log.info("wrote %s (whole comparison %.0f s)", ", ".join(map(str, paths)), total)
    failed = [s for s in stacks if s not in results and not attempts[s][-1]["status"].startswith("skipped")]
    if failed:
        log.error("stacks that did not produce a measurement: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    use_expandable_segments()
    sys.exit(main())
