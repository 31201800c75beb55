"""Saving and loading DeepSpeed checkpoints so that a crash, a full disk or a damaged file never costs
more than the last checkpoint.

A save writes into ``.incomplete-step_N`` on every rank, each file hashed as it is written (DeepSpeed's
files through :class:`HashingCheckpointEngine`, the RNG states through
:func:`~litespark.training.checkpoint_files.save_hashed`).  A write that fails (a full disk, a quota)
is recorded instead of raised, so that every rank reaches the same point; then all ranks agree, and
on failure the unfinished directory is removed and :class:`CheckpointWriteError` names the
filesystem, what is free and what the checkpoint needs.  On success rank 0 writes the manifest,
renames the directory to ``step_N``, rewrites ``latest`` and prunes: a checkpoint is deleted only
when ``checkpoint.keep_last`` newer ones are complete.  Nothing existing is touched before the new
checkpoint is complete.  Which checkpoint to load, and whether it fits this run, is
:mod:`litespark.training.resume`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch
import torch.distributed as dist

from litespark.files import NO_SPACE, atomic_write_text, describe_write_error, write_error_in
from litespark.log import get_logger
from litespark.runtime.distributed import first_reason, gather_to_rank0
from litespark.training.checkpoint_files import (
    INCOMPLETE,
    LATEST,
    MANIFEST,
    PREFIX,
    FileRecord,
    HashingWriter,
    check_complete,
    checkpoint_dir,
    file_records,
    read_manifest,
    save_hashed,
    tag_for,
    write_manifest_text,
)

log = get_logger(__name__)


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, quota, permissions); the previous one is intact."""


# ----------------------------------------------------------------------------------------------
# RNG state


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state_all()
        state["megatron_cuda_tracker"] = get_cuda_rng_tracker().get_states()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state_all(state["cuda"])
        get_cuda_rng_tracker().set_states(state["megatron_cuda_tracker"])


# ----------------------------------------------------------------------------------------------
# Saving


def hashing_checkpoint_engine(engine):
    """Give ``engine`` a checkpoint engine that hashes every file DeepSpeed saves and records (instead
    of raising) a write that fails; returns it.  Idempotent."""
    current = engine.checkpoint_engine
    if isinstance(current, _HashingEngine):
        return current
    hashing = _HashingEngine(current)
    engine.checkpoint_engine = hashing
    return hashing


class _HashingEngine:
    """Wraps DeepSpeed's ``TorchCheckpointEngine``: ``save`` goes through a :class:`HashingWriter`; the
    rest is delegated."""

    def __init__(self, inner):
        self._inner = inner
        self.records: dict[str, FileRecord] = {}
        self.error: OSError | None = None

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def begin(self) -> None:
        self.records, self.error = {}, None

    def save(self, state_dict, path: str) -> None:
        if self.error is not None:
            return  # the save already failed on this rank; let DeepSpeed reach its collectives
        try:
            with open(path, "wb") as f:
                writer = HashingWriter(f)
                torch.save(state_dict, cast(IO[bytes], writer))
                f.flush()
                os.fsync(f.fileno())
            self.records[os.path.basename(path)] = writer.record()
        except Exception as exc:
            error = write_error_in(exc)
            if error is None:
                raise
            self.error = error if error.filename else OSError(error.errno, error.strerror, path)
            Path(path).unlink(missing_ok=True)


