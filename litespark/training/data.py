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

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from litespark import indexed_files
from litespark.config import ConfigError, LitesparkConfig, RunPlan


class _IdsTokenizer:
    """The three facts GPTDataset needs from a tokenizer: vocabulary size, end-of-document, pad."""

    def __init__(self, vocab_size: int, eod: int, pad: int = -1):
        self.vocab_size, self.eod, self.pad = vocab_size, eod, pad
        self.unique_identifiers = {"class": "litespark-ids", "vocab_size": vocab_size, "eod": eod}


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset | None


@dataclass(frozen=True)
class StepTokens:
    """What one optimizer step computes, over all data-parallel ranks: the metrics' token counts."""

    real: int
    """Tokens of data (tokens/s counts these)."""
    padding: int
    """Tokens computed only to round a micro-batch's length (FP8 GEMMs want multiples of 16)."""
    trained: int
    """Targets of the loss."""
    attention_pairs: int
    """Sum over documents of their length squared: the attention term of the step's FLOPs."""


class PretrainData:
    """Pretraining batches (indexed or mock data): every micro-batch is ``micro x seq_length`` tokens."""

    def __init__(self, datasets: Datasets, plan: RunPlan):
        self.datasets, self.plan = datasets, plan
        cfg = plan.config
        tokens = cfg.data.global_batch_size * cfg.model.seq_length
        self._tokens = StepTokens(tokens, 0, tokens, tokens * cfg.model.seq_length)

    @property
    def has_valid(self) -> bool:
        return self.datasets.valid is not None

    def train_batches(self, start_step: int, dp_size: int, dp_rank: int, device: torch.device):
        return iterate_micro_batches(self.datasets.train, self.plan, dp_size, dp_rank, start_step, device)

    def eval_batches(self, dp_size: int, dp_rank: int, device: torch.device):
        return eval_batches(self.datasets.valid, self.plan, dp_size, dp_rank, device)

    def step_tokens(self, step: int) -> StepTokens:
        return self._tokens

    def interval_record(self, steps: range, counts: list[StepTokens]) -> dict:
        """What a metrics record adds for this data (nothing: every token is real and trained)."""
        return {}

    def eval_record(self) -> dict:
        """What a validation record adds for this data (nothing)."""
        return {}


@dataclass
class IndexFacts:
    """What a Megatron ``.idx`` says of its ``.bin``, read without building an ``IndexedDataset``."""

    dtype: np.dtype
    sequences: int
    documents: int
    bin_bytes: int
    """The size the ``.bin`` must have: the last sequence's offset plus its length."""


def read_index(prefix: str) -> IndexFacts:
    """The facts of ``PREFIX.idx``; :class:`ConfigError` naming the file when it is not a whole index
    of integer tokens.  (Megatron's own reader asserts on a bad file, and an ``IndexedDataset`` that
    fails half-built prints "Exception ignored" noise when it is collected.)"""
    try:
        header, lengths, pointers, _ = indexed_files.read_index(prefix + ".idx")
    except indexed_files.BadIndex as exc:
        raise ConfigError(f"data.prefixes: {exc}") from None
    return IndexFacts(
        header.dtype, header.sequences, header.documents, indexed_files.bin_bytes(header, lengths, pointers)
    )


def check_indexed_prefixes(cfg: LitesparkConfig) -> None:
    """Fail before training, in one line, on a missing, truncated or mismatched indexed dataset, or on
    one tokenized with another tokenizer than ``data.tokenizer``.  Cheap: no token is read (the
    vocabulary bound over every token is :func:`check_token_ids`)."""
    tokenizer_sha = _tokenizer_sha256(cfg)
    for prefix in cfg.data.prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise ConfigError(f"data.prefixes: {prefix}{suffix} does not exist")
        facts = read_index(prefix)
        if facts.sequences == 0:
            raise ConfigError(f"data.prefixes: {prefix} has no documents")
        bin_bytes = Path(prefix + ".bin").stat().st_size
        if bin_bytes != facts.bin_bytes:
            state = "truncated" if bin_bytes < facts.bin_bytes else "longer than its index"
            raise ConfigError(
                f"data.prefixes: {prefix}.bin is {state}: {bin_bytes} bytes, its index {prefix}.idx needs "
                f"{facts.bin_bytes}"
            )
        manifest = _manifest(prefix)
        vocab = manifest.get("vocab_size")
        if vocab is not None and vocab > cfg.model.vocab_size:
            raise ConfigError(
                f"data.prefixes: {prefix} was tokenized with a vocabulary of {vocab}, larger than "
                f"model.vocab_size ({cfg.model.vocab_size})"
            )
        recorded = manifest.get("tokenizer_sha256")
        if tokenizer_sha and recorded and recorded != tokenizer_sha and not cfg.data.allow_tokenizer_mismatch:
            raise ConfigError(
                f"data.tokenizer: {cfg.data.tokenizer} is not the tokenizer {prefix} was made with (sha256 "
                f"{tokenizer_sha[:12]}..., the manifest records {recorded[:12]}... for {manifest.get('tokenizer')}); "
                "set data.tokenizer to that one, or data.allow_tokenizer_mismatch=true"
            )


