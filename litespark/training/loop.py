"""The training loop: config -> model -> DeepSpeed engine -> data -> steps, metrics, checkpoints.

:func:`train` runs a :class:`~litespark.config.RunPlan` and reads top to bottom as the job runs: set up the processes and the run directory, build
the model, the engine and the datasets, restore the newest checkpoint, then :class:`TrainingRun`
steps until ``run.train_iters``, logging an interval every ``run.log_interval`` steps, evaluating and
saving at their intervals, and stopping cleanly on a preemption signal.  Evaluations and saves are
timed and metered apart from training, so tokens/s and joules per token count training alone.

Exit codes: 0 when ``run.train_iters`` are done, 75 (EX_TEMPFAIL) after a checkpoint taken because
of SIGTERM/SIGUSR1 (Slurm preemption: the job script requeues), 74 when a checkpoint could not be
written (disk full: not requeued), 1 on a non-finite loss, 2 for a configuration or data error (also
a run directory in use, or checkpoints that cannot be resumed).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from litespark.config import ConfigError, LitesparkConfig, RunPlan, to_dict
from litespark.config.schema import PACKED_SOURCES
from litespark.environment import collect_versions
from litespark.files import FileLock, LockHeld, atomic_write_text, hold_lock
from litespark.log import get_logger, setup_logging
from litespark.training.checkpoint import CheckpointSaver, CheckpointWriteError, remove_unfinished_saves
from litespark.training.energy import EnergyMeter, PhaseMeter
from litespark.training.metrics import (
    count_parameters,
    flops_of_documents,
    flops_per_token,
    interval_metrics,
    peak_bf16_tflops,
)
from litespark.training.metrics_log import MetricsLog
from litespark.training.profiling import StepProfiler
from litespark.training.resume import ResumePlan, check_weights_source, load_planned, load_weights, plan_resume
from litespark.training.step import dp_mean, evaluate, train_step

EXIT_PREEMPTED = 75
EXIT_NONFINITE_LOSS = 1
EXIT_WRITE_FAILED = 74
"""A checkpoint could not be written (disk full, quota): the job scripts do not requeue it."""
RUN_DIR_LOCK = "litespark.lock"
SHOWN_METRICS = ("rewards/accuracies", "rewards/margins")
"""DPO metrics the log lines show (metrics.jsonl and the report have all of them)."""
log = get_logger(__name__)


def train(plan: RunPlan) -> int:
    """Run (or resume) the training job of ``plan``; returns the process exit code."""
    from litespark.runtime.distributed import init_distributed

    cfg = plan.config
    _refuse_unsupported(cfg)
    t_setup = time.perf_counter()
    init_distributed(cfg.parallel.tensor_parallel, cfg.run.seed, graph_safe_rng=plan.cuda_graphs)
    setup_logging()
    energy = EnergyMeter()
    energy.interval_joules()  # the set-up phase's energy counts from here
    world = dist.get_world_size()
    if world != plan.world_size:
        raise ConfigError(f"the run was planned for {plan.world_size} process(es) but launched with {world}")
    _check_same_micro_batch(plan)
    lock = _lock_run_dir(cfg)
    try:
        run_dir = Path(cfg.run.run_dir)
        # Read-only until the checkpoint to start from is known to fit: a refused run touches nothing.
        resume = plan_resume(cfg, run_dir, world) if cfg.checkpoint.resume else ResumePlan()
        weights = None
        if resume.path is None and cfg.checkpoint.load:
            weights = check_weights_source(cfg, cfg.checkpoint.load)
        elif resume.path is None and cfg.sft.hf_model:
            from litespark.sft.hf_init import hf_init_run_dir

            weights = check_weights_source(cfg, hf_init_run_dir(cfg))
        sft_corpus = None
        if cfg.data.source in PACKED_SOURCES:  # before the run directory is written to: other data is refused
            from litespark.sft.prepare import prepare_sft_corpus

            sft_corpus = prepare_sft_corpus(cfg)
        _prepare_run_dir(plan)
        _log_summary(plan)
        engine, scheduler, data = _build(plan, resume.saved_data_parallel is not None, sft_corpus)
        start_step = _restore(cfg, engine, resume, weights)
        if start_step >= cfg.run.train_iters:
            log.info("nothing to do: checkpoint step %d >= run.train_iters %d", start_step, cfg.run.train_iters)
            return 0
        reference = None
        if cfg.data.source == "dpo":  # with the initial weights, before the first step changes them
            from litespark.dpo.reference import attach_reference

            reference = attach_reference(engine, data, start_step, *_dp_rank(), engine.device, weights)
        training = TrainingRun(plan, engine, scheduler, data, run_dir, energy, start_step, t_setup, reference)
        return training.run()
    finally:
        if lock is not None:
            lock.release()


def run(plan: RunPlan) -> int:
    """:func:`train` with the process group torn down afterwards (CLI entry)."""
    from litespark.runtime.distributed import destroy_distributed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    try:
        return train(plan)
    finally:
        destroy_distributed()


# ----------------------------------------------------------------------------------------------
# Set-up steps


def _refuse_unsupported(cfg: LitesparkConfig) -> None:
    """What the config allows but this trainer cannot train correctly yet."""
    if cfg.parallel.sequence_parallel:
        # Megatron's optimizer all-reduces sequence-parallel norm-weight gradients over the TP group;
        # DeepSpeed does not, and training would silently diverge across TP ranks.
        raise ConfigError(
            "parallel.sequence_parallel is not supported by the DeepSpeed trainer yet "
            "(norm-weight gradients would not be reduced over the TP group)"
        )


def _check_same_micro_batch(plan: RunPlan) -> None:
    """Every rank resolved the automatic micro-batch for its own GPU, before the process group existed;
    GPUs of different memory would pick different ones and the ranks would then hang in ZeRO's
    reductions: refuse that in one line (collective)."""
    from litespark.runtime.distributed import min_max_over_ranks

    low, high = min_max_over_ranks(plan.micro_batch_size)
    if low != high:
        raise ConfigError(
            f"data.micro_batch_size: the ranks chose different automatic micro-batches ({low} to {high}: GPUs "
            "with different memory); set data.micro_batch_size explicitly"
        )


def _lock_run_dir(cfg: LitesparkConfig) -> FileLock | None:
    """Rank 0 holds ``RUN_DIR/litespark.lock`` for the whole run, so that a second trainer on the same
    run directory is refused instead of writing every metric twice and racing the saves (collective)."""
    from litespark.runtime.distributed import all_ranks_agree

    run_dir = Path(cfg.run.run_dir)
    lock, error = None, None
    if dist.get_rank() == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = hold_lock(run_dir / RUN_DIR_LOCK, f"run.run_dir {run_dir}")
        except LockHeld as exc:
            error = f"{exc}: another training run is using it"
        except OSError as exc:
            error = f"run.run_dir: cannot write {run_dir} ({exc.strerror})"
    if not all_ranks_agree(error is None):
        raise ConfigError(error or "run.run_dir is in use or not writable (rank 0 says which)")
    return lock


def _prepare_run_dir(plan: RunPlan) -> None:
    """Record the config (as given), its plan and the environment, and remove what saves killed
    mid-way left (rank 0, holding the run directory's lock)."""
    from megatron.core import parallel_state as ps

    cfg, world = plan.config, plan.world_size
    run_dir = Path(cfg.run.run_dir)
    if dist.get_rank() == 0:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        atomic_write_text(run_dir / "plan.yaml", yaml.safe_dump(plan.to_dict(), sort_keys=False))
        atomic_write_text(
            run_dir / "environment.json",
            json.dumps(
                {
                    **collect_versions(),
                    "world_size": world,
                    "tensor_parallel": cfg.parallel.tensor_parallel,
                    "data_parallel": ps.get_data_parallel_world_size(),
                },
                indent=1,
            ),
        )
        removed = remove_unfinished_saves(run_dir)
        if removed:
            log.info(
                "removed %d unfinished checkpoint save(s) of an earlier start: %s", len(removed), ", ".join(removed)
            )


def _log_summary(plan: RunPlan) -> None:
    """One line: the model's size and FLOPs, the layout, the batch, the backend and the number format."""
    cfg = plan.config
    n = count_parameters(cfg.model).without_input_embedding
    size = f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.3f} M"
    p = cfg.precision
    numerics = f", FP8 {p.fp8_recipe}" if p.fp8 else (", BF16" if p.bf16 else ", FP32")
    log.info(
        "llama %d x %d, %s parameters (no input embedding), %.3g GFLOP/token; world %d = TP %d x DP %d, ZeRO-%d, "
        "micro-batch %d (%s) x accumulation %d, %s%s%s",
        cfg.model.num_layers,
        cfg.model.hidden_size,
        size,
        flops_per_token(cfg.model) / 1e9,
        plan.world_size,
        plan.tensor_parallel,
        plan.data_parallel,
        cfg.parallel.zero_stage,
        plan.micro_batch_size,
        plan.micro_batch_source,
        plan.gradient_accumulation_steps,
        plan.backend,
        numerics,
        ", CUDA graphs" if plan.cuda_graphs else "",
    )


