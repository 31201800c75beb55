"""Saving and loading DeepSpeed checkpoints so that a crash, a full disk or a damaged file never costs
more than the last checkpoint.

A save writes into ``.incomplete-step_N`` on every rank, each file hashed as it is written (DeepSpeed's
files through the hashing checkpoint engine, the RNG states beside them).  With
``checkpoint.async_save`` training blocks only while the state is copied to host memory (with
``checkpoint.overlap_copy``, only while the copy is issued: it runs during the next step, whose
optimizer update waits for it), and a background thread writes the files (:class:`CheckpointSaver`).
A write that fails (a full disk, a quota) is recorded instead of raised, so that every rank reaches
the same point; then all ranks agree, and on failure the unfinished directory is removed and
:class:`CheckpointWriteError` names the filesystem, what is free and what the checkpoint needs.  On success rank 0 writes the manifest,
renames the directory to ``step_N``, rewrites ``latest`` and prunes: a checkpoint is retired (renamed
at once, deleted in the background) only when ``checkpoint.keep_last`` newer ones are complete.
Nothing existing is touched before the new checkpoint is complete.  Which checkpoint to load, and
whether it fits this run, is :mod:`litespark.training.resume`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

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
    tag_for,
    write_manifest_text,
)
from litespark.training.host_copy import HostCopies

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
    """Wraps DeepSpeed's ``TorchCheckpointEngine``: ``save`` writes through a :class:`HashingWriter`, or,
    during an asynchronous save, keeps a host copy of the state to be written later; the rest is
    delegated."""

    def __init__(self, inner):
        self._inner = inner
        self.records: dict[str, FileRecord] = {}
        self.error: OSError | None = None
        self.copies: HostCopies | None = None
        self.measure = False
        self.deferred: list[tuple[str, Any]] = []
        self.layouts: list[tuple[str, list]] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def begin(self, copies: HostCopies | None = None, measure: bool = False) -> None:
        """Start a save: written now (``copies`` None), copied into ``copies`` and kept in
        :attr:`deferred` for a background writer, or (``measure``) only measured: each file's storage
        sizes go to :attr:`layouts` and nothing is written."""
        self.records, self.error, self.copies, self.deferred = {}, None, copies, []
        self.measure, self.layouts = measure, []

    def save(self, state_dict, path: str) -> None:
        if self.measure and self.copies is not None:
            self.layouts.append((os.path.basename(path), self.copies.storage_sizes(state_dict)))
            return
        if self.copies is not None:
            self.deferred.append((path, self.copies.copy(os.path.basename(path), state_dict)))
            return
        if self.error is not None:
            return  # the save already failed on this rank; let DeepSpeed reach its collectives
        self.error = _write_hashed(state_dict, path, self.records)


def _write_hashed(obj: Any, path: str, records: dict[str, FileRecord]) -> OSError | None:
    """``torch.save`` ``obj`` to ``path`` through a :class:`HashingWriter`, fsynced, its record added to
    ``records``; a write error (full disk, quota, permissions) is returned, the partial file removed."""
    try:
        with open(path, "wb") as f:
            writer = HashingWriter(f)
            torch.save(obj, cast(IO[bytes], writer))
            f.flush()
            os.fsync(f.fileno())
        records[os.path.basename(path)] = writer.record()
        return None
    except Exception as exc:
        error = write_error_in(exc)
        if error is None:
            raise
        Path(path).unlink(missing_ok=True)
        return error if error.filename else OSError(error.errno, error.strerror, path)


@dataclass
class PendingSave:
    """A save whose files are written (or being written in the background) but not yet committed."""

    step: int
    root: Path
    run_dir: Path
    manifest: dict
    """Everything the manifest records except the files."""
    written: Future
    """Resolves to ``(records, error text or None)`` once this rank's files are on disk."""
    copy_seconds: float = 0.0
    """How long training was blocked copying the state to host memory, or issuing that copy with
    ``overlap_copy`` (asynchronous saves)."""
    reason: str = ""
    """Why it was taken (``interval``, ``end of training``...), for the log."""
    started: float = field(default_factory=time.perf_counter)
    copied: Any = None
    """The CUDA event of the device-to-host copies (asynchronous saves from a GPU): the copies overlap
    the next step, whose optimizer update waits for it (:meth:`CheckpointSaver.wait_for_copy`)."""
    update_wait_seconds: float = 0.0
    """How long the next optimizer update waited for those copies (the host; the GPU had queued work)."""

    @property
    def unfinished(self) -> Path:
        return self.root / (INCOMPLETE + tag_for(self.step))

    def is_written(self) -> bool:
        return self.written.done()


