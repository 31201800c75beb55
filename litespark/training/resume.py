"""Which checkpoint a run starts from, whether it fits the run, and loading it.

:func:`plan_resume` picks the newest checkpoint of the run directory that is complete and whole (its
files' content digests are read back, spread over all ranks, before anything loads them), passing
over damaged ones with one line each, and checks that it fits this run: the same model (every field
that changes the function computed), the same tensor-parallel size.  A different data-parallel size
(a job requeued on fewer or more nodes) is resumed by resharding: DeepSpeed's universal checkpoint
conversion (``ds_to_universal``) turns the checkpoint into one file per parameter, which any
data-parallel size loads (ZeRO-1 and 2).  Everything that does not fit is refused with one line and
nothing on disk is touched; so is a run directory whose checkpoints are all damaged: a run is never
silently restarted from step 0.

:func:`check_weights_source` does the same checks for ``checkpoint.load`` (the weights of another
run or of an imported Hugging Face model): its model must compute the same function as this run's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from litespark.config import ConfigError, LitesparkConfig, ModelConfig
from litespark.log import get_logger
from litespark.runtime.distributed import broadcast_from_rank0, first_reason
from litespark.training.checkpoint import set_rng_state
from litespark.training.checkpoint_files import (
    candidates,
    check_complete,
    check_digests,
    checkpoint_dir,
    file_records,
    read_manifest,
    shape_mismatch,
)

log = get_logger(__name__)

MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "make_vocab_size_divisible_by",
    "rotary_base",
    "rope_scaling_factor",
    "norm_epsilon",
    "tie_embeddings",
)
"""The model fields that change the function a checkpoint's weights compute (shape, RoPE base and
scaling, norm epsilon, tied embeddings, vocabulary and its padding).  ``seq_length`` and
``init_method_std`` do not."""

UNIVERSAL = ".universal-"
"""Prefix of the directory a resharded checkpoint is converted into (removed once it is loaded)."""


@dataclass
class ResumePlan:
    """What :func:`plan_resume` found: the checkpoint to load (None: start at step 0)."""

    path: Path | None = None
    step: int = 0
    saved_data_parallel: int | None = None
    """The data-parallel size that wrote the checkpoint, when it differs from this run's (reshard)."""
    passed_over: list[str] = field(default_factory=list)
    """``step_N: why`` for each newer checkpoint that was damaged or unfinished."""


