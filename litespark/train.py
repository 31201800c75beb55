"""``python -m litespark.train``: the Litespark entry point.

    python -m litespark.train --preset tiny                                # train (CPU: torch backend)
    torchrun --nproc-per-node 8 -m litespark.train --preset llama-3b --data mock --train-iters 30 \
        --set data.global_batch_size=64
    python -m litespark.train --preset llama-3b --print-config    # the config, then what it resolves to
    python -m litespark.train --preset llama-3b --plan 8 --gpu h100   # predicted memory and speed
    python -m litespark.train --preset tiny --smoke          # one forward/backward, checks finiteness

Config and data errors print one line and exit with code 2; a run stopped by SIGTERM/SIGUSR1 saves a
checkpoint and exits with 75, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import yaml

from litespark.config import ConfigError, LitesparkConfig, RunPlan, resolve, to_dict
from litespark.config.cli import add_config_args, load_config, quiet_optional_dependency_warnings, user_errors_exit_2
from litespark.runtime.allocator import use_expandable_segments
from litespark.training.metrics import count_parameters, flops_per_token


def describe(cfg: LitesparkConfig, plan: RunPlan | None) -> str:
    """The config as YAML (automatic fields as given), the plan it resolves to (``plan:``, what the run
    does), and the model arithmetic."""
    n = count_parameters(cfg.model)
    lines = [
        yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(),
        yaml.safe_dump({"plan": plan.to_dict() if plan else None}, sort_keys=False).rstrip(),
        "# --- derived ---",
        f"# parameters: {n.without_input_embedding:,} ({n.without_input_embedding / 1e9:.2f} B) "
        f"without the input embedding, LM head counted; {n.total:,} in all",
        f"# training FLOPs per token (6N + 12*L*h*s): {flops_per_token(cfg.model) / 1e9:.2f} GFLOP",
    ]
    return "\n".join(lines)


def smoke_step(plan: RunPlan) -> dict:
    """Build the model on this host and run one forward/backward on random tokens."""
    import torch

    from litespark.model.build import build_model, position_ids_for
    from litespark.runtime.distributed import destroy_distributed, init_distributed

    cfg = plan.config
    init_distributed(cfg.parallel.tensor_parallel, cfg.run.seed, graph_safe_rng=plan.cuda_graphs)
    try:
        model = build_model(plan)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        model.to(device)
        gen = torch.Generator(device="cpu").manual_seed(cfg.run.seed)
        tokens = torch.randint(
            0, cfg.model.vocab_size, (plan.micro_batch_size, cfg.model.seq_length + 1), generator=gen
        )
        tokens = tokens.to(device)
        inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        start = time.perf_counter()
        losses = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
        loss = losses.float().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        missing = [name for name, p in model.named_parameters() if p.grad is None]
        nonfinite = [
            name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        grad_norm = math.sqrt(sum(float(p.grad.float().norm()) ** 2 for p in model.parameters() if p.grad is not None))
        return {
            "loss": float(loss.detach()),
            "grad_norm": grad_norm,
            "seconds": time.perf_counter() - start,
            "params_without_grad": missing,
            "params_with_nonfinite_grad": nonfinite,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        }
    finally:
        destroy_distributed()


RUNTIME_PACKAGES = ("torch", "megatron.core", "deepspeed")
"""What every training process imports; --preflight checks that this interpreter has them."""


def preflight(cfg: LitesparkConfig, world_size: int, gpu_spec: str | None) -> str:
    """What a launch of ``cfg`` on ``world_size`` processes needs, checked in seconds in one process
    (no GPU, no process group); ConfigError if not.  Job scripts run it before launching, so that a
    mistake ends in one line instead of in every rank's traceback.  The config is resolved as the
    job's GPU nodes will (the te backend); an automatic micro-batch is planned for ``gpu_spec`` when
    given, else left to the nodes (the layout is then checked at micro-batch 1)."""
    import importlib.util

    from litespark.config import plan_for, validate
    from litespark.planner.gpus import parse_gpu

    if world_size < 1:
        raise ConfigError(f"--preflight {world_size}: the world size must be >= 1")
    for package in RUNTIME_PACKAGES:
        if importlib.util.find_spec(package.split(".")[0]) is None or importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{sys.executable} cannot import {package}: run with the project's environment "
                "(make venv, or pip install -r requirements.txt)"
            )
    from litespark.files import LockHeld, hold_lock
    from litespark.training.checkpoint_files import check_complete
    from litespark.training.loop import RUN_DIR_LOCK
    from litespark.training.resume import plan_resume

    backend = "te" if cfg.kernels.backend == "auto" else cfg.kernels.backend
    if cfg.data.micro_batch_size is not None or gpu_spec:
        run_plan: RunPlan | None = resolve(
            cfg, world_size, backend=backend, gpu=parse_gpu(gpu_spec) if gpu_spec else None
        )
    else:
        plan_for(validate(cfg), world_size, backend, 1)
        run_plan = None
    if cfg.data.source == "indexed":
        from litespark.training.data import check_indexed_prefixes

        check_indexed_prefixes(cfg)
    run_dir = Path(cfg.run.run_dir)
    probe = run_dir if run_dir.exists() else next((p for p in run_dir.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"run.run_dir: {run_dir} is not writable (checked {probe})")
    if (run_dir / RUN_DIR_LOCK).is_file():
        try:
            hold_lock(run_dir / RUN_DIR_LOCK, f"run.run_dir {run_dir}").release()
        except LockHeld as exc:
            raise ConfigError(f"{exc}: another training run is using it") from None
    start = "step 0"
    if cfg.checkpoint.resume:
        plan = plan_resume(cfg, run_dir, world_size, whole=check_complete)
        if plan.path is not None:
            start = f"{plan.path.name}" + (
                f" (resharded from DP {plan.saved_data_parallel})" if plan.saved_data_parallel else ""
            )
    tp = cfg.parallel.tensor_parallel
    return (
        f"preflight ok: {cfg.preset}, world {world_size} = TP {tp} x DP {world_size // tp}, ZeRO-{cfg.parallel.zero_stage}, "
        + (
            f"micro-batch {run_plan.micro_batch_size} x accumulation {run_plan.gradient_accumulation_steps} "
            if run_plan is not None
            else "micro-batch automatic (the planner's, on the GPU host; --plan shows it) "
        )
        + f"= global batch {cfg.data.global_batch_size}, data {cfg.data.source}"
        f"{' ' + ','.join(cfg.data.prefixes) if cfg.data.source == 'indexed' else ''}, run dir {run_dir}, "
        f"starts at {start}"
    )


def plan(cfg: LitesparkConfig, world_size: int, gpu_spec: str | None, layouts: bool) -> str:
    """``--plan``: the planner's tables for ``world_size`` GPUs (no GPU needed)."""
    from litespark.config import validate
    from litespark.planner.gpus import parse_gpu
    from litespark.planner.render import render_layouts, render_plan

    if world_size < 1:
        raise ConfigError(f"--plan {world_size}: the world size must be >= 1")
    gpu = parse_gpu(gpu_spec) if gpu_spec else _gpu_to_plan_for()
    validate(cfg)
    if cfg.kernels.backend == "torch":
        raise ConfigError("--plan models the te backend (a GPU run); this config sets kernels.backend=torch")
    text = render_plan(cfg, world_size, gpu)
    return text + ("\n\n" + render_layouts(cfg, world_size, gpu) if layouts else "")


