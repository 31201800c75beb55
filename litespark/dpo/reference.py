"""The reference model's log-probabilities: computed once, before the first step, and kept.

DPO compares the policy with a frozen reference, the model training starts from.  Rather than
holding two models, the reference's summed log-probability of every response is computed in one
pass over all pairs (training and validation) with the initial weights, before the first optimizer
step, as TRL's ``precompute_ref_log_probs`` does; training then holds one model.

The run keeps the result in ``RUN_DIR/dpo_data/reference.npy`` (beside the prepared pairs it
belongs to); a resume reads it, and a resume that finds none is refused in one line (the starting
weights are gone by then).  With ``dpo.reference_cache`` set, the result is also stored there as
``reference-KEY.npy`` beside ``reference-KEY.json``, where KEY is a hash of what the numbers depend
on: the prepared pairs' bytes, the reference weights (the Hugging Face model's files, the checkpoint
``checkpoint.load`` resolved to, or the seed of a random start), the model's settings and the number
format (precision settings, backend, FP8 output layer); another run whose cache holds its KEY reads
it instead of computing it.  Rank 0 decides and reads, and sends the values to the other ranks, so
that every rank takes the same path whatever its view of the file system.  Files are written under
a temporary name and renamed, the shared cache's under a lock; a shared cache that cannot be written
is a warning (the run has its own copy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from litespark.config import ConfigError, RunPlan
from litespark.dpo.batches import DPOData
from litespark.files import LockHeld, atomic_write_text, hold_lock
from litespark.log import get_logger

log = get_logger(__name__)
RUN_REFERENCE = "reference.npy"
"""The run's own copy, in ``RUN_DIR/dpo_data``."""


def reference_key(plan: RunPlan, weights: Path | None) -> dict:
    """What the reference log-probabilities depend on (see the module docstring); ``weights``: the
    checkpoint the run starts from (``checkpoint.load``'s, resolved), if any.  Reads every byte of
    the prepared pairs: rank 0, once per run."""
    from litespark.sft.hf_init import hf_source
    from litespark.sft.prepare import corpus_dir, sha256_files

    cfg = plan.config
    if cfg.checkpoint.load and weights is not None:
        manifests = sorted(p for p in weights.iterdir() if p.suffix == ".json") if weights.is_dir() else []
        source: dict = {"checkpoint": str(weights.resolve()), "sha256": sha256_files(manifests)}
    elif cfg.sft.hf_model:
        source = {k: v for k, v in hf_source(Path(cfg.sft.hf_model), 0).items() if k != "tensor_parallel"}
    else:
        source = {"random_init_seed": cfg.run.seed}
    prepared = corpus_dir(cfg)
    return {
        "pairs_sha256": sha256_files([prepared / name for name in ("tokens.npy", "mask.npy", "offsets.npy")]),
        "weights": source,
        "model": dataclasses.asdict(cfg.model),
        "numerics": {
            **dataclasses.asdict(cfg.precision),
            "backend": plan.backend,
            "fp8_output_layer": plan.fp8_output_layer,
        },
    }


def cache_paths(plan: RunPlan, weights: Path | None) -> tuple[Path, Path, dict]:
    """``(reference-KEY.npy, reference-KEY.json, key)`` in ``dpo.reference_cache``."""
    key = reference_key(plan, weights)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert plan.config.dpo.reference_cache is not None
    folder = Path(plan.config.dpo.reference_cache)
    return folder / f"reference-{digest}.npy", folder / f"reference-{digest}.json", key


def attach_reference(
    engine, data: DPOData, start_step: int, dp_size: int, dp_rank: int, device, weights: Path | None = None
) -> dict:
    """Give ``data`` its reference log-probabilities: the run's own (a resume), the shared cache's,
    or (at step 0) computed with the engine's current weights and stored (collective).  Returns the
    metrics record of the pass (``split: reference``)."""
    from litespark.runtime.distributed import run_on_rank0
    from litespark.sft.prepare import corpus_dir

    cfg = data.plan.config
    n, tokens = len(data.corpus), int(data.seq_lengths.sum())
    own = corpus_dir(cfg) / RUN_REFERENCE
    found: list[tuple[np.ndarray, Path]] = []  # rank 0's
    cache: list[tuple[Path, Path, dict]] = []

    def look() -> None:
        if start_step > 0:
            if not own.is_file():
                raise ConfigError(
                    f"dpo: no reference log-probabilities in {own} to resume with (they are computed from the "
                    "initial weights before step 0); start a new run directory"
                )
            found.append((_read(own, n), own))
            return
        if cfg.dpo.reference_cache:
            cache.append(cache_paths(data.plan, weights))
            array_path, key_path, key = cache[0]
            if array_path.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key:
                found.append((_read(array_path, n), array_path))

    error = run_on_rank0(look, "dpo: reading the reference log-probabilities")
    if error is not None:
        raise ConfigError(error)
    values = _from_rank0(found[0][0] if found else None, n, device)
    record = {"split": "reference", "step": start_step, "tokens": tokens, "pairs": data.pairs}
    if values is not None:
        data.reference = values
        if found:
            log.info("reference log-probabilities of %d pairs read from %s", data.pairs, found[0][1])
        if start_step == 0:
            _store_own(own, values)
        return {**record, "seconds": 0.0, "cached": True}
    start = time.perf_counter()
    values = compute_reference(engine, data, dp_size, dp_rank, device)
    seconds = time.perf_counter() - start
    data.reference = values
    _store_own(own, values)
    if cache:  # rank 0's view of the shared cache
        _store_shared(*cache[0], values)
    log.info(
        "reference log-probabilities of %d pairs (%d tokens) computed in %.1f s (%.0f tokens/s) into %s",
        data.pairs,
        tokens,
        seconds,
        tokens / max(seconds, 1e-9),
        own,
    )
    return {**record, "seconds": seconds, "cached": False}