class CheckpointSaver:
    """The checkpoint saves of one run, synchronous or asynchronous (``checkpoint.async_save``).

    An asynchronous save blocks training only while the state is copied to host memory
    (:class:`~litespark.training.host_copy.HostCopies`, buffers reused between saves), or with
    ``overlap_copy`` only while that copy is issued: the copies then run on a stream of their own
    during the next step's forward and backward, and that step's optimizer update waits for them
    (:meth:`wait_for_copy`, which the trainer calls before every update); one background
    thread per rank writes and fsyncs the files, hashing them as they go.  The commit (every rank
    agrees the files are written, then rank 0 writes the manifest, renames the directory, points
    ``latest`` at it and prunes) is collective, so it runs on the training thread, at a step boundary
    once every rank's writer is done (:meth:`commit`).  At most one save is in flight.  Until the
    commit the save is an ``.incomplete-`` directory: a process killed during the background write
    leaves the previous checkpoint as the newest one.

    DeepSpeed's own ``DecoupledCheckpointEngine`` hands the live GPU tensors to a writer process, so a
    write that overlaps the next optimizer step could mix two steps, and it has no manifest or digests;
    that is why the copy is made here first.
    """

    def __init__(self, engine, run_dir: str | Path, keep_last: int, asynchronous: bool, overlap_copy: bool = False):
        self.engine, self.run_dir, self.keep_last = engine, Path(run_dir), keep_last
        self.copies = HostCopies(overlap_copy) if asynchronous else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="litespark-checkpoint") if asynchronous else None
        self.pending: PendingSave | None = None
        self._allocated_before = 0

    def prepare(self) -> float:
        """Allocate and page-lock the host buffers of asynchronous saves now, before the first save
        (collective; a no-op for synchronous saves); returns the seconds it took.  Call it once the
        state is complete: after the first optimizer step, since Adam creates its moments there.

        A dry run of DeepSpeed's save, writing no file, gives the sizes of the storages each file
        will hold.  Page-locking them takes seconds (tens of GB), and it cannot overlap training:
        while ``cudaHostRegister`` pins pages the driver holds up the training thread's CUDA calls
        too.  So it is done here, once per job, in the first step's time (which the report counts
        as start-up), with the pages faulted in by several threads first."""
        if self.copies is None:
            return 0.0
        t = time.perf_counter()
        root, rank = checkpoint_dir(self.run_dir), dist.get_rank()
        probe = root / (INCOMPLETE + "layout-probe")
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
        hashing = hashing_checkpoint_engine(self.engine)
        hashing.begin(self.copies, measure=True)
        self.engine.save_checkpoint(str(root), tag=probe.name, client_state={}, save_latest=False)
        layouts = list(hashing.layouts)
        hashing.begin(None)
        if rank == 0:
            shutil.rmtree(probe, ignore_errors=True)
        for name, sizes in layouts:
            self.copies.reserve(name, sizes)
        self._allocated_before = self.copies.bytes_allocated
        dist.barrier()
        seconds = time.perf_counter() - t
        log.info(
            "checkpoint: %.1f GB of host buffers for asynchronous saves allocated and page-locked in %.1f s "
            "(once per job)",
            self.copies.bytes_allocated / 1e9,
            seconds,
        )
        return seconds

    def start(self, step: int, client_state: dict, reason: str = "") -> PendingSave:
        """Write (synchronous) or copy to host memory and start writing (asynchronous) the checkpoint of
        step ``step`` (all ranks call this, with no save pending).  Raises
        :class:`CheckpointWriteError` on every rank when the directory cannot be made or, synchronously,
        a file could not be written."""
        if self.pending is not None:
            raise RuntimeError("a checkpoint save is already in flight; commit it first")
        engine, root, rank = self.engine, checkpoint_dir(self.run_dir), dist.get_rank()
        unfinished = root / (INCOMPLETE + tag_for(step))
        error: OSError | None = None
        if rank == 0:
            try:
                root.mkdir(parents=True, exist_ok=True)
                if unfinished.exists():
                    shutil.rmtree(unfinished)  # leftover of a save that crashed
            except OSError as exc:
                error = exc
        failure = first_reason(_write_error_text(error, root, self.run_dir) if error else None)
        if failure is not None:
            raise CheckpointWriteError(failure)
        t = time.perf_counter()
        hashing = hashing_checkpoint_engine(engine)
        hashing.begin(self.copies)
        engine.save_checkpoint(str(root), tag=unfinished.name, client_state=client_state, save_latest=False)
        manifest = {
            "step": step,
            **_layout(engine),
            "optimizer_param_groups": len(engine.optimizer.param_groups),
            "optimizer": type(engine.optimizer).__name__,
            **client_state,
        }
        rng_path = str(unfinished / f"rng_rank{rank}.pt")
        written: Future = Future()
        if self.copies is None:
            records, error = dict(hashing.records), hashing.error
            if error is None:
                error = _write_hashed(_rng_state(), rng_path, records)
            written.set_result((records, _write_error_text(error, root, self.run_dir) if error else None))
            self.pending = PendingSave(step, root, self.run_dir, manifest, written, reason=reason)
            return self.pending
        files = [*hashing.deferred, (rng_path, _rng_state())]
        hashing.begin(None)
        copied = self.copies.finish()
        if copied is not None and not self.copies.overlap:
            copied.synchronize()  # the copy blocks training
            copied = None
        assert self._writer is not None
        written = self._writer.submit(_write_all, files, root, self.run_dir, copied)
        self.pending = PendingSave(
            step, root, self.run_dir, manifest, written, time.perf_counter() - t, reason, copied=copied
        )
        allocated = self.copies.bytes_allocated - self._allocated_before
        self._allocated_before = self.copies.bytes_allocated
        if allocated:
            log.info(
                "checkpoint: %.3f GB of host buffers allocated during this save (kept for the next ones)",
                allocated / 1e9,
            )
        return self.pending

    def wait_for_copy(self) -> None:
        """Block until the pending save's device-to-host copies are done, if they may not be: call it
        before anything changes the saved state (the optimizer update).  Free when they are done.
        The host waits (rather than the training stream waiting on the event) so that every stream
        DeepSpeed's step may use is ordered after the copies, not only the current one."""
        pending = self.pending
        if pending is None or pending.copied is None:
            return
        t = time.perf_counter()
        pending.copied.synchronize()
        pending.copied = None
        pending.update_wait_seconds = time.perf_counter() - t

    def commit(self) -> Path:
        """Wait for this rank's files of the pending save, then commit it (collective): the directory
        becomes ``step_N``, ``latest`` names it, older checkpoints beyond ``keep_last`` are pruned.
        Raises :class:`CheckpointWriteError` on every rank when any rank's write failed (the unfinished
        directory is removed; the previous checkpoint is intact)."""
        pending = self.pending
        if pending is None:
            raise RuntimeError("no checkpoint save to commit")
        self.pending = None
        try:
            records, error_text = pending.written.result()
        except Exception as exc:  # the writer failed outside its own handling: still one line on every rank
            records, error_text = {}, f"checkpoint: writing step {pending.step} failed: {type(exc).__name__}: {exc}"
        root, rank, unfinished = pending.root, dist.get_rank(), pending.unfinished
        reason = first_reason(error_text)
        if reason is not None:
            if rank == 0:
                shutil.rmtree(unfinished, ignore_errors=True)  # the space it holds is what the next try needs
            dist.barrier()
            raise CheckpointWriteError(reason)
        every_rank = gather_to_rank0(records)
        final = root / tag_for(pending.step)
        if rank == 0:
            files = {name: record for part in every_rank for name, record in part.items()}
            manifest = {**pending.manifest, "files": dict(sorted(files.items()))}
            atomic_write_text(unfinished / MANIFEST, write_manifest_text(manifest))
            retired = [retire(final)] if final.exists() else []  # re-saving a step (e.g. after a resume)
            os.replace(unfinished, final)
            atomic_write_text(root / LATEST, final.name + "\n")
            retired += prune(root, self.keep_last)
            self._delete(retired)
        dist.barrier()
        return final

    def _delete(self, retired: list[Path]) -> None:
        """Delete retired checkpoint directories: in the background with asynchronous saves (removing
        tens of GB takes seconds), before the next save's write, which queues behind it."""
        if self._writer is None:
            _delete_all(retired)
        elif retired:
            self._writer.submit(_delete_all, retired)

    def close(self) -> None:
        """Stop the writer thread (after the write in flight, if any) and free the host buffers."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self.copies is not None:
            self.copies.release()


def _write_all(
    files: list[tuple[str, Any]], root: Path, run_dir: Path, copied: Any = None
) -> tuple[dict[str, FileRecord], str | None]:
    """The background writer: every file of one rank's save, in order, once the device-to-host copies
    (event ``copied``) are done; stops at the first failure and returns the records and, on failure,
    one line saying why (any exception becomes that line, so that every rank still reaches the
    commit's collectives)."""
    records: dict[str, FileRecord] = {}
    if copied is not None:
        copied.synchronize()
    for path, obj in files:
        try:
            error = _write_hashed(obj, path, records)
            if error is not None:
                return records, _write_error_text(error, root, run_dir)
        except Exception as exc:  # not a filesystem error: still one line, on every rank
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
            return records, f"checkpoint: writing {path} failed: {type(exc).__name__}: {exc}"
    return records, None


def save_checkpoint(engine, run_dir: str | Path, step: int, client_state: dict, keep_last: int) -> Path:
    """Save a complete checkpoint of ``engine`` after optimizer step ``step``, synchronously (all ranks
    call this).

    The layout that writes it (world size, tensor- and data-parallel sizes, ZeRO stage) and
    ``client_state`` (with the run's ``config``) go into the manifest.  Raises
    :class:`CheckpointWriteError` on every rank when a file could not be written."""
    saver = CheckpointSaver(engine, run_dir, keep_last, asynchronous=False)
    saver.start(step, client_state)
    return saver.commit()


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


def prune(root: Path, keep_last: int) -> list[Path]:
    """Retire the complete checkpoints older than the newest ``keep_last`` complete ones; returns the
    retired directories, for the caller to delete.

    Only a checkpoint with ``keep_last`` newer complete checkpoints goes (complete: the manifest and
    every file it lists, of the listed size); one that is damaged or unfinished never counts as a
    newer one, and is itself left for the next start to report."""
    steps = sorted(p for p in root.glob(PREFIX + "*") if p.is_dir())
    complete = [p for p in steps if check_complete(p) is None]
    return [retire(old) for old in complete[:-keep_last]]


def retire(path: Path) -> Path:
    """Rename checkpoint ``path`` out of the way at once (``.incomplete-old-step_N``: no longer a
    checkpoint, and removed by the next start if this process dies before deleting it); returns the
    new path."""
    retired = path.parent / (INCOMPLETE + "old-" + path.name)
    if retired.exists():  # left by a process that died while deleting it
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(path, retired)
    return retired


def _delete_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def remove_unfinished_saves(run_dir: str | Path) -> list[str]:
    """Delete the ``.incomplete-*`` directories that saves killed mid-way left (rank 0, holding the run
    directory's lock); returns their names."""
    root = checkpoint_dir(run_dir)
    removed = []
    for path in sorted(root.glob(INCOMPLETE + "*")) if root.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
