"""The training loop: config -> model -> DeepSpeed engine -> data -> steps, metrics, checkpoints.

Exit codes: 0 when ``run.train_iters`` are done, 75 (EX_TEMPFAIL) after a checkpoint taken because
of SIGTERM/SIGUSR1 (Slurm preemption: the job script requeues), 2 for a configuration or data error.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from litespark.checkpoint import atomic_write_text, load_latest_checkpoint, save_checkpoint
from litespark.config import ConfigError, LitesparkConfig, to_dict, validate
from litespark.environment import collect_versions
from litespark.log import get_logger, setup_logging
from litespark.metrics import EnergyMeter, PhaseMeter, count_parameters, flops_per_token, interval_metrics, peak_bf16_tflops

EXIT_PREEMPTED = 75
log = get_logger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGUSR1; ranks agree on it with a MAX all-reduce so they stop at the same step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([1 if self.signal else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _human(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.3f} M"


def _peak_memory_gib() -> dict:
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class MetricsSink:
    """metrics.jsonl (append, one JSON object per interval) and TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])
            self.tb.flush()


def _forward_loss(engine, batch: dict) -> torch.Tensor:
    from litespark.model import position_ids_for

    losses = engine(input_ids=batch["tokens"], position_ids=position_ids_for(batch["tokens"]),
                    attention_mask=None, labels=batch["labels"])
    mask = batch["loss_mask"].float()
    return (losses.float() * mask).sum() / mask.sum().clamp(min=1.0)


def refresh_fp8_weight_cache(engine) -> None:
    """Make the next forward re-quantise the weights.

    Megatron's TE linears cache their FP8 weights (and transposes) after the first micro-batch
    (``is_first_microbatch``), so the later micro-batches of the same step skip the casts; the cache
    must be invalidated whenever the weights change, i.e. before the first micro-batch after an
    optimizer step, as Megatron's own schedule does.  Without it every forward after step 1 would run
    on step 1's weights.  A no-op without FP8.
    """
    module = getattr(engine, "module", engine)
    if hasattr(module, "set_is_first_microbatch"):
        module.set_is_first_microbatch()


