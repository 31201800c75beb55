"""Reading SlimPajama-style inputs: ``.jsonl``, ``.jsonl.gz`` and ``.jsonl.zst``, streamed line by line.

Nothing is dropped silently: every line that cannot be used becomes a :class:`BadLine` with its line
number and reason (invalid UTF-8, invalid JSON, no text field, a truncated or corrupt compressed
stream), and the caller counts it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zstandard

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


@dataclass(frozen=True)
class Document:
    line: int
    text: str
    set_name: str | None


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


def input_files(inputs: list[str]) -> list[Path]:
    """Files named directly, found (recursively, sorted) under directories, or matched by globs;
    a ``@LIST`` argument reads one path per line from the file LIST."""
    files: list[Path] = []
    for item in inputs:
        if item.startswith("@"):
            listed = [line.strip() for line in Path(item[1:]).read_text().splitlines() if line.strip()]
            files += input_files(listed)
            continue
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            matched = sorted(Path().glob(item)) if any(c in item for c in "*?[") else []
            if not matched:
                raise FileNotFoundError(f"input {item} does not exist")
            files += [p for p in matched if p.is_file()]
    return files


T = TypeVar("T")


def shard(files: list[T], index: int, count: int) -> list[T]:
    """Every ``count``-th file starting at ``index`` (a Slurm array task's share)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must lie in [0, {count})")
    return files[index::count]


class TruncatedStream(Exception):
    """The compressed input ended inside a frame."""


def _zstd_lines(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a (possibly multi-frame) zstd file; raises TruncatedStream when the last frame is cut.

    zstandard's stream reader ends quietly on a truncated file; the decompression object says whether
    the frame finished.
    """
    dctx = zstandard.ZstdDecompressor()
    dobj, pending = dctx.decompressobj(), b""
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(chunk), b""):
            data = dobj.decompress(block)
            while dobj.eof and dobj.unused_data:  # another frame follows
                rest, dobj = dobj.unused_data, dctx.decompressobj()
                data += dobj.decompress(rest)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
    if not dobj.eof:
        raise TruncatedStream("zstd frame incomplete: the file is truncated")
    if pending:
        yield pending


def _lines(path: Path) -> Iterator[bytes]:
    if path.name.endswith(".zst"):
        yield from _zstd_lines(path)
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield from f
    else:
        with open(path, "rb") as f:
            yield from f


def _lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone UTF-16 surrogate (only a JSON ``\\udXXX`` escape can put one there)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def iter_records(path: Path, text_key: str = "text") -> Iterator[Document | BadLine]:
    """Each line of ``path`` as a :class:`Document` or a :class:`BadLine`, in order."""
    line_no = 0
    try:
        for line_no, raw in enumerate(_lines(path), start=1):
            if not raw.strip():
                continue
            try:
                text_line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine(line_no, f"invalid UTF-8 at byte {exc.start}")
                continue
            try:
                record = json.loads(text_line)
            except ValueError:
                yield BadLine(line_no, "invalid JSON")
                continue
            text = record.get(text_key) if isinstance(record, dict) else None
            if not isinstance(text, str):
                yield BadLine(line_no, f"no string field '{text_key}'")
                continue
            if b"\\u" in raw and (bad_at := _lone_surrogate(text)) is not None:
                yield BadLine(line_no, f"invalid Unicode: a lone surrogate escape at character {bad_at}")
                continue
            meta = record.get("meta")
            yield Document(line_no, text, meta.get("redpajama_set_name") if isinstance(meta, dict) else None)
    except (TruncatedStream, zstandard.ZstdError, EOFError, OSError, zlib.error) as exc:
        yield BadLine(line_no + 1, f"unreadable stream after line {line_no} ({type(exc).__name__}: {str(exc)[:120]})")


def iter_hf_records(
    name: str, split: str, index: int, count: int, text_key: str = "text"
) -> Iterator[Document | BadLine]:
    """Shard ``index`` of ``count`` of a ``datasets`` dataset, streamed; positions count from 1 per shard."""
    import datasets

    stream = datasets.load_dataset(name, split=split, streaming=True).shard(num_shards=count, index=index)
    for position, record in enumerate(stream, start=1):
        text = record.get(text_key)
        if not isinstance(text, str):
            yield BadLine(position, f"no string field '{text_key}'")
            continue
        meta = record.get("meta")
        yield Document(position, text, meta.get("redpajama_set_name") if isinstance(meta, dict) else None)


def hf_shard_count(name: str, split: str) -> int:
    """How many shards (data files) the streamed dataset has: the unit of parallel work."""
    import datasets

    return datasets.load_dataset(name, split=split, streaming=True).n_shards


def iter_texts(path: Path, text_key: str = "text") -> Iterator[tuple[str, str | None]]:
    """(text, set name) of the usable documents of ``path`` (bad lines skipped; for tools that only read)."""
    for item in iter_records(path, text_key):
        if isinstance(item, Document):
            yield item.text, item.set_name