def _build(plan: RunPlan, load_universal: bool = False, sft_corpus=None):
    """The model inside its DeepSpeed engine, the LR scheduler, and the training data: pretraining
    datasets of this run's sizes, or ``sft_corpus``'s examples (``data.source=sft``) or preference
    pairs (``data.source=dpo``) packed into rows."""

    from litespark.model.build import build_model
    from litespark.runtime.engine import build_engine
    from litespark.training.data import PretrainData, build_datasets, check_token_ids

    cfg = plan.config
    engine, _, scheduler = build_engine(plan, build_model(plan), load_universal=load_universal)
    if cfg.data.source == "sft":
        from litespark.sft.batches import SFTData

        return engine, scheduler, SFTData(sft_corpus, plan)
    if cfg.data.source == "dpo":
        from litespark.dpo.batches import DPOData

        return engine, scheduler, DPOData(sft_corpus, plan)
    eval_samples = cfg.run.eval_iters * cfg.data.global_batch_size if cfg.run.eval_interval else 0
    datasets = build_datasets(cfg, eval_samples=eval_samples)
    check_token_ids(cfg)
    return engine, scheduler, PretrainData(datasets, plan)


def _dp_rank() -> tuple[int, int]:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()


def _restore(cfg: LitesparkConfig, engine, plan: ResumePlan, weights: Path | None) -> int:
    """Resume from ``plan``'s checkpoint, or initialise the weights from ``checkpoint.load``'s
    (``weights``); returns the step training starts at."""
    if plan.path is not None:
        return int(load_planned(engine, plan)["step"])
    if weights is not None:
        state = load_weights(engine, weights)
        log.info(
            "initialised weights from %s (its step %d); this run starts at step 0 with a fresh optimizer",
            weights,
            state["step"],
        )
    return 0


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class Agreed:
    """What all ranks agreed on at one step (MAX over ranks)."""

    stop: bool
    """A rank got SIGTERM/SIGUSR1."""
    writing: bool
    """A rank was still writing the save in flight in the background."""
    save_step: int | None
    """The step of the save in flight then, if any."""


