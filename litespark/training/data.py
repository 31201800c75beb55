"""Training data: Megatron indexed datasets (or Megatron's mock dataset) in a resumable order.

Datasets come from Megatron-Core's ``BlendedMegatronDatasetBuilder`` with ``GPTDataset`` (blend
weights across prefixes, train/valid/test split, a shuffled but seeded sample order); ``source=mock``
uses Megatron's ``MockGPTDataset`` (synthetic token ranges, for benchmarks and tests).

Which samples a rank sees is a pure function of the step: optimizer step ``k`` consumes global
samples ``[k*G, (k+1)*G)``, and on data-parallel rank ``r`` micro-batch ``j`` takes
``k*G + (j*DP + r)*micro + [0, micro)``.  Resuming at step ``k`` therefore needs only ``k``, and
gradient accumulation sees exactly the samples a larger micro-batch would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from litespark.config import ConfigError, LitesparkConfig

# Tokens read from each prefix to check ids against the model's vocabulary (bounded: a full scan of
# a 600 B-token corpus would take hours).
_VOCAB_CHECK_TOKENS = 1 << 20


class _IdsTokenizer:
    """The three facts GPTDataset needs from a tokenizer: vocabulary size, end-of-document, pad."""

    def __init__(self, vocab_size: int, eod: int, pad: int = -1):
        self.vocab_size, self.eod, self.pad = vocab_size, eod, pad
        self.unique_identifiers = {"class": "litespark-ids", "vocab_size": vocab_size, "eod": eod}


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset | None


def check_indexed_prefixes(cfg: LitesparkConfig) -> None:
    """Fail before training, in one line, on a missing or mismatched indexed dataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for prefix in cfg.data.prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise ConfigError(f"data.prefixes: {prefix}{suffix} does not exist")
        manifest = Path(prefix + ".manifest.json")
        if manifest.is_file():
            vocab = json.loads(manifest.read_text()).get("vocab_size")
            if vocab is not None and vocab > cfg.model.vocab_size:
                raise ConfigError(
                    f"data.prefixes: {prefix} was tokenized with a vocabulary of {vocab}, larger than model.vocab_size ({cfg.model.vocab_size})"
                )
        try:
            ds = IndexedDataset(prefix, mmap=True)
        except Exception as exc:
            raise ConfigError(
                f"data.prefixes: {prefix}.idx/.bin cannot be read as a Megatron indexed dataset ({exc})"
            ) from None
        if ds.index.dtype not in (np.uint16, np.int32, np.int64, np.uint32):
            raise ConfigError(
                f"data.prefixes: {prefix} holds {np.dtype(ds.index.dtype).name} tokens, not integer token ids"
            )
        if len(ds) == 0:
            raise ConfigError(f"data.prefixes: {prefix} has no documents")
        bins = np.memmap(prefix + ".bin", dtype=ds.index.dtype, mode="r")
        sample = np.concatenate([bins[:_VOCAB_CHECK_TOKENS], bins[-_VOCAB_CHECK_TOKENS:]])
        top = int(sample.max()) if sample.size else 0
        if top >= cfg.model.vocab_size:
            raise ConfigError(
                f"data.prefixes: {prefix} contains token id {top}, outside model.vocab_size ({cfg.model.vocab_size})"
            )


def build_datasets(cfg: LitesparkConfig, eval_samples: int) -> Datasets:
    """Train and validation datasets of exactly the sizes the run consumes (all ranks call this)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)
    d, m = cfg.data, cfg.model
    mock = d.source == "mock"
    if not mock:
        check_indexed_prefixes(cfg)
    eod = m.vocab_size - 1 if mock else _eod_id(cfg)
    blend = None if mock else (list(d.prefixes), list(d.weights) or None)
    config = GPTDatasetConfig(
        random_seed=cfg.run.seed,
        sequence_length=m.seq_length,
        blend=blend,
        split=d.split,
        path_to_cache=str(Path(cfg.run.run_dir) / "data_cache"),
        tokenizer=_IdsTokenizer(m.vocab_size, eod),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal attention is implicit in both backends
        mid_level_dataset_surplus=0.005,
    )
    train_samples = cfg.run.train_iters * d.global_batch_size
    sizes = [train_samples, eval_samples, 0]
    cls = MockGPTDataset if mock else GPTDataset
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return Datasets(train=train, valid=valid)


def _eod_id(cfg: LitesparkConfig) -> int:
    """End-of-document id from the SentencePiece model when one is configured (Llama: 2)."""
    if cfg.data.tokenizer:
        import sentencepiece

        path = Path(cfg.data.tokenizer)
        if not path.is_file():
            raise ConfigError(f"data.tokenizer: {path} does not exist")
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        if sp.get_piece_size() > cfg.model.vocab_size:
            raise ConfigError(
                f"data.tokenizer: {path} has {sp.get_piece_size()} pieces, more than model.vocab_size ({cfg.model.vocab_size})"
            )
        return sp.eos_id()
    return 2


def micro_batch_indices(step: int, micro: int, global_batch: int, dp_size: int, dp_rank: int) -> list[list[int]]:
    """Sample indices of each micro-batch this DP rank runs in optimizer step ``step``."""
    accumulation = global_batch // (micro * dp_size)
    base = step * global_batch
    return [[base + (j * dp_size + dp_rank) * micro + i for i in range(micro)] for j in range(accumulation)]


def iterate_micro_batches(
    dataset, cfg: LitesparkConfig, dp_size: int, dp_rank: int, start_step: int, device: torch.device
) -> Iterator[tuple[int, list[dict]]]:
    """Yield ``(step, [micro-batch dicts])`` from ``start_step`` to the end of training."""
    for step in range(start_step, cfg.run.train_iters):
        indices = micro_batch_indices(step, cfg.data.micro_batch_size, cfg.data.global_batch_size, dp_size, dp_rank)
        yield step, [_collate([dataset[i] for i in micro], device) for micro in indices]


def eval_batches(dataset, cfg: LitesparkConfig, dp_size: int, dp_rank: int, device: torch.device) -> Iterator[dict]:
    """The fixed validation batches of one evaluation pass (same samples every pass)."""
    micro, n = cfg.data.micro_batch_size, cfg.run.eval_iters
    for k in range(n):
        indices = [(k * dp_size + dp_rank) * micro + i for i in range(micro)]
        yield _collate([dataset[i % len(dataset)] for i in indices], device)


def _collate(samples: list[dict], device: torch.device) -> dict:
    """Stack GPTDataset samples into a [micro, seq] batch on ``device``."""
    return {
        key: torch.stack([torch.as_tensor(s[key]) for s in samples]).to(device)
        for key in ("tokens", "labels", "loss_mask")
    }