def _gpu_to_plan_for():
    """This host's GPU, else an H200 (what the planner assumes on a host without one)."""
    from litespark.planner.gpus import GPUS, gpu_of_this_host

    return gpu_of_this_host() or GPUS["h200"]


def print_config(cfg: LitesparkConfig, world_size: int, gpu_spec: str | None) -> str:
    """``--print-config``: the config and its plan on this host (or on ``gpu_spec``).  A config this
    host cannot run (FP8 on a CPU host) is shown with the plan a GPU host would make (``gpu_spec``,
    else an H200), and a note on stderr says so; a config no host can run is shown without a plan."""
    from litespark.config import validate
    from litespark.planner.gpus import parse_gpu

    gpu = parse_gpu(gpu_spec) if gpu_spec else None
    try:
        return describe(cfg, resolve(cfg, world_size, gpu=gpu))  # validates once
    except ConfigError as here:
        validate(cfg)  # a config no host can run is refused (exit 2); only planning problems become the note
        target = gpu or _gpu_to_plan_for()
        try:
            run_plan = resolve(cfg, world_size, backend="te", gpu=target)
            note = f"this host cannot run this config: {here}; the plan is {target.name}'s"
        except ConfigError as anywhere:
            run_plan, note = None, f"this config cannot run as set: {anywhere}"
        print(f"# note: {note}", file=sys.stderr)
        return describe(cfg, run_plan)