def _manifest(prefix: str) -> dict:
    """``PREFIX.manifest.json`` (what ``data_prep`` recorded), or {} when there is none."""
    path = Path(prefix + ".manifest.json")
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"data.prefixes: {path} is not valid JSON") from None
    return manifest if isinstance(manifest, dict) else {}


def _tokenizer_sha256(cfg: LitesparkConfig) -> str | None:
    """sha256 of ``data.tokenizer`` (None when the run names none)."""
    if not cfg.data.tokenizer:
        return None
    path = Path(cfg.data.tokenizer)
    if not path.is_file():
        raise ConfigError(f"data.tokenizer: {path} does not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SCAN_TOKENS = 1 << 24  # 32 MiB of uint16 per numpy pass: fast, and little memory


def check_token_ids(cfg: LitesparkConfig) -> None:
    """Every token id of every prefix below ``model.vocab_size`` (``data.scan_token_ids``; collective).

    Each rank reads a contiguous share of each ``.bin`` through the memory map, in vectorised
    passes, so the corpus is read once in all: a rank reads 1/world of it (on one CPU core about
    10 GB/s from the page cache, the filesystem's speed otherwise).  An id outside the vocabulary
    would otherwise fail at the step that reads it: an ``IndexError`` on CPU, a device-side assert
    on a GPU."""
    if cfg.data.source != "indexed" or not cfg.data.scan_token_ids:
        return
    import time

    import torch.distributed as dist

    from litespark.log import get_logger

    t0 = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    tops, tokens = [], 0
    for prefix in cfg.data.prefixes:
        data = np.memmap(prefix + ".bin", dtype=read_index(prefix).dtype, mode="r")
        share = -(-data.size // world)
        mine = data[rank * share : (rank + 1) * share]
        top = -1
        for start in range(0, mine.size, _SCAN_TOKENS):
            top = max(top, int(mine[start : start + _SCAN_TOKENS].max()))
        tops.append(top)
        tokens += mine.size
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    found = torch.tensor(tops, dtype=torch.int64, device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    for prefix, top in zip(cfg.data.prefixes, found.tolist()):
        if top >= cfg.model.vocab_size:
            raise ConfigError(
                f"data.prefixes: {prefix} contains token id {top}, outside model.vocab_size ({cfg.model.vocab_size})"
            )
    get_logger(__name__).info(
        "token ids below model.vocab_size in %d prefix(es): %d tokens read on this rank in %.1f s",
        len(cfg.data.prefixes),
        tokens,
        time.perf_counter() - t0,
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
    dataset, plan: RunPlan, dp_size: int, dp_rank: int, start_step: int, device: torch.device
) -> Iterator[tuple[int, list[dict]]]:
    """Yield ``(step, [micro-batch dicts])`` from ``start_step`` to the end of training."""
    cfg = plan.config
    for step in range(start_step, cfg.run.train_iters):
        indices = micro_batch_indices(step, plan.micro_batch_size, cfg.data.global_batch_size, dp_size, dp_rank)
        yield step, [_collate([dataset[i] for i in micro], device) for micro in indices]


def eval_batches(dataset, plan: RunPlan, dp_size: int, dp_rank: int, device: torch.device) -> Iterator[dict]:
    """The fixed validation micro-batches of this rank in one evaluation pass (same samples every pass).

    A pass is ``run.eval_iters`` global batches (``data.global_batch_size`` sequences each), as
    Megatron-LM counts them, whatever the micro-batch and data-parallel size: the validation loss of
    runs on other GPUs or layouts averages the same sequences."""
    cfg = plan.config
    micro, gb = plan.micro_batch_size, cfg.data.global_batch_size
    per_rank = gb // dp_size
    for k in range(cfg.run.eval_iters):
        first = k * gb + dp_rank * per_rank
        for start in range(first, first + per_rank, micro):
            yield _collate([dataset[i % len(dataset)] for i in range(start, start + micro)], device)


def _collate(samples: list[dict], device: torch.device) -> dict:
    """Stack GPTDataset samples into a [micro, seq] batch on ``device``."""
    return {
        key: torch.stack([torch.as_tensor(s[key]) for s in samples]).to(device)
        for key in ("tokens", "labels", "loss_mask")
    }