class StepFlags:
    """Per step, what every rank must agree on: a stop signal (SIGTERM/SIGUSR1) and whether the save
    in flight is written everywhere.  One MAX all-reduce per step, read one step later, so that the
    host never waits for the GPU to drain: the CPU stays at most one step ahead and the GPU never
    idles for the check.  Every rank reads the same step's result, so they act at the same step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        self._posted: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def exchange(self, device: torch.device, writing: bool, save_step: int | None) -> Agreed | None:
        """Post this step's flags; return what the ranks agreed on at the previous call (None at the first)."""
        flags = torch.tensor(
            [1 if self.signal else 0, 1 if writing else 0, -1 if save_step is None else save_step],
            dtype=torch.int64,
            device=device,
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        event = None
        if device.type == "cuda":
            host = torch.empty(3, dtype=torch.int64, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = flags
        previous, self._posted = self._posted, (host, event)
        if previous is None:
            return None
        values, done = previous
        if done is not None:
            done.synchronize()  # the previous step's work: the GPU is busy with this one meanwhile
        stop, still_writing, step = values.tolist()
        return Agreed(bool(stop), bool(still_writing), None if step < 0 else int(step))


class TrainingRun:
    """The steps of one training job, from its start step to ``run.train_iters`` or a stop signal.

    Created once the engine is built and the checkpoint restored: it installs the stop-signal
    handlers, opens the metrics log, records the set-up phase and starts the first interval.
    """

    def __init__(
        self,
        plan: RunPlan,
        engine,
        scheduler,
        data,
        run_dir: Path,
        energy: EnergyMeter,
        start_step: int,
        t_setup: float,
        reference: dict | None = None,
    ):
        from megatron.core import parallel_state as ps
        from tqdm import tqdm

        cfg = plan.config
        self.plan, self.cfg, self.engine, self.scheduler = plan, cfg, engine, scheduler
        self.data, self.run_dir = data, run_dir
        self.device = engine.device if isinstance(engine.device, torch.device) else torch.device(engine.device)
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.dp_size, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        self.start_step = self.step_done = start_step
        self.last_saved: int | None = None
        self.saver = CheckpointSaver(
            engine, run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.async_save, plan.overlap_copy
        )
        self.flags = StepFlags()
        self.profiler = StepProfiler(
            cfg.run.profile_start, cfg.run.profile_steps, start_step, run_dir, self.rank, self.device
        )
        self.peak = peak_bf16_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        self.metrics = MetricsLog(run_dir, enabled=self.rank == 0)
        # A live bar on a terminal; in logs (batch jobs, CI) the interval lines already say where we are.
        self.progress = tqdm(
            total=cfg.run.train_iters,
            initial=start_step,
            disable=self.rank != 0 or not sys.stderr.isatty(),
            unit="step",
            dynamic_ncols=True,
            mininterval=2.0,
        )
        # The reference pass (DPO) is a record of its own; its energy stays in the set-up's.
        reference_s = reference["seconds"] if reference else 0.0
        self._write_phase("setup", time.perf_counter() - t_setup - reference_s, energy.interval_joules())
        if reference is not None:
            self.metrics.write(reference)
        self.phases = PhaseMeter(energy)  # the first training interval starts now

    def run(self) -> int:
        """Train from the start step; returns the exit code.  A save that failed (disk full, quota)
        ends the run with one line and exit 74, the previous checkpoint intact; the job scripts do not
        requeue that code, since a rerun would fail the same way."""
        try:
            return self._steps()
        except CheckpointWriteError as exc:
            self.progress.close()
            if self.rank == 0:
                log.error("%s; stopping at step %d (exit %d)", exc, self.step_done, EXIT_WRITE_FAILED)
            return EXIT_WRITE_FAILED
        finally:
            self.saver.close()

    def _steps(self) -> int:
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, device = self.cfg, self.device
        interval_steps, loss_sum, data_wait = 0, torch.zeros((), device=device), 0.0
        with logging_redirect_tqdm(loggers=[logging.getLogger("litespark")]):
            self.profiler.after_step(self.start_step)
            fetch_start = time.perf_counter()
            for step, micro_batches in self.data.train_batches(self.start_step, self.dp_size, self.dp_rank, device):
                data_wait += time.perf_counter() - fetch_start  # inside the interval: a stall is training time lost
                loss_sum += train_step(self.engine, micro_batches, before_update=self.saver.wait_for_copy)
                self.step_done, interval_steps = step + 1, interval_steps + 1
                first = step == self.start_step
                if first and cfg.checkpoint.enabled:
                    # Once the optimizer's state exists (Adam creates its moments at the first step).
                    self.saver.prepare()
                self.progress.update(1)
                # The first step of each start is an interval of its own, marked warm-up: it pays once
                # for the kernels' first launches, FP8 state and the checkpoint buffers.
                if first or self.step_done % cfg.run.log_interval == 0 or self.step_done == cfg.run.train_iters:
                    loss = self._log_interval(interval_steps, loss_sum, data_wait, warmup=first)
                    if not math.isfinite(loss):
                        log.error("loss is %s at step %d; stopping", loss, self.step_done)
                        if self.saver.pending is not None:
                            self._commit()  # a save started earlier is finished, as a synchronous one would be
                        return EXIT_NONFINITE_LOSS
                    interval_steps, loss_sum, data_wait = 0, torch.zeros((), device=device), 0.0
                if cfg.run.eval_interval and self.step_done % cfg.run.eval_interval == 0 and self.data.has_valid:
                    self._evaluate()
                if cfg.checkpoint.save_interval and self.step_done % cfg.checkpoint.save_interval == 0:
                    self._save("interval")
                pending = self.saver.pending
                agreed = self.flags.exchange(
                    device, pending is not None and not pending.is_written(), pending.step if pending else None
                )
                if pending is not None and agreed and agreed.save_step == pending.step and not agreed.writing:
                    self._commit()  # every rank's background write is done
                if agreed and agreed.stop:
                    self._save_now("preemption signal")
                    log.warning(
                        "stopping at step %d on a preemption signal; resume by running the same command", self.step_done
                    )
                    self.progress.close()
                    return EXIT_PREEMPTED
                tokens = sum(_real_tokens(b) for b in micro_batches)
                if self.profiler.ends_at(self.step_done):
                    self.phases.pause()  # writing the profile is not training time
                    self.profiler.after_step(self.step_done, tokens)
                    self.phases.resume()
                else:
                    self.profiler.after_step(self.step_done, tokens)
                fetch_start = time.perf_counter()
            self.progress.close()
            self._save_now("end of training")
            log.info("done: %d steps", self.step_done)
            return 0

    def _log_interval(self, interval_steps: int, loss_sum: torch.Tensor, data_wait: float, warmup: bool) -> float:
        """Close the training interval: write its metrics record and log line; returns its mean loss.
        A ``warmup`` interval (the first step of a start) is marked so: the report counts its time
        with the start-up."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds, joules = self.phases.close_interval()
        interval_j, reporting = self._all_gpus_joules(joules)
        grad_norm = self.engine.get_global_grad_norm()
        counts = [self.data.step_tokens(s) for s in range(self.step_done - interval_steps, self.step_done)]
        tokens = sum(c.real for c in counts)
        record = {
            "step": self.step_done,
            "split": "train",
            "loss": dp_mean(loss_sum / interval_steps),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "seconds": seconds,
            "data_wait_s": data_wait,
            "tokens": tokens,
            "consumed_samples": self.step_done * cfg.data.global_batch_size,
            **self.data.interval_record(range(self.step_done - interval_steps, self.step_done), counts),
            **interval_metrics(
                tokens=tokens,
                seconds=seconds,
                world_size=self.world,
                m=cfg.model,
                peak_tflops=self.peak,
                energy_joules_all_gpus=interval_j,
                gpus_reporting=reporting,
                flops=flops_of_documents(cfg.model, tokens, sum(c.attention_pairs for c in counts)),
            ),
            **_peak_memory_gib(),
        }
        if warmup:
            record["warmup"] = True
        self.metrics.write(record)
        if self.rank == 0:
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            log.info(
                "step %d/%d loss %.4f%s lr %.2e grad_norm %s | %.0f tok/s/gpu %.3g TFLOP/s/gpu%s%s%s",
                self.step_done,
                cfg.run.train_iters,
                record["loss"],
                "".join(f" {k} {record[k]:.4f}" for k in SHOWN_METRICS if k in record),
                record["lr"],
                f"{record['grad_norm']:.3f}" if record["grad_norm"] is not None else "-",
                record["tokens_per_s_per_gpu"],
                record["tflops_per_gpu"],
                f" MFU {100 * record['mfu']:.1f}% (of BF16 peak)" if "mfu" in record else "",
                f" {record['power_w_per_gpu']:.0f} W/gpu {record['joules_per_token']:.4f} J/token"
                if "energy_j" in record
                else "",
                f" (first step: warm-up, {seconds:.1f} s, counted as start-up)" if warmup else "",
            )
        return record["loss"]

    def _evaluate(self) -> None:
        valid_loss = self._side_phase(
            "eval",
            lambda: evaluate(self.engine, self.data.eval_batches(self.dp_size, self.dp_rank, self.device), self.device),
        )
        extra = self.data.eval_record()
        self.metrics.write({"step": self.step_done, "split": "valid", "loss": valid_loss, **extra})
        log.info(
            "step %d validation loss %.4f%s",
            self.step_done,
            valid_loss,
            "".join(f" {k} {v:.4f}" for k, v in extra.items() if k in SHOWN_METRICS),
        )

    def _save(self, reason: str, final: bool = False) -> None:
        """Start a checkpoint of the current step: synchronous, or copied to host memory and written in
        the background (committed by a later :meth:`_commit`).  A save still in flight is committed
        first: at most one at a time.  ``final``: the save that ends the job (its records say so)."""
        cfg = self.cfg
        if not cfg.checkpoint.enabled:
            return
        if self.saver.pending is not None:
            self._commit(final)
        step = self.step_done
        client = {
            "step": step,
            "consumed_samples": step * cfg.data.global_batch_size,
            "config": to_dict(cfg),
            "plan": self.plan.to_dict(),
        }
        if not cfg.checkpoint.async_save:

            def write_and_commit() -> None:
                self.saver.start(step, client, reason)
                self._commit_now()

            self._side_phase("checkpoint", write_and_commit, final)
            self.last_saved = step
            return
        pending = self._side_phase("checkpoint", lambda: self.saver.start(step, client, reason), final)
        self.last_saved = step
        copying = (
            f"copy to host memory issued in {pending.copy_seconds:.2f} s, done during the next step"
            if pending.copied is not None and not final
            else f"state copied to host memory in {pending.copy_seconds:.2f} s"
        )
        log.info("checkpoint of step %d (%s): %s; writing in the background", step, reason, copying)

    def _save_now(self, reason: str) -> None:
        """Make sure the current step is saved and committed before the job ends (end of training,
        preemption); its checkpoint records are marked ``final``: once per job, like the start-up."""
        if self.last_saved != self.step_done:
            self._save(reason, final=True)
        if self.saver.pending is not None:
            self._commit(final=True)

    def _commit(self, final: bool = False) -> None:
        """Commit the save in flight, waiting for its background write when it is not done yet (the
        wait counts as checkpoint time: training is blocked)."""
        self._side_phase("checkpoint", self._commit_now, final)

    def _commit_now(self) -> None:
        pending = self.saver.pending
        assert pending is not None
        path = self.saver.commit()
        log.info(
            "saved checkpoint %s (%s, %.1f s from start to commit%s)",
            path,
            pending.reason,
            time.perf_counter() - pending.started,
            f"; the next update waited {pending.update_wait_seconds:.2f} s for the copy"
            if pending.update_wait_seconds
            else "",
        )

    def _side_phase(self, kind: str, fn: Callable, final: bool = False):
        """Run an evaluation or a save outside the training interval's time and energy; record it."""
        self.phases.pause()
        result = fn()
        if self.device.type == "cuda":
            # The training stream only: a checkpoint's copies run on their own stream, during the next step.
            torch.cuda.current_stream(self.device).synchronize()
        seconds, joules = self.phases.resume()
        self._write_phase(kind, seconds, joules, final)
        return result

    def _write_phase(self, kind: str, seconds: float, joules: float | None, final: bool = False) -> None:
        """A set-up, evaluation or checkpoint record, with every GPU's energy when all of them reported."""
        total, reporting = self._all_gpus_joules(joules)
        record: dict[str, Any] = {"step": self.step_done, "split": kind, "seconds": seconds}
        if kind == "setup":
            record["world_size"] = self.world
        if final:
            record["final"] = True
        if reporting == self.world:
            record["energy_j"] = total
        self.metrics.write(record)

    def _all_gpus_joules(self, joules: float | None) -> tuple[float, int]:
        """Sum of every rank's joules and how many ranks had a reading (collective)."""
        reported = torch.tensor(
            [joules or 0.0, 1.0 if joules is not None else 0.0], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(reported)
        return float(reported[0]), int(reported[1])


def _real_tokens(batch: dict) -> int:
    """A micro-batch's tokens without padding (a packed row counts them; a pretraining one is full)."""
    return int(batch.get("real_tokens", batch["tokens"].numel()))


def _peak_memory_gib() -> dict:
    if torch.cuda.is_available():
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