@user_errors_exit_2("litespark.train")
def main(argv: list[str] | None = None) -> int:
    quiet_optional_dependency_warnings()
    parser = argparse.ArgumentParser(prog="python -m litespark.train", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--smoke", action="store_true", help="one forward/backward on random tokens, then exit")
    parser.add_argument(
        "--data",
        metavar="mock|PREFIX[,PREFIX...]",
        help="shortcut: 'mock' for synthetic tokens, else indexed dataset prefixes",
    )
    parser.add_argument("--train-iters", type=int, help="shortcut for --set run.train_iters=N")
    parser.add_argument("--run-dir", help="shortcut for --set run.run_dir=DIR")
    parser.add_argument(
        "--preflight",
        type=int,
        metavar="WORLD_SIZE",
        help="check, without a GPU or process group, that the config is valid for WORLD_SIZE "
        "processes (TP x DP), the data prefixes exist and the run directory is writable; "
        "print one line and exit (job scripts run this before queueing work)",
    )
    parser.add_argument(
        "--plan",
        type=int,
        metavar="WORLD_SIZE",
        help="print, on any machine, the predicted memory per GPU, tokens/s and MFU of each micro-batch "
        "on WORLD_SIZE GPUs, and the one the automatic setting takes; then exit",
    )
    parser.add_argument(
        "--gpu",
        default=None,
        metavar="h200|h100|NAME:GiB:TFLOPS[:TB/s]",
        help="the GPU --plan, --print-config and --preflight plan for (default: this host's GPU, else h200; "
        "--preflight: none, an automatic micro-batch is then left to the GPU nodes)",
    )
    parser.add_argument(
        "--plan-layouts", action="store_true", help="with --plan: also compare every TP size and ZeRO stage"
    )
    args = parser.parse_args(argv)
    shortcuts = []
    if args.data:
        shortcuts += (
            ["data.source=mock"] if args.data == "mock" else ["data.source=indexed", f"data.prefixes={args.data}"]
        )
    if args.train_iters is not None:
        shortcuts.append(f"run.train_iters={args.train_iters}")
    if args.run_dir:
        shortcuts.append(f"run.run_dir={args.run_dir}")
    cfg = load_config(args, extra_overrides=shortcuts)
    if args.preflight is not None:
        print(preflight(cfg, args.preflight, args.gpu))
        return 0
    if args.plan is not None:
        print(plan(cfg, args.plan, args.gpu, args.plan_layouts))
        return 0
    use_expandable_segments()  # before CUDA initialises: the automatic micro-batch asks for the GPU's memory
    from litespark.runtime.distributed import launched_world_size

    world_size = launched_world_size()  # under srun, SLURM_NTASKS: WORLD_SIZE is set later, by init_distributed
    if args.print_config:
        print(print_config(cfg, world_size, args.gpu))
        return 0
    from litespark.log import setup_logging
    from litespark.planner.probe import startup_probe

    setup_logging()  # the start-up probe logs
    run_plan = resolve(cfg, world_size, probe=None if args.smoke else startup_probe(cfg, world_size))
    if args.smoke:
        result = smoke_step(run_plan)
        print(yaml.safe_dump({"smoke": result}, sort_keys=False).rstrip())
        ok = (
            math.isfinite(result["loss"])
            and not result["params_without_grad"]
            and not result["params_with_nonfinite_grad"]
        )
        return 0 if ok else 1
    from litespark.training.loop import run

    return run(run_plan)


if __name__ == "__main__":
    sys.exit(main())
