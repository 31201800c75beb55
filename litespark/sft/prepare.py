"""SFT examples tokenised once per run directory, then read by every rank and every resume.

Tokenising a chat set through a chat template runs at a few thousand examples per second on one
core, so it is done once, at the first start, by rank 0 while the other ranks wait, and kept in
``RUN_DIR/sft_data/`` (DPO: ``RUN_DIR/dpo_data/``, two sequences per pair) as three flat arrays (token ids, loss mask, example offsets) with a manifest of
what was read: every line counted as an example, a truncated or dropped long one, or a bad line with
its reason.  The directory is written under a temporary name and renamed when complete.  A later
start (a resume) reuses it only when its fingerprint (the data's bytes, the tokenizer's files and the
settings that shape examples) is the one it was made with; otherwise the run is refused in one line,
since training on other data from the same checkpoint would silently change what the run is.  The
same holds for the seed and ``sft.valid_fraction``, which decide which examples train and in what
order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from litespark.config import ConfigError, LitesparkConfig
from litespark.files import atomic_write_text
from litespark.log import get_logger

log = get_logger(__name__)
CACHE = "sft_data"
DPO_CACHE = "dpo_data"
FORMAT = 1


@dataclass
class SFTCorpus:
    """Tokenised examples in flat arrays: example ``i`` is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray
    """int32 token ids of every example, one after another."""
    mask: np.ndarray
    """uint8, 1 where the token is a target of the loss."""
    offsets: np.ndarray
    """int64, ``len(examples) + 1`` boundaries."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(self.tokens[a:b].astype(np.int64)), torch.from_numpy(self.mask[a:b].astype(bool))


def load_tokenizer(path: str):
    """The Hugging Face tokenizer of ``path`` (a directory); ConfigError in one line when it cannot be read."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ConfigError(f"sft.tokenizer: {path} is not a directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many kinds for a broken directory
        raise ConfigError(
            f"sft.tokenizer: {path} cannot be loaded ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def fingerprint(cfg: LitesparkConfig) -> dict:
    """What the prepared examples depend on: the data, the tokenizer files and the example settings."""
    s = cfg.sft
    assert s.data is not None
    data = Path(s.data)
    if data.is_file():
        source = {"file": data.name, "sha256": sha256_files([data])}
    elif data.is_dir():
        source = {"dataset_dir": data.name, "split": s.split, "sha256": sha256_files(sorted(data.rglob("*")))}
    else:
        source = {"dataset": s.data, "split": s.split}  # a hub name: its revision is the hub's
    tokenizer = None
    if s.tokenizer:
        if not Path(s.tokenizer).is_dir():
            raise ConfigError(f"sft.tokenizer: {s.tokenizer} is not a directory")
        tokenizer = sha256_files(sorted(p for p in Path(s.tokenizer).iterdir() if _is_tokenizer_file(p.name)))
    return {
        "format": FORMAT,
        "data": source,
        "tokenizer_sha256": tokenizer,
        "seq_length": cfg.model.seq_length,
        "too_long": s.too_long,
        "assistant_only_loss": s.assistant_only_loss,
        "completion_only_loss": s.completion_only_loss,
        # Which examples train and which validate, and the rows' order (litespark.sft.batches).
        "split": {"seed": cfg.run.seed, "valid_fraction": s.valid_fraction},
    }


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith(("tokenizer", "special_tokens", "chat_template", "added_tokens", "vocab", "merges"))


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def corpus_dir(cfg: LitesparkConfig) -> Path:
    """``RUN_DIR/sft_data`` or, for preference pairs, ``RUN_DIR/dpo_data``."""
    return Path(cfg.run.run_dir) / (DPO_CACHE if cfg.data.source == "dpo" else CACHE)


def prepare_sft_corpus(cfg: LitesparkConfig) -> SFTCorpus:
    """The run's tokenised examples (collective): made by rank 0 at the first start, reused after."""
    from litespark.runtime.distributed import run_on_rank0

    cache = corpus_dir(cfg)
    error = run_on_rank0(lambda: _ensure_cache(cfg, cache), f"sft.data: preparing {cache}")
    if error is not None:
        raise ConfigError(error)
    return read_corpus(cache)


def _ensure_cache(cfg: LitesparkConfig, cache: Path) -> None:
    wanted = fingerprint(cfg)
    manifest = cache / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("fingerprint")
        if recorded != wanted:
            changed = sorted(k for k in wanted if recorded is None or recorded.get(k) != wanted[k])
            raise ConfigError(
                f"sft.data: {cache} was prepared from other {', '.join(changed)} than this run's; a run keeps "
                "its data (start a new run directory to train on other data)"
            )
        return
    examples, seconds = _tokenise(cfg)
    # One name: rank 0 holds the run directory's lock, and a start killed here leaves nothing behind
    # that the next one does not remove.
    tmp = cache.with_name(f"{cache.name}.incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = np.fromiter((len(t) for t in examples.tokens), dtype=np.int64, count=len(examples.tokens))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(tmp / "tokens.npy", np.fromiter((t for ids in examples.tokens for t in ids), dtype=np.int32))
    np.save(tmp / "mask.npy", np.fromiter((m for ms in examples.masks for m in ms), dtype=np.uint8))
    np.save(tmp / "offsets.npy", offsets)
    c = examples.counts
    atomic_write_text(
        tmp / "manifest.json",
        json.dumps(
            {
                "fingerprint": wanted,
                "lines": c.lines,
                "examples": c.examples,
                "tokens": c.tokens,
                "target_tokens": c.target_tokens,
                "truncated": c.truncated,
                "dropped_too_long": c.dropped_too_long,
                "bad_lines": dict(c.bad),
                "first_bad_lines": c.first_bad,
                "seconds": round(seconds, 2),
            },
            indent=1,
        ),
    )
    os.replace(tmp, cache)
    log.info(
        "%s data tokenised in %.1f s (%.0f examples/s) into %s",
        cfg.data.source.upper(),
        seconds,
        c.lines / max(seconds, 1e-9),
        cache,
    )


def _tokenise(cfg: LitesparkConfig):
    from litespark.sft.dataset import Collector, SFTDataError, SFTOptions, read_dataset, read_jsonl

    s = cfg.sft
    assert s.data is not None
    tokenizer = load_tokenizer(s.tokenizer) if s.tokenizer else None
    options = SFTOptions(
        seq_length=cfg.model.seq_length,
        too_long=s.too_long,
        assistant_only_loss=s.assistant_only_loss,
        completion_only_loss=s.completion_only_loss,
    )
    if tokenizer is not None and len(tokenizer) > cfg.model.vocab_size:
        raise ConfigError(
            f"sft.tokenizer: {s.tokenizer} has {len(tokenizer)} tokens, more than model.vocab_size ({cfg.model.vocab_size})"
        )
    if cfg.data.source == "dpo":
        from litespark.dpo.dataset import PairCollector

        collector: Collector = PairCollector(tokenizer, options)
    else:
        collector = Collector(tokenizer, options)
    start = time.perf_counter()
    try:
        path = Path(s.data)
        if path.is_file() or path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
            examples = read_jsonl(path, collector)
        else:
            examples = read_dataset(s.data, s.split, collector)
    except SFTDataError as exc:
        raise ConfigError(str(exc)) from None
    top = max(max(ids) for ids in examples.tokens)
    if top >= cfg.model.vocab_size:
        raise ConfigError(f"sft.data: {s.data} has token id {top}, outside model.vocab_size ({cfg.model.vocab_size})")
    return examples, time.perf_counter() - start


def read_corpus(cache: Path) -> SFTCorpus:
    """The arrays of a prepared ``RUN_DIR/sft_data`` (memory-mapped)."""
    return SFTCorpus(
        tokens=np.load(cache / "tokens.npy", mmap_mode="r"),
        mask=np.load(cache / "mask.npy", mmap_mode="r"),
        offsets=np.load(cache / "offsets.npy"),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