def save_checkpoint(engine, run_dir: str | Path, step: int, client_state: dict, keep_last: int) -> Path:
    """Save a complete checkpoint of ``engine`` after optimizer step ``step`` (all ranks call this).

    The layout that writes it (world size, tensor- and data-parallel sizes, ZeRO stage) and
    ``client_state`` (with the run's ``config``) go into the manifest.  Raises :class:`CheckpointWriteError` on every rank when a
    file could not be written."""
    root = checkpoint_dir(run_dir)
    tag, rank = tag_for(step), dist.get_rank()
    unfinished = root / (INCOMPLETE + tag)
    error: OSError | None = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if unfinished.exists():
                shutil.rmtree(unfinished)  # leftover of a save that crashed
        except OSError as exc:
            error = exc
    reason = first_reason(_write_error_text(error, root, run_dir) if error else None)
    if reason is not None:
        raise CheckpointWriteError(reason)
    hashing = hashing_checkpoint_engine(engine)
    hashing.begin()
    engine.save_checkpoint(str(root), tag=unfinished.name, client_state=client_state, save_latest=False)
    records, error = dict(hashing.records), hashing.error
    if error is None:
        rng = f"rng_rank{rank}.pt"
        try:
            records[rng] = save_hashed(_rng_state(), unfinished / rng)
        except Exception as exc:
            error = write_error_in(exc)
            if error is None:
                raise
            if not error.filename:
                error = OSError(error.errno, error.strerror, str(unfinished / rng))
    reason = first_reason(_write_error_text(error, root, run_dir) if error else None)
    if reason is not None:
        if rank == 0:
            shutil.rmtree(unfinished, ignore_errors=True)  # the space it holds is what the next try needs
        dist.barrier()
        raise CheckpointWriteError(reason)
    every_rank = gather_to_rank0(records)
    final = root / tag
    if rank == 0:
        files = {name: record for part in every_rank for name, record in part.items()}
        manifest = {
            "step": step,
            **_layout(engine),
            "optimizer_param_groups": len(engine.optimizer.param_groups),
            "optimizer": type(engine.optimizer).__name__,
            **client_state,
            "files": dict(sorted(files.items())),
        }
        atomic_write_text(unfinished / MANIFEST, write_manifest_text(manifest))
        if final.exists():  # re-saving a step (e.g. after a resume): replace only once complete
            stale = root / (INCOMPLETE + "old-" + tag)
            os.replace(final, stale)
            os.replace(unfinished, final)
            shutil.rmtree(stale)
        else:
            os.replace(unfinished, final)
        atomic_write_text(root / LATEST, tag + "\n")
        prune(root, keep_last)
    dist.barrier()
    return final


def _layout(engine) -> dict:
    """How the processes that write a checkpoint are arranged: what a resume must match or reshard."""
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tensor_parallel": ps.get_tensor_model_parallel_world_size(),
        "data_parallel": ps.get_data_parallel_world_size(),
        "zero_stage": engine.zero_optimization_stage(),
    }


def _write_error_text(error: OSError, root: Path, run_dir: str | Path) -> str:
    """One line for a failed save: the file, the cause and, for a full disk, the space."""
    needed = _last_checkpoint_bytes(run_dir) if error.errno in NO_SPACE else None
    return f"checkpoint: {describe_write_error(error, root, needed)}; the previous checkpoint is intact"


def _last_checkpoint_bytes(run_dir: str | Path) -> int | None:
    """Size of the newest complete checkpoint: about what the next one needs."""
    from litespark.training.checkpoint_files import candidates

    for path in candidates(run_dir):
        manifest = read_manifest(path)
        if manifest is not None:
            return sum(r.bytes for r in file_records(manifest).values())
    return None


def prune(root: Path, keep_last: int) -> None:
    """Delete the complete checkpoints older than the newest ``keep_last`` complete ones.

    Only a checkpoint with ``keep_last`` newer complete checkpoints goes (complete: the manifest and
    every file it lists, of the listed size); one that is damaged or unfinished never counts as a
    newer one, and is itself left for the next start to report."""
    steps = sorted(p for p in root.glob(PREFIX + "*") if p.is_dir())
    complete = [p for p in steps if check_complete(p) is None]
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def remove_unfinished_saves(run_dir: str | Path) -> list[str]:
    """Delete the ``.incomplete-*`` directories that saves killed mid-way left (rank 0, holding the run
    directory's lock); returns their names."""
    root = checkpoint_dir(run_dir)
    removed = []
    for path in sorted(root.glob(INCOMPLETE + "*")) if root.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