def train_step(engine, micro_batches: list[dict]) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches (DeepSpeed accumulates and steps at the
    boundary); returns the mean micro-batch loss, still on the device."""
    refresh_fp8_weight_cache(engine)
    fp32_grads = getattr(engine, "litespark_fp32_grads", None)
    total = None
    for batch in micro_batches:
        loss = _forward_loss(engine, batch)
        engine.backward(loss)
        if fp32_grads is not None:
            fp32_grads.mark()  # before the step reads the gradient norm
        engine.step()
        total = loss.detach() if total is None else total + loss.detach()
    return total / len(micro_batches)


def _all_gpus_joules(joules: float | None, device: torch.device) -> tuple[float, int]:
    """Sum of every rank's joules and how many ranks had a reading (collective)."""
    reported = torch.tensor([joules or 0.0, 1.0 if joules is not None else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(reported)
    return float(reported[0]), int(reported[1])


def _dp_mean(value: torch.Tensor) -> float:
    from megatron.core import parallel_state as ps

    value = value.detach().clone().float()
    dist.all_reduce(value, group=ps.get_data_parallel_group())
    return float(value) / ps.get_data_parallel_world_size()


def evaluate(engine, dataset, cfg: LitesparkConfig, device: torch.device) -> float:
    """Mean validation loss over ``run.eval_iters`` fixed batches (averaged over DP ranks)."""
    from megatron.core import parallel_state as ps

    from litespark.data import eval_batches

    engine.eval()
    refresh_fp8_weight_cache(engine)
    total = torch.zeros((), device=device)
    with torch.no_grad():
        for batch in eval_batches(dataset, cfg, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(), device):
            total += _forward_loss(engine, batch)
    engine.train()
    return _dp_mean(total / cfg.run.eval_iters)


def train(cfg: LitesparkConfig) -> int:
    """Run (or resume) the training job described by ``cfg``; returns the process exit code."""
    from megatron.core import parallel_state as ps
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from litespark.data import build_datasets, iterate_micro_batches
    from litespark.distributed import init_distributed
    from litespark.engine import build_engine
    from litespark.model import build_model

    if cfg.parallel.sequence_parallel:
        # Megatron's optimizer all-reduces sequence-parallel norm-weight gradients over the TP group;
        # DeepSpeed does not, and training would silently diverge across TP ranks.
        raise ConfigError("parallel.sequence_parallel is not supported by the DeepSpeed trainer yet "
                          "(norm-weight gradients would not be reduced over the TP group)")
    t_setup = time.perf_counter()
    init_distributed(cfg.parallel.tensor_parallel, cfg.run.seed, graph_safe_rng=cfg.kernels.cuda_graphs)
    setup_logging()
    energy = EnergyMeter()
    energy.interval_joules()
    world, rank = dist.get_world_size(), dist.get_rank()
    validate(cfg, world)
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    run_dir = Path(cfg.run.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        atomic_write_text(run_dir / "environment.json", json.dumps({**collect_versions(), "world_size": world,
                                                                    "tensor_parallel": cfg.parallel.tensor_parallel,
                                                                    "data_parallel": dp_size}, indent=1))
    n = count_parameters(cfg.model)
    log.info("llama %d x %d, %s parameters (no input embedding), %.3g GFLOP/token; world %d = TP %d x DP %d, ZeRO-%d, %s%s",
             cfg.model.num_layers, cfg.model.hidden_size, _human(n.without_input_embedding), flops_per_token(cfg.model) / 1e9,
             world, cfg.parallel.tensor_parallel, dp_size, cfg.parallel.zero_stage, cfg.kernels.backend,
             f", FP8 {cfg.precision.fp8_recipe}" if cfg.precision.fp8 else (", BF16" if cfg.precision.bf16 else ", FP32"))

    model = build_model(cfg)
    engine, _, scheduler = build_engine(cfg, model, world)
    device = torch.device(engine.device) if not isinstance(engine.device, torch.device) else engine.device
    eval_samples = cfg.run.eval_iters * cfg.data.micro_batch_size * dp_size if cfg.run.eval_interval else 0
    datasets = build_datasets(cfg, eval_samples=eval_samples)

    start_step = 0
    if cfg.checkpoint.resume:
        state = load_latest_checkpoint(engine, run_dir)
        if state is not None:
            start_step = state["step"]
    if start_step == 0 and cfg.checkpoint.load:
        state = load_latest_checkpoint(engine, cfg.checkpoint.load, weights_only=True)
        if state is None:
            raise ConfigError(f"checkpoint.load: no usable checkpoint under {cfg.checkpoint.load}/checkpoints")
        log.info("initialised weights from %s (its step %d); this run starts at step 0 with a fresh optimizer",
                 cfg.checkpoint.load, state["step"])
    if start_step >= cfg.run.train_iters:
        log.info("nothing to do: checkpoint step %d >= run.train_iters %d", start_step, cfg.run.train_iters)
        return 0

    stop = StopFlag()
    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    sink = MetricsSink(run_dir, enabled=rank == 0)
    tokens_per_step = cfg.data.global_batch_size * cfg.model.seq_length
    # A live bar on a terminal; in logs (batch jobs, CI) the interval lines already say where we are.
    progress = tqdm(total=cfg.run.train_iters, initial=start_step, disable=rank != 0 or not sys.stderr.isatty(),
                    unit="step", dynamic_ncols=True, mininterval=2.0)
    setup_j, setup_reporting = _all_gpus_joules(energy.interval_joules(), device)
    sink.write({"step": start_step, "split": "setup", "seconds": time.perf_counter() - t_setup, "world_size": world,
                **({"energy_j": setup_j} if setup_reporting == world else {})})
    phases = PhaseMeter(energy)
    interval_steps, loss_sum, data_wait = 0, torch.zeros((), device=device), 0.0
    last_saved, step_done = None, start_step

    def side_phase(kind: str, fn):
        """Run an evaluation or a save outside the training interval's time and energy; record it."""
        phases.pause()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, joules = phases.resume()
        total, reporting = _all_gpus_joules(joules, device)
        sink.write({"step": step_done, "split": kind, "seconds": seconds, **({"energy_j": total} if reporting == world else {})})
        return result

    def save(step: int, reason: str) -> None:
        nonlocal last_saved
        if not cfg.checkpoint.enabled:
            return
        t = time.perf_counter()
        client = {"step": step, "consumed_samples": step * cfg.data.global_batch_size, "config": to_dict(cfg)}
        path = side_phase("checkpoint", lambda: save_checkpoint(engine, run_dir, step, client, cfg.checkpoint.keep_last))
        last_saved = step
        log.info("saved checkpoint %s (%s, %.1f s)", path, reason, time.perf_counter() - t)

    with logging_redirect_tqdm(loggers=[logging.getLogger("litespark")]):
        fetch_start = time.perf_counter()
        for step, micro_batches in iterate_micro_batches(datasets.train, cfg, dp_size, dp_rank, start_step, device):
            data_wait += time.perf_counter() - fetch_start  # inside the interval: a stall is training time lost
            loss_sum += train_step(engine, micro_batches)
            step_done, interval_steps = step + 1, interval_steps + 1
            progress.update(1)
            if step_done % cfg.run.log_interval == 0 or step_done == cfg.run.train_iters:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds, joules = phases.close_interval()
                interval_j, reporting = _all_gpus_joules(joules, device)
                grad_norm = engine.get_global_grad_norm()
                record = {
                    "step": step_done, "split": "train", "loss": _dp_mean(loss_sum / interval_steps),
                    "lr": float(scheduler.get_last_lr()[0]),
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "seconds": seconds, "data_wait_s": data_wait, "tokens": interval_steps * tokens_per_step,
                    "consumed_samples": step_done * cfg.data.global_batch_size,
                    **interval_metrics(tokens=interval_steps * tokens_per_step, seconds=seconds, world_size=world,
                                       m=cfg.model, peak_tflops=peak, energy_joules_all_gpus=interval_j,
                                       gpus_reporting=reporting),
                    **_peak_memory_gib(),
                }
                sink.write(record)
                if rank == 0:
                    progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    log.info("step %d/%d loss %.4f lr %.2e grad_norm %s | %.0f tok/s/gpu %.3g TFLOP/s/gpu%s%s",
                             step_done, cfg.run.train_iters, record["loss"], record["lr"],
                             f"{record['grad_norm']:.3f}" if record["grad_norm"] is not None else "-",
                             record["tokens_per_s_per_gpu"], record["tflops_per_gpu"],
                             f" MFU {100 * record['mfu']:.1f}% (of BF16 peak)" if "mfu" in record else "",
                             f" {record['power_w_per_gpu']:.0f} W/gpu {record['joules_per_token']:.4f} J/token" if "energy_j" in record else "")
                if not math.isfinite(record["loss"]):
                    log.error("loss is %s at step %d; stopping", record["loss"], step_done)
                    return 1
                interval_steps, loss_sum, data_wait = 0, torch.zeros((), device=device), 0.0
            if cfg.run.eval_interval and step_done % cfg.run.eval_interval == 0 and datasets.valid is not None:
                valid_loss = side_phase("eval", lambda: evaluate(engine, datasets.valid, cfg, device))
                sink.write({"step": step_done, "split": "valid", "loss": valid_loss})
                log.info("step %d validation loss %.4f", step_done, valid_loss)
            if cfg.checkpoint.save_interval and step_done % cfg.checkpoint.save_interval == 0:
                save(step_done, "interval")
            if stop.agreed(device):
                if last_saved != step_done:
                    save(step_done, "preemption signal")
                log.warning("stopping at step %d on a preemption signal; resume by running the same command", step_done)
                progress.close()
                return EXIT_PREEMPTED
            fetch_start = time.perf_counter()
        progress.close()
        if last_saved != step_done:
            save(step_done, "end of training")
        log.info("done: %d steps", step_done)
        return 0


def run(cfg: LitesparkConfig) -> int:
    """:func:`train` with the process group torn down afterwards (CLI entry)."""
    from litespark.distributed import destroy_distributed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    try:
        return train(cfg)
    finally:
        destroy_distributed()