def _read(path: Path, n: int) -> np.ndarray:
    try:
        values = np.load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dpo: {path} cannot be read ({exc})") from None
    if values.shape != (n,):
        raise ConfigError(f"dpo: {path} holds {values.shape} reference log-probabilities, not ({n},)")
    return values.astype(np.float32)


def _from_rank0(values: np.ndarray | None, n: int, device) -> np.ndarray | None:
    """Rank 0's ``values`` (or its None) on every rank (collective; on the device under NCCL)."""
    if dist.get_world_size() == 1:
        return values
    present = torch.tensor([1 if values is not None else 0], dtype=torch.int32, device=device)
    dist.broadcast(present, src=0)
    if not int(present.item()):
        return None
    out = torch.from_numpy(values).to(device) if values is not None else torch.empty(n, device=device)
    dist.broadcast(out, src=0)
    return out.cpu().numpy()


def _store_own(path: Path, values: np.ndarray) -> None:
    """``RUN_DIR/dpo_data/reference.npy`` (rank 0; a failure is one line on every rank)."""
    from litespark.runtime.distributed import run_on_rank0

    def write() -> None:
        try:
            _write_array(path, values)
        except OSError as exc:
            raise ConfigError(f"dpo: cannot write {path} ({exc.strerror})") from None

    error = run_on_rank0(write, f"dpo: writing {path}")
    if error is not None:
        raise ConfigError(error)


def _write_array(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, values)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def compute_reference(engine, data: DPOData, dp_size: int, dp_rank: int, device) -> np.ndarray:
    """Every sequence's summed response log-probability under the engine's weights (collective): each
    data-parallel rank runs its share of the rows, micro-batch by micro-batch, without gradients; all
    ranks run the same number of forwards (ZeRO-3 gathers weights in each)."""
    from megatron.core import parallel_state as ps

    from litespark.training.step import refresh_fp8_weight_cache, token_losses

    rows = data.all_rows()
    mine = rows[dp_rank::dp_size]
    chunks = [mine[i : i + data.micro] for i in range(0, len(mine), data.micro)]
    forwards = math.ceil(math.ceil(len(rows) / dp_size) / data.micro)
    out = torch.zeros(len(data.corpus), dtype=torch.float64, device=device)
    every = max(forwards // 10, 1)
    engine.eval()
    refresh_fp8_weight_cache(engine)
    with torch.no_grad():
        for i in range(forwards):
            chunk = chunks[i] if i < len(chunks) else chunks[0] if chunks else rows[:1]
            batch = data.preference_batch(chunk, 1.0, 1.0, device, None)
            logps = batch["preference"].logps(token_losses(engine, batch))
            if i < len(chunks):
                seqs = torch.from_numpy(data.sequences(np.concatenate(chunk))).to(device)
                out[seqs] = logps.double()
            if (i + 1) % every == 0 or i + 1 == forwards:
                log.info("reference pass: %d/%d micro-batches", i + 1, forwards)
    engine.train()
    dist.all_reduce(out, group=ps.get_data_parallel_group())
    return out.float().cpu().numpy()


def _store_shared(array_path: Path, key_path: Path, key: dict, values: np.ndarray) -> None:
    """The array then its key in the shared cache (the key last: an array without one is never read),
    under a lock so that two runs do not write the same file at once; rank 0.  A failure is a
    warning: the run has its own copy."""
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(array_path.with_suffix(".lock"), f"dpo.reference_cache {array_path.parent}")
    except LockHeld as exc:
        log.warning("not storing the reference log-probabilities: %s (it writes the same)", exc)
        return
    except OSError as exc:
        log.warning("dpo.reference_cache: cannot write %s (%s); this run keeps its own copy", array_path.parent, exc)
        return
    try:
        _write_array(array_path, values)
        atomic_write_text(key_path, json.dumps(key, indent=1))
    except OSError as exc:
        log.warning("dpo.reference_cache: cannot write %s (%s); this run keeps its own copy", array_path, exc)
    finally:
        lock.release()
