"""Atomic DeepSpeed checkpoints with a ``latest`` pointer and fallback past a bad one.

Layout under ``RUN_DIR/checkpoints``::

    step_00000100/        DeepSpeed model/optimizer/scheduler files, rng_rank<R>.pt, litespark.json
    latest                the name of the newest complete checkpoint

A save writes into ``.incomplete-step_N`` (every rank), then rank 0 writes ``litespark.json`` (the
manifest: step, consumed samples, every file with its size), renames the directory to ``step_N`` and
rewrites ``latest`` through a temporary file.  Nothing existing is touched before the new checkpoint
is complete, so a crash mid-save leaves the previous checkpoint intact.  On resume a checkpoint whose
manifest is missing or whose files are missing or of the wrong size, or that fails to load, is
reported on one line and the next older one is used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from litespark.files import atomic_write_text
from litespark.log import get_logger

MANIFEST = "litespark.json"
LATEST = "latest"
_PREFIX, _INCOMPLETE = "step_", ".incomplete-"

log = get_logger(__name__)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state_all()
        state["megatron_cuda_tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state_all(state["cuda"])
        get_cuda_rng_tracker().set_states(state["megatron_cuda_tracker"])


def save_checkpoint(engine, run_dir: str | Path, step: int, client_state: dict, keep_last: int) -> Path:
    """Save a complete checkpoint of ``engine`` after optimizer step ``step`` (all ranks call this)."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tag = tag_for(step)
    tmp_tag = _INCOMPLETE + tag
    rank = dist.get_rank()
    if rank == 0 and (root / tmp_tag).exists():
        shutil.rmtree(root / tmp_tag)  # leftover of a save that crashed
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state=client_state, save_latest=False)
    rng_path = root / tmp_tag / f"rng_rank{rank}.pt"
    torch.save(_rng_state(), rng_path.with_suffix(".tmp"))
    os.replace(rng_path.with_suffix(".tmp"), rng_path)
    dist.barrier()
    final = root / tag
    if rank == 0:
        files = {p.name: p.stat().st_size for p in sorted((root / tmp_tag).iterdir()) if p.is_file()}
        manifest = {
            "step": step,
            "world_size": dist.get_world_size(),
            "files": files,
            "optimizer_param_groups": len(engine.optimizer.param_groups),
            "optimizer": type(engine.optimizer).__name__,
            **{k: v for k, v in client_state.items() if k != "config"},
        }
        atomic_write_text(root / tmp_tag / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists():  # re-saving a step (e.g. after a resume): replace only once complete
            stale = root / (_INCOMPLETE + "old-" + tag)
            os.replace(final, stale)
            os.replace(root / tmp_tag, final)
            shutil.rmtree(stale)
        else:
            os.replace(root / tmp_tag, final)
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep_last)
    dist.barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.glob(_PREFIX + "*") if (p / MANIFEST).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def validate_checkpoint(path: Path) -> str | None:
    """None when ``path`` is a complete checkpoint, else the reason it is not."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (incomplete save)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, manifest says {size}"
    return None


def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints to try, best first: the ``latest`` pointer, then every step directory, newest first."""
    root = checkpoint_dir(run_dir)
    found = sorted(root.glob(_PREFIX + "*"), reverse=True)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        found = [named] + [p for p in found if p != named]
    return found


def _all_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (the flag lives on the GPU under NCCL, which cannot reduce CPU tensors)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def shape_mismatch(found: dict[str, tuple[int, ...]], needed: dict[str, tuple[int, ...]]) -> str | None:
    """The first missing, reshaped or unexpected tensor of ``found`` against ``needed`` (name -> shape),
    as a phrase for an error message, or None when they agree."""
    for name, shape in needed.items():
        if name not in found:
            return f"tensor {name} is missing"
        if tuple(found[name]) != tuple(shape):
            return f"{name} has shape {tuple(found[name])}, this run's model needs {tuple(shape)}"
    extra = sorted(set(found) - set(needed))
    return f"unexpected tensor {extra[0]}" if extra else None


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


def _optimizer_mismatch(engine, path: Path) -> str | None:
    """Why the optimizer state in ``path`` cannot go into ``engine``'s optimizer, or None: another
    DeepSpeed optimizer class (ZeRO-1 is ``BF16_Optimizer`` with ``precision.fp32_grad_accumulation``,
    ``DeepSpeedZeroOptimizer`` without; their states differ) or another number of parameter groups
    (``parallel.zero_sub_group_size``).  What older manifests did not record is not checked."""
    manifest = json.loads((path / MANIFEST).read_text())
    saved_class, our_class = manifest.get("optimizer"), type(engine.optimizer).__name__
    if saved_class is not None and saved_class != our_class:
        return (
            f"{path}: its optimizer state is {saved_class}'s, this run uses {our_class} "
            "(precision.fp32_grad_accumulation differs from the run that saved it)"
        )
    saved = manifest.get("optimizer_param_groups")
    ours = len(engine.optimizer.param_groups)
    if saved is None or saved == ours:
        return None
    return (
        f"{path}: its optimizer state has {saved} parameter groups, this run's optimizer {ours} "
        "(parallel.zero_sub_group_size differs from the run that saved it)"
    )


def load_latest_checkpoint(engine, run_dir: str | Path, weights_only: bool = False) -> dict | None:
    """Load the newest usable checkpoint into ``engine``; returns its client state, or None if none.

    ``weights_only`` loads the model alone (a new run initialised from another run's weights: its own
    optimizer, LR schedule and RNG start fresh).  All ranks call this and agree on the checkpoint (a
    failure on any rank moves everyone on).
    """
    from litespark.config import ConfigError

    for path in candidates(run_dir):
        reason = validate_checkpoint(path)
        if not _all_ok(reason is None):
            log.warning("checkpoint %s unusable (%s); trying an older one", path.name, reason or "bad on another rank")
            continue
        if weights_only:
            mismatch = _weights_mismatch(engine, path)
            if not _all_ok(mismatch is None):
                raise ConfigError(f"checkpoint.load: {mismatch or 'incompatible weights on another rank'}")
        else:
            mismatch = _optimizer_mismatch(engine, path)
            if not _all_ok(mismatch is None):
                raise ConfigError(f"checkpoint.resume: {mismatch or 'incompatible optimizer state on another rank'}")
        try:
            load_path, client_state = engine.load_checkpoint(
                str(path.parent),
                tag=path.name,
                load_module_only=weights_only,
                load_optimizer_states=not weights_only,
                load_lr_scheduler_states=not weights_only,
                load_module_strict=not weights_only,
            )
            error = None if load_path is not None else "DeepSpeed found nothing to load"
        except Exception as exc:
            client_state, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if not _all_ok(error is None):
            log.warning("checkpoint %s failed to load (%s); trying an older one", path.name, error or "on another rank")
            continue
        rng = path / f"rng_rank{dist.get_rank()}.pt"
        if rng.is_file() and not weights_only:
            _set_rng_state(torch.load(rng, weights_only=False))
        if not weights_only:
            log.info("resumed from %s (step %d)", path, client_state["step"])
        return client_state
    return None
