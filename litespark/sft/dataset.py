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
    """What reading a file found: every non-blank line is an example (``examples``), dropped as too
    long (``dropped_too_long``) or a bad line (``bad``)."""

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


@dataclass
class SFTOptions:
    """How examples become training sequences (the SFT entry point's settings)."""

    seq_length: int
    too_long: str = "truncate"
    """``truncate`` (keep the start) or ``drop`` an example longer than ``seq_length``."""
    assistant_only_loss: bool = True
    completion_only_loss: bool = True
    keep_bad_examples: int = 5
    """How many bad lines are kept, with their line numbers, for the log and the error."""


class Collector:
    """Tokenises examples one at a time into :class:`SFTExamples`, counting every one (SFT examples;
    :class:`litespark.dpo.dataset.PairCollector` adds preference pairs instead)."""

    kind = "SFT"

    def __init__(self, tokenizer, options: SFTOptions):
        if options.too_long not in TOO_LONG:
            raise SFTDataError(f"too_long must be one of {', '.join(TOO_LONG)}, got {options.too_long!r}")
        self.tokenizer, self.options = tokenizer, options
        self.counts = SFTCounts()
        self.tokens: list[list[int]] = []
        self.masks: list[list[int]] = []

    def unreadable(self, where: str, reason: str) -> None:
        """A line that is not an example at all (invalid JSON, a damaged stream): counted bad."""
        self.counts.lines += 1
        self.bad(where, reason)

    def bad(self, where: str, reason: str) -> None:
        self.counts.bad[reason] += 1
        if len(self.counts.first_bad) < self.options.keep_bad_examples:
            self.counts.first_bad.append(f"{where}: {reason}")

    def add(self, where: str, example) -> None:
        o, c = self.options, self.counts
        c.lines += 1
        try:
            ids, mask = to_tokens_and_mask(
                example,
                self.tokenizer,
                assistant_only_loss=o.assistant_only_loss,
                completion_only_loss=o.completion_only_loss,
            )
        except SFTExampleError as exc:
            self.bad(where, str(exc))
            return
        if len(ids) > o.seq_length:
            if o.too_long == "drop" or 1 not in mask[1 : o.seq_length]:
                c.dropped_too_long += 1
                return
            ids, mask = ids[: o.seq_length], mask[: o.seq_length]
            c.truncated += 1
        if 1 not in mask[1:]:  # the first token is never a target (nothing precedes it)
            self.bad(where, "no trained token after the first")
            return
        self.tokens.append(ids)
        self.masks.append(mask)
        c.examples += 1
        c.tokens += len(ids)
        c.target_tokens += sum(mask[1:])

    def finish(self, source: str) -> SFTExamples:
        if not self.tokens:
            reasons = "; ".join(self.counts.first_bad) or "it has no examples"
            raise SFTDataError(f"{self.kind} data {source}: nothing to train on ({reasons})")
        log.info("%s data %s: %s", self.kind, source, self.counts.summary())
        return SFTExamples(self.tokens, self.masks, self.counts)


def read_sft_file(path: str | Path, tokenizer, options: SFTOptions) -> SFTExamples:
    """Tokenise every example of the JSONL file ``path`` (see the module docstring); raises
    :class:`SFTDataError` when the file cannot be read or holds nothing to train on."""
    return read_jsonl(path, Collector(tokenizer, options))


def read_jsonl(path: str | Path, collector: Collector) -> SFTExamples:
    """Every line of the JSONL file ``path`` through ``collector``."""
    from data_prep.corpus import LineStream, split_lines

    path = Path(path)
    if not path.is_file():
        raise SFTDataError(f"{collector.kind} data {path}: no such file")
    if not path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        raise SFTDataError(f"{collector.kind} data {path}: expected a .jsonl, .jsonl.gz or .jsonl.zst file")
    stream, line_no = LineStream(path), 0
    while not stream.exhausted:
        for raw in split_lines(stream.take(stream.offset + (1 << 20))):
            line_no += 1
            if not raw.strip():
                continue
            try:
                example = json.loads(raw)
            except (ValueError, RecursionError):
                collector.unreadable(f"line {line_no}", "invalid JSON")
                continue
            collector.add(f"line {line_no}", example)
    if stream.error is not None:
        collector.unreadable(f"line {line_no + 1}", f"unreadable stream after line {line_no} ({stream.error})")
    return collector.finish(str(path))


def read_sft_dataset(name: str, split: str, tokenizer, options: SFTOptions) -> SFTExamples:
    """Tokenise every row of split ``split`` of the Hugging Face dataset ``name`` (a hub name or a
    local directory ``datasets.load_dataset`` reads), as :func:`read_sft_file` does its lines."""
    return read_dataset(name, split, Collector(tokenizer, options))


def read_dataset(name: str, split: str, collector: Collector) -> SFTExamples:
    """Every row of split ``split`` of the Hugging Face dataset ``name`` through ``collector``."""
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, unknown name or split: one line either way
        raise SFTDataError(
            f"{collector.kind} data {name} ({split}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    for i, row in enumerate(rows):
        collector.add(f"row {i}", {k: v for k, v in row.items() if v is not None})
    return collector.finish(f"{name} ({split})")


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
