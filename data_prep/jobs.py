"""What a tokenizer worker does: parse JSONL lines, encode the documents, write a piece of a part.

``tokenize_slimpajama.py`` plans the work as jobs, in output order:

- ``range``: the lines that start in a byte range of an uncompressed file; the worker reads them itself
  (a seek), so no text passes through the driver.
- ``lines`` / ``records``: a batch of lines (or dataset records) the driver read from a compressed
  file or a dataset shard, when there are fewer such inputs than workers.
- ``stream``: a whole compressed file or dataset shard, read by the worker itself, one piece per chunk
  (when there are at least as many such inputs as workers: SlimPajama's thousands of ``.jsonl.zst``).

Each job writes its pieces (``parts.piece_prefix``) under temporary names and renames them when whole,
and returns small reports: counts, bad lines, how many lines it read.  Token data never passes
through the driver, which only concatenates the pieces of a finished part and commits it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.corpus import (
    BadLine,
    Document,
    LineStream,
    count_lines,
    iter_hf_records,
    parse_line,
    split_lines,
)
from data_prep.encoder import Encoder
from data_prep.hf_encoder import HuggingFaceEncoder, frame
from data_prep.parts import (
    MAX_BAD_LINES_LISTED,
    add_report,
    empty_report,
    is_dataset,
    parse_hf_unit,
    part_stem,
    piece_prefix,
)
from data_prep.tokenizer_loader import HUGGINGFACE, TokenizerSpec
from litespark.indexed_files import IndexWriter


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65_500 else np.int32


@dataclass
class Job:
    kind: str  # "range" | "lines" | "records" | "stream"
    index: int  # the input's place in the output order
    source: str
    stem: str  # the part's stem (a stream job: the parts directory)
    chunk: int = 0
    piece: int = 0
    start: int = 0  # range: the byte range [start, end) in which its lines start
    end: int = 0
    payload: object = None  # lines: a blob of whole lines; records: dataset records
    first_line: int = 1  # lines: the number, within the part, of the blob's first line
    committed: frozenset = field(default_factory=frozenset)  # stream: chunks already committed
    chunk_bytes: int = 0  # stream: how its chunks are cut
    raw_bytes: int = 0  # input bytes the job covers (progress)


_ENCODER: Encoder | HuggingFaceEncoder | None = None
_OPTS: dict = {}


def build_encoder(spec: TokenizerSpec, threads: int, memo_words: int, special_tokens: bool):
    """The encoder for ``spec``: SentencePiece or Hugging Face, each with its word memo where exact."""
    if spec.kind == HUGGINGFACE:
        return HuggingFaceEncoder(spec.definition, threads, special_tokens, memo_words)
    import sentencepiece as spm

    return Encoder(spm.SentencePieceProcessor(model_file=spec.definition), threads, memo_words)


def init_worker(spec: TokenizerSpec, options: dict) -> None:
    """Load the tokenizer once per worker process (or in the driver, for a small input)."""
    global _ENCODER, _OPTS
    _ENCODER = build_encoder(spec, options["threads"], options["memo_words"], special_tokens=options["bos"])
    _OPTS = dict(options, bos_id=spec.bos_id, eos_id=spec.eos_id, dtype=token_dtype(spec.vocab_size))


class PieceWriter:
    """One piece of a part, per output key, under temporary names until :meth:`finish`."""

    def __init__(self, stem: str, piece: int) -> None:
        self.stem, self.piece = stem, piece
        self.writers: dict[str, IndexWriter] = {}
        self.report = empty_report()
        self.lines = 0

    def add(self, items: Iterable[Document | BadLine | None]) -> None:
        groups, report = encode_items(items)
        for key, (tokens, lengths) in groups.items():
            if key not in self.writers:
                self.writers[key] = IndexWriter(piece_prefix(self.stem, key, self.piece) + ".bin.tmp", _OPTS["dtype"])
            self.writers[key].add_documents(tokens, lengths)
        add_report(self.report, report)

    def finish(self, **extra) -> dict:
        for key, writer in self.writers.items():
            prefix = piece_prefix(self.stem, key, self.piece)
            writer.finalize(prefix + ".idx.tmp")
            os.replace(prefix + ".bin.tmp", prefix + ".bin")
            os.replace(prefix + ".idx.tmp", prefix + ".idx")
        return {"piece": self.piece, "keys": sorted(self.writers), "report": self.report, "lines": self.lines, **extra}

    def abandon(self) -> None:
        for writer in self.writers.values():
            writer.abandon()


def numbered(blob: bytes, first_line: int) -> Iterator[Document | BadLine | None]:
    """The lines of ``blob`` parsed, the first numbered ``first_line``."""
    key = _OPTS["text_key"]
    return (parse_line(raw, first_line + i, key) for i, raw in enumerate(split_lines(blob)))


def run_job(job: Job) -> list[dict]:
    """Do one job; returns one result per piece written: {part, piece, keys, report, lines, ...}."""
    if _ENCODER is None:
        raise RuntimeError("run_job runs where init_worker has set up the encoder")
    if job.kind == "stream":
        return list(_stream(job))
    writer = PieceWriter(job.stem, job.piece)
    try:
        extra: dict = {}
        if job.kind == "range":
            stream = LineStream(Path(job.source), job.start)
            extra["offset"] = stream.offset
            while stream.offset < job.end and not stream.exhausted:
                blob = stream.take(min(stream.offset + _OPTS["batch_bytes"], job.end))
                writer.add(numbered(blob, writer.lines + 1))
                writer.lines += count_lines(blob)
        elif job.kind == "lines":
            assert isinstance(job.payload, bytes)
            writer.add(numbered(job.payload, job.first_line))
            writer.lines = count_lines(job.payload)
        else:
            assert isinstance(job.payload, list)
            writer.add(job.payload)
            writer.lines = len(job.payload)
        return [dict(writer.finish(**extra), part=(job.index, job.chunk))]
    except BaseException:
        writer.abandon()
        raise


@dataclass
class ChunkEnd:
    """A chunk of a stream is read: where it started and whether the stream ends in it."""

    chunk: int
    first_line: int  # lines of the input before the chunk
    lines: int
    stream_end: bool
    error: str | None


def chunk_batches(
    stream: LineStream, chunk_bytes: int, batch_bytes: int, committed: frozenset
) -> Iterator[tuple[int, bytes, int] | ChunkEnd]:
    """A stream read from its start, chunk by chunk: (chunk, blob of whole lines, number of its first line
    in the chunk) for every batch, then a :class:`ChunkEnd`; committed chunks are read past, unreported.
    The driver (feeding workers) and a stream job cut a stream the same way."""
    line, chunk = 0, 0
    while True:
        end, first, lines = (chunk + 1) * chunk_bytes, line, 0
        while stream.offset < end and not stream.exhausted:
            blob = stream.take(min(stream.offset + batch_bytes, end))
            if chunk not in committed:
                yield chunk, blob, lines + 1
            lines += count_lines(blob)
        line += lines
        if chunk not in committed:
            yield ChunkEnd(chunk, first, lines, stream.exhausted, stream.error if stream.exhausted else None)
        if stream.exhausted:
            return
        chunk += 1


def _stream(job: Job) -> Iterator[dict]:
    return _stream_dataset(job) if is_dataset(job.source) else _stream_file(job)


def _stream_dataset(job: Job) -> Iterator[dict]:
    """A whole dataset shard: one part, one piece."""
    parts_dir = Path(job.stem)
    writer = PieceWriter(str(part_stem(parts_dir, job.index, job.source, 0)), 0)
    try:
        records: list = []
        size = 0
        for item in iter_hf_records(*parse_hf_unit(job.source), text_key=_OPTS["text_key"]):
            records.append(item)
            size += len(item.text) if isinstance(item, Document) else 0
            if size >= _OPTS["batch_bytes"]:
                writer.add(records)
                writer.lines, records, size = writer.lines + len(records), [], 0
        writer.add(records)
        writer.lines += len(records)
    except BaseException:
        writer.abandon()
        raise
    yield dict(writer.finish(first_line=0, stream_end=True, error=None, complete=True), part=(job.index, 0))


def _stream_file(job: Job) -> Iterator[dict]:
    """A whole compressed file, read from its start: one part (of one piece) per chunk not yet committed."""
    parts_dir = Path(job.stem)
    writer: PieceWriter | None = None
    try:
        stream = LineStream(Path(job.source))
        for event in chunk_batches(stream, job.chunk_bytes, _OPTS["batch_bytes"], job.committed):
            if isinstance(event, ChunkEnd):
                if writer is None:  # an empty chunk
                    writer = PieceWriter(str(part_stem(parts_dir, job.index, job.source, event.chunk)), 0)
                extra = {"first_line": event.first_line, "stream_end": event.stream_end, "error": event.error}
                yield dict(writer.finish(**extra, complete=True), part=(job.index, event.chunk))
                writer = None
                continue
            chunk, blob, first_line = event
            if writer is None:
                writer = PieceWriter(str(part_stem(parts_dir, job.index, job.source, chunk)), 0)
            writer.add(numbered(blob, first_line))
            writer.lines += count_lines(blob)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise


def encode_items(items: Iterable[Document | BadLine | None]) -> tuple[dict, dict]:
    """Filter and encode parsed lines.  Returns ({output key: (tokens, lengths)}, report)."""
    opts, encoder = _OPTS, _ENCODER
    assert encoder is not None
    include, exclude = set(opts["include_sets"] or []), set(opts["exclude_sets"])
    docs: list[Document] = []
    report = empty_report()
    for item in items:
        if item is None:
            continue
        if isinstance(item, BadLine):
            report["bad_lines"] += 1
            if len(report["bad"]) < MAX_BAD_LINES_LISTED:
                report["bad"].append({"line": item.line, "reason": item.reason})
        elif (include and item.set_name not in include) or item.set_name in exclude:
            report["filtered_out"] += 1
        else:
            docs.append(item)
    if not docs:
        return {}, report
    ids, lengths = encoder.encode([d.text for d in docs])
    tokens, seq_lengths = with_bos_eos(ids, lengths, opts)
    keys = [(d.set_name or "unknown") if opts["split_by_set"] else "all" for d in docs]
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in dict.fromkeys(keys):
        pick = np.fromiter((k == key for k in keys), bool, len(keys))
        groups[key] = (tokens, seq_lengths) if pick.all() else (tokens[np.repeat(pick, seq_lengths)], seq_lengths[pick])
    for d, n in zip(docs, seq_lengths.tolist()):
        entry = report["sets"].setdefault(d.set_name or "unknown", {"documents": 0, "tokens": 0})
        entry["documents"] += 1
        entry["tokens"] += n
    report["documents"], report["tokens"] = len(docs), int(seq_lengths.sum())
    return groups, report


def with_bos_eos(ids: np.ndarray, lengths: np.ndarray, opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each document's ids with the BOS (SentencePiece, unless --no-bos) before and the EOS after."""
    head = [opts["bos_id"]] if opts["bos"] and opts["bos_id"] is not None else []
    return frame(ids, lengths, head, [opts["eos_id"]], opts["dtype"])