def saved_config(path: Path, manifest: dict) -> dict:
    """The config of the run that wrote checkpoint ``path``: from its manifest, or from the model
    states (checkpoints written before the manifest recorded it, and imported ones)."""
    if isinstance(manifest.get("config"), dict):
        return manifest["config"]
    states = sorted(path.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise ConfigError(f"{path}: no model states file; is this a Litespark checkpoint?")
    state = torch.load(states[0], map_location="cpu", mmap=True, weights_only=False)
    if not isinstance(state.get("config"), dict):
        raise ConfigError(f"{path}: its model states record no config; is this a Litespark checkpoint?")
    return state["config"]


def model_mismatch(saved_model: dict, model: ModelConfig) -> str | None:
    """The first field of :data:`MODEL_FIELDS` on which ``saved_model`` and ``model`` differ, as a phrase."""
    for name in MODEL_FIELDS:
        theirs, ours = saved_model.get(name), getattr(model, name)
        if theirs != ours:
            return f"model.{name} is {theirs!r} there and {ours!r} in this run"
    return None


def _whole(path: Path) -> str | None:
    """None when checkpoint ``path`` is complete and every file has its recorded content digest; the
    files are read once in all, split over the ranks (collective)."""
    reason = first_reason(check_complete(path))
    if reason is not None:
        return reason
    manifest = read_manifest(path)
    names = sorted(file_records(manifest)) if manifest is not None else []
    mine = names[dist.get_rank() :: dist.get_world_size()]
    return first_reason(check_digests(path, mine))


def _newest_whole(
    root_run_dir: str | Path, what: str, whole: Callable[[Path], str | None] = _whole
) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root_run_dir`` that ``whole`` accepts, and the ``step_N: why`` of
    each newer one it does not; logs one line for each of those (rank 0)."""
    passed_over: list[str] = []
    for path in candidates(root_run_dir):
        reason = whole(path)
        if reason is None:
            return path, passed_over
        passed_over.append(f"{path.name}: {reason}")
        if not dist.is_initialized() or dist.get_rank() == 0:
            log.warning("%s: checkpoint %s cannot be used (%s); trying an older one", what, path, reason)
    return None, passed_over


def plan_resume(
    cfg: LitesparkConfig, run_dir: str | Path, world_size: int, whole: Callable[[Path], str | None] = _whole
) -> ResumePlan:
    """The checkpoint of ``run_dir`` this run resumes from, checked against the run.  Raises
    :class:`ConfigError` when checkpoints exist and none can be used, or the newest whole one does not
    fit this run.  ``whole`` decides which checkpoints can be used: by default every file's content
    digest, read back over all ranks (collective); ``--preflight``, one process, checks only that the
    files are complete (:func:`~litespark.training.checkpoint_files.check_complete`)."""
    path, passed_over = _newest_whole(run_dir, "checkpoint.resume", whole)
    if path is None:
        if passed_over:
            raise ConfigError(
                f"checkpoint.resume: none of the {len(passed_over)} checkpoints under {checkpoint_dir(run_dir)} "
                f"can be used ({'; '.join(passed_over)}); nothing was changed: move them away to start over"
            )
        return ResumePlan()
    manifest = read_manifest(path) or {}
    saved = saved_config(path, manifest)
    mismatch = model_mismatch(saved.get("model", {}), cfg.model)
    if mismatch:
        raise ConfigError(
            f"checkpoint.resume: {path} was written by another model: {mismatch}; resume with the model "
            "settings it was written with, or use a new run.run_dir"
        )
    saved_tp = manifest.get("tensor_parallel", saved.get("parallel", {}).get("tensor_parallel", 1))
    tp = cfg.parallel.tensor_parallel
    if saved_tp != tp:
        raise ConfigError(
            f"checkpoint.resume: {path} was written with parallel.tensor_parallel={saved_tp} and this run has "
            f"{tp}: resume with tensor_parallel={saved_tp}, or start a new run from its weights "
            f"(python -m litespark.convert to-hf, then from-hf --tp {tp}, then --set checkpoint.load=...)"
        )
    saved_dp = manifest.get("data_parallel", manifest.get("world_size", world_size) // saved_tp)
    dp = world_size // tp
    plan = ResumePlan(path, int(manifest.get("step", 0)), None, passed_over)
    if saved_dp != dp:
        stages = {cfg.parallel.zero_stage, manifest.get("zero_stage", saved.get("parallel", {}).get("zero_stage", 1))}
        if not stages <= {1, 2}:
            raise ConfigError(
                f"checkpoint.resume: {path} was written with data-parallel size {saved_dp} and this run has {dp}; "
                "ZeRO-3 checkpoints resume only on the data-parallel size that wrote them (ZeRO-1 and 2 are resharded)"
            )
        plan.saved_data_parallel = saved_dp
    return plan


def check_weights_source(cfg: LitesparkConfig, source_run_dir: str | Path) -> Path:
    """The checkpoint ``checkpoint.load`` takes weights from: the newest whole one of ``source_run_dir``,
    whose model must compute the same function as this run's (collective)."""
    path, passed_over = _newest_whole(source_run_dir, "checkpoint.load")
    if path is None:
        detail = f" ({'; '.join(passed_over)})" if passed_over else ""
        raise ConfigError(f"checkpoint.load: no usable checkpoint under {checkpoint_dir(source_run_dir)}{detail}")
    saved = saved_config(path, read_manifest(path) or {})
    mismatch = model_mismatch(saved.get("model", {}), cfg.model)
    if mismatch:
        raise ConfigError(
            f"checkpoint.load: {path} holds another model: {mismatch}; set this run's model.* to match "
            f"(an imported model's settings are in {Path(source_run_dir) / 'config.yaml'} when it has one)"
        )
    return path


# ----------------------------------------------------------------------------------------------
# Resharding through DeepSpeed's universal checkpoint


def universal_dir(path: Path) -> Path:
    return path.parent / f"{UNIVERSAL}{path.name}"


def convert_to_universal(path: Path) -> Path:
    """Convert checkpoint ``path`` into DeepSpeed's universal layout beside it (rank 0 converts, the
    others wait); returns the directory.  Written under a temporary name and renamed when complete."""
    out = universal_dir(path)
    error = None
    if dist.get_rank() == 0 and not out.is_dir():
        try:
            _convert(path, out)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    error = broadcast_from_rank0(error)
    if error is not None:
        raise ConfigError(f"checkpoint.resume: could not reshard {path} for the new data-parallel size ({error})")
    return out


def _convert(path: Path, out: Path) -> None:
    """``ds_to_universal`` on a view of ``path`` whose model states omit the ``None`` entries that
    Megatron's modules without TE state leave (the converter cannot hold them); the original model
    states go into the result, which DeepSpeed loads with the module strictly."""
    from deepspeed.checkpoint import ds_to_universal

    tmp_in = Path(tempfile.mkdtemp(prefix=".universal-input-", dir=path.parent))
    tmp_out = path.parent / f"{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp_out, ignore_errors=True)
    try:
        for f in path.iterdir():
            if f.name.startswith("mp_rank_") and f.name.endswith("_model_states.pt"):
                state = torch.load(f, map_location="cpu", weights_only=False)
                state["module"] = {k: v for k, v in state["module"].items() if v is not None}
                torch.save(state, tmp_in / f.name)
            elif f.name.endswith("_optim_states.pt"):
                os.symlink(f.resolve(), tmp_in / f.name)
        args = argparse.Namespace(
            input_folder=str(tmp_in),
            output_folder=str(tmp_out),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            ds_to_universal.main(args)
        log.debug("ds_to_universal printed:\n%s", printed.getvalue().rstrip())
        for f in path.glob("mp_rank_*_model_states.pt"):
            shutil.copyfile(f, tmp_out / f.name)
        os.replace(tmp_out, out)
    finally:
        shutil.rmtree(tmp_in, ignore_errors=True)
        shutil.rmtree(tmp_out, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Loading


def load_planned(engine, plan: ResumePlan) -> dict:
    """Load ``plan``'s checkpoint into ``engine`` (built with ``load_universal`` when resharding);
    returns its client state (collective)."""
    from litespark.runtime.distributed import all_ranks_agree

    assert plan.path is not None
    _refuse_other_optimizer(engine, plan.path)
    source = convert_to_universal(plan.path) if plan.saved_data_parallel is not None else plan.path
    error = None
    try:
        load_path, client_state = engine.load_checkpoint(str(source.parent), tag=source.name)
        if load_path is None:
            error = "DeepSpeed found nothing to load"
    except Exception as exc:
        client_state, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if not all_ranks_agree(error is None):
        raise ConfigError(f"checkpoint.resume: {plan.path} could not be loaded ({error or 'on another rank'})")
    if plan.saved_data_parallel is not None:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(source, ignore_errors=True)  # derived from the checkpoint, which stays
        log.info(
            "resumed from %s (step %d), resharded from data-parallel size %d; the RNG states start from the seed",
            plan.path,
            plan.step,
            plan.saved_data_parallel,
        )
    else:
        rng = plan.path / f"rng_rank{dist.get_rank()}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        log.info("resumed from %s (step %d)", plan.path, plan.step)
    return client_state


def load_weights(engine, path: Path) -> dict:
    """Load only the model weights of checkpoint ``path`` into ``engine`` (``checkpoint.load``)."""
    from litespark.runtime.distributed import all_ranks_agree

    mismatch = _weights_mismatch(engine, path)
    if not all_ranks_agree(mismatch is None):
        raise ConfigError(f"checkpoint.load: {mismatch or 'incompatible weights on another rank'}")
    error = None
    try:
        load_path, client_state = engine.load_checkpoint(
            str(path.parent),
            tag=path.name,
            load_module_only=True,
            load_optimizer_states=False,
            load_lr_scheduler_states=False,
            load_module_strict=False,
        )
        if load_path is None:
            error = "DeepSpeed found nothing to load"
    except Exception as exc:
        client_state, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if not all_ranks_agree(error is None):
        raise ConfigError(f"checkpoint.load: {path} could not be loaded ({error or 'on another rank'})")
    return client_state


def _weights_mismatch(engine, path: Path) -> str | None:
    """Why the weights in ``path`` cannot go into ``engine.module`` (another model shape or TP size), or
    None.  TE's ``_extra_state`` (FP8 metadata) is not required: checkpoints imported from Hugging Face
    have none."""
    from megatron.core import parallel_state as ps

    f = path / f"mp_rank_{ps.get_tensor_model_parallel_rank():02d}_model_states.pt"
    if not f.is_file():
        return None  # ZeRO-3 layout: DeepSpeed consolidates and checks
    theirs = {
        k: tuple(v.shape)
        for k, v in torch.load(f, map_location="cpu", mmap=True, weights_only=False)["module"].items()
        if not k.endswith("_extra_state")
    }
    ours = {k: tuple(v.shape) for k, v in engine.module.state_dict().items() if not k.endswith("_extra_state")}
    reason = shape_mismatch(theirs, ours)
    return f"{path}: {reason} (another model shape or TP size?)" if reason else None


def _refuse_other_optimizer(engine, path: Path) -> None:
    """Refuse optimizer state of another DeepSpeed optimizer class (ZeRO-1 is ``BF16_Optimizer`` with
    ``precision.fp32_grad_accumulation``, ``DeepSpeedZeroOptimizer`` without; their states differ) or
    another number of parameter groups (``parallel.zero_sub_group_size``).  What older manifests did
    not record is not checked."""
    manifest = read_manifest(path) or {}
    saved_class, our_class = manifest.get("optimizer"), type(engine.optimizer).__name__
    if saved_class is not None and saved_class != our_class:
        raise ConfigError(
            f"checkpoint.resume: {path}: its optimizer state is {saved_class}'s, this run uses {our_class} "
            "(precision.fp32_grad_accumulation differs from the run that saved it)"
        )
    saved = manifest.get("optimizer_param_groups")
    ours = len(engine.optimizer.param_groups)
    if saved is not None and saved != ours:
        raise ConfigError(
            f"checkpoint.resume: {path}: its optimizer state has {saved} parameter groups, this run's optimizer "
            f"{ours} (parallel.zero_sub_group_size differs from the run that saved it)"
        )
