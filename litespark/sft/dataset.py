"""An SFT data file -> tokenised examples -> packed rows of ``seq_length`` tokens.

Each line of a JSONL file (``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst``, read as the pretraining
tokenizer reads them) is one example in TRL's formats (:mod:`litespark.sft.examples`).  A line that
cannot be trained on (invalid JSON, a malformed example) is counted with its reason and line number,
never silently skipped and never a traceback; a file where nothing can be trained is an error.  An
example longer than ``seq_length`` is truncated (its start kept, as TRL's ``keep_start``) or dropped,
by option, and counted either way.  The examples are then packed (best-fit decreasing) into rows
that :func:`~litespark.training.packing.to_packed_batch` turns into micro-batches with document masks.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from litespark.log import get_logger
from litespark.sft.examples import SFTExampleError, to_tokens_and_mask

log = get_logger(__name__)

TOO_LONG = ("truncate", "drop")


class SFTDataError(ValueError):
    """A data file that cannot be used at all; the message is one line."""


@dataclass
class SFTCounts:
    """What reading a file found: every line is in exactly one of ``examples`` or ``bad``."""

    lines: int = 0
    examples: int = 0
    """Examples kept (truncated ones included)."""
    truncated: int = 0
    dropped_too_long: int = 0
    """Longer than ``seq_length`` with ``too_long="drop"``, or truncated to no trained token."""
    bad: Counter = field(default_factory=Counter)
    """Reason -> lines (invalid JSON, each kind of malformed example)."""
    first_bad: list[str] = field(default_factory=list)
    """The first few bad lines, ``"line N: reason"``."""
    tokens: int = 0
    target_tokens: int = 0

    def summary(self) -> str:
        parts = [
            f"{self.examples} examples from {self.lines} lines",
            f"{self.tokens} tokens ({self.target_tokens} trained)",
        ]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped as too long")
        if self.bad:
            parts.append(f"{sum(self.bad.values())} bad lines ({'; '.join(self.first_bad)}...)")
        return ", ".join(parts)


@dataclass
class SFTExamples:
    """Tokenised examples: ``tokens[i]`` and ``masks[i]`` (1: a target of the loss)."""

    tokens: list[list[int]]
    masks: list[list[int]]
    counts: SFTCounts


def read_sft_file(
    path: str | Path,
    tokenizer,
    seq_length: int,
    *,
    too_long: str = "truncate",
    assistant_only_loss: bool = True,
    completion_only_loss: bool = True,
    keep_bad_examples: int = 5,
) -> SFTExamples:
    """Tokenise every example of ``path`` (see the module docstring); raises :class:`SFTDataError`
    when the file cannot be read or holds nothing to train on."""
    from data_prep.corpus import LineStream, split_lines

    path = Path(path)
    if too_long not in TOO_LONG:
        raise SFTDataError(f"too_long must be one of {', '.join(TOO_LONG)}, got {too_long!r}")
    if not path.is_file():
        raise SFTDataError(f"SFT data {path}: no such file")
    if not path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        raise SFTDataError(f"SFT data {path}: expected a .jsonl, .jsonl.gz or .jsonl.zst file")
    counts, tokens, masks = SFTCounts(), [], []

    def bad(line_no: int, reason: str) -> None:
        counts.bad[reason] += 1
        if len(counts.first_bad) < keep_bad_examples:
            counts.first_bad.append(f"line {line_no}: {reason}")

    stream, line_no = LineStream(path), 0
    while not stream.exhausted:
        for raw in split_lines(stream.take(stream.offset + (1 << 20))):
            line_no += 1
            if not raw.strip():
                continue
            counts.lines += 1
            try:
                example = json.loads(raw)
            except ValueError:
                bad(line_no, "invalid JSON")
                continue
            try:
                ids, mask = to_tokens_and_mask(
                    example,
                    tokenizer,
                    assistant_only_loss=assistant_only_loss,
                    completion_only_loss=completion_only_loss,
                )
            except SFTExampleError as exc:
                bad(line_no, str(exc))
                continue
            if len(ids) > seq_length:
                if too_long == "drop" or 1 not in mask[1:seq_length]:
                    counts.dropped_too_long += 1
                    continue
                ids, mask = ids[:seq_length], mask[:seq_length]
                counts.truncated += 1
            if 1 not in mask[1:]:  # the first token is never a target (nothing precedes it)
                bad(line_no, "no trained token after the first")
                continue
            tokens.append(ids)
            masks.append(mask)
            counts.examples += 1
            counts.tokens += len(ids)
            counts.target_tokens += sum(mask[1:])
    if stream.error is not None:
        bad(line_no + 1, f"unreadable stream after line {line_no} ({stream.error})")
        counts.lines += 1
    if not tokens:
        reasons = "; ".join(counts.first_bad) or "the file has no examples"
        raise SFTDataError(f"SFT data {path}: nothing to train on ({reasons})")
    log.info("SFT data %s: %s", path, counts.summary())
    return SFTExamples(tokens, masks, counts)


def pack_rows(examples: SFTExamples, seq_length: int, seed: int) -> list[list[int]]:
    """Rows of example indices, each within ``seq_length`` tokens (best-fit decreasing), in an order
    shuffled with ``seed`` (best fit groups examples by length; training should not)."""
    from litespark.training.packing import best_fit_decreasing

    rows = best_fit_decreasing([len(t) for t in examples.tokens], seq_length)
    random.Random(seed).shuffle(rows)
    return rows


def packing_efficiency(examples: SFTExamples, rows: list[list[int]], seq_length: int) -> float:
    """Real tokens over the tokens the rows hold when each is ``seq_length`` long."""
    return sum(len(examples.tokens[i]) for row in rows for i in row) / (len(rows) * seq_length)
