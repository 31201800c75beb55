"""The reference model's log-probabilities: computed once, before the first step, and kept.

DPO compares the policy with a frozen reference, the model training starts from.  Rather than
holding two models, the reference's summed log-probability of every response is computed in one
pass over all pairs (training and validation) with the initial weights, before the first optimizer
step, as TRL's ``precompute_ref_log_probs`` does; training then holds one model.

The result is stored in ``dpo.reference_cache`` (default ``RUN_DIR/dpo_data``) as
``reference-KEY.npy`` beside ``reference-KEY.json``, where KEY is a hash of what the numbers depend
on: the prepared data's fingerprint, the reference weights (the Hugging Face model's files, the
``checkpoint.load`` directory, or the seed of a random start), the model's settings and the number
format.  A resume, or another run sharing the cache directory with the same key, reads it instead of
computing it again.  A resume that finds no stored result is refused in one line: the initial weights
are gone by then.  The file is written under a temporary name and renamed, under a lock.
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

from litespark.config import ConfigError, LitesparkConfig
from litespark.dpo.batches import DPOData
from litespark.files import LockHeld, atomic_write_text, hold_lock
from litespark.log import get_logger

log = get_logger(__name__)


def reference_key(cfg: LitesparkConfig) -> dict:
    """What the reference log-probabilities depend on (see the module docstring)."""
    from litespark.sft.hf_init import hf_source
    from litespark.sft.prepare import fingerprint

    if cfg.checkpoint.load:
        weights: dict = {"checkpoint_load": str(Path(cfg.checkpoint.load).resolve())}
    elif cfg.sft.hf_model:
        weights = {k: v for k, v in hf_source(Path(cfg.sft.hf_model), 0).items() if k != "tensor_parallel"}
    else:
        weights = {"random_init_seed": cfg.run.seed}
    p = cfg.precision
    return {
        "data": fingerprint(cfg),
        "weights": weights,
        "model": dataclasses.asdict(cfg.model),
        "numerics": {"bf16": p.bf16, "fp8": p.fp8, "fp8_recipe": p.fp8_recipe if p.fp8 else None},
    }


def cache_paths(cfg: LitesparkConfig) -> tuple[Path, Path, dict]:
    """``(reference-KEY.npy, reference-KEY.json, key)`` in the run's reference cache."""
    from litespark.sft.prepare import corpus_dir

    key = reference_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cfg.dpo.reference_cache) if cfg.dpo.reference_cache else corpus_dir(cfg)
    return folder / f"reference-{digest}.npy", folder / f"reference-{digest}.json", key


def attach_reference(engine, data: DPOData, start_step: int, dp_size: int, dp_rank: int, device) -> dict:
    """Give ``data`` its reference log-probabilities: read from the cache, or (at step 0) computed
    with the engine's current weights and stored (collective).  Returns the metrics record of the
    pass (``split: reference``)."""
    cfg = data.plan.config
    array_path, key_path, key = cache_paths(cfg)
    cached = array_path.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key
    if cached:
        values = np.load(array_path)
        if values.shape != (len(data.corpus),):
            raise ConfigError(
                f"dpo.reference_cache: {array_path} holds {values.shape[0]} sequences, not {len(data.corpus)}"
            )
        data.reference = values.astype(np.float32)
        log.info("reference log-probabilities of %d pairs read from %s", data.pairs, array_path)
        return {"split": "reference", "step": start_step, "seconds": 0.0, "pairs": data.pairs, "cached": True}
    if start_step > 0:
        raise ConfigError(
            f"dpo.reference_cache: no reference log-probabilities for this run in {array_path.parent} (they are "
            "computed from the initial weights before step 0); start a new run directory"
        )
    start = time.perf_counter()
    values = compute_reference(engine, data, dp_size, dp_rank, device)
    seconds = time.perf_counter() - start
    tokens = int(data.seq_lengths.sum())
    if dist.get_rank() == 0:
        _store(array_path, key_path, key, values)
    data.reference = values
    log.info(
        "reference log-probabilities of %d pairs (%d tokens) computed in %.1f s (%.0f tokens/s) into %s",
        data.pairs,
        tokens,
        seconds,
        tokens / max(seconds, 1e-9),
        array_path,
    )
    return {"split": "reference", "step": 0, "seconds": seconds, "tokens": tokens, "pairs": data.pairs, "cached": False}


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


def _store(array_path: Path, key_path: Path, key: dict, values: np.ndarray) -> None:
    """Write the array then its key (the key last: a file without one is never read), under a lock so
    that two runs sharing the cache do not write the same file at once."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold_lock(array_path.with_suffix(".lock"), f"dpo.reference_cache {array_path.parent}")
    except LockHeld as exc:
        log.warning("not storing the reference log-probabilities: %s (it writes the same)", exc)
        return
    try:
        tmp = array_path.with_name(array_path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, values)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, array_path)
        atomic_write_text(key_path, json.dumps(key, indent=1))
    finally:
        lock.release()
