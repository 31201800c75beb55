"""Token windows for the benchmark: the same [n, seq + 1] tensor for every stack.

``random``: uniform ids from a seeded generator (a model cannot learn them, so the loss stays near
ln(vocab) -- good for speed, useless as a numerics check).  An indexed-dataset prefix (e.g. the
bundled sample corpus after ``make demo``): documents read in order through Megatron-Core's
``IndexedDataset``, concatenated and cut into windows; a corpus shorter than needed is repeated
(and the result says so).
"""

from __future__ import annotations

import numpy as np
import torch

from litespark.config import ConfigError


def load_windows(data: str, n: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``length`` token ids (int64) from ``data`` ('random' or an indexed prefix)."""
    if data == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (n, length), generator=g, dtype=torch.int64)
    return _indexed_windows(data, n, length, vocab_size)


def corpus_tokens(prefix: str) -> np.ndarray:
    """Every token of an indexed dataset, documents in order."""
    from pathlib import Path

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            raise ConfigError(f"--data: {prefix}{suffix} does not exist (build it with `make demo` or data_prep/)")
    ds = IndexedDataset(prefix, mmap=True)
    return np.concatenate([np.asarray(ds[i], dtype=np.int64) for i in range(len(ds))])


def _indexed_windows(prefix: str, n: int, length: int, vocab_size: int) -> torch.Tensor:
    flat = corpus_tokens(prefix)
    if flat.size == 0:
        raise ConfigError(f"--data: {prefix} holds no tokens")
    if int(flat.max()) >= vocab_size:
        raise ConfigError(f"--data: {prefix} has token id {int(flat.max())} >= model vocabulary {vocab_size}")
    need = n * length
    reps = -(-need // flat.size)
    return torch.from_numpy(np.tile(flat, reps)[:need].reshape(n, length).copy())
