"""Reading SlimPajama-style inputs: ``.jsonl``, ``.jsonl.gz`` and ``.jsonl.zst``, streamed in whole lines.

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


def is_plain(path: str | Path) -> bool:
    """An uncompressed file: it can be split into byte ranges that are read independently."""
    return not str(path).endswith((".gz", ".zst"))


def shard(weights: list[int], index: int, count: int) -> range:
    """The contiguous run of work units (of the given sizes, in output order) that array task ``index``
    of ``count`` takes: the units whose middle falls in its ``1/count`` share of the total size.  Shards
    merged in order therefore equal one run over every unit."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must lie in [0, {count})")
    total = sum(weights) or 1
    taken, before = [], 0
    for unit, weight in enumerate(weights):
        if min(count - 1, (2 * before + weight) * count // (2 * total)) == index:
            taken.append(unit)
        before += weight
    return range(taken[0], taken[-1] + 1) if taken else range(0)


class TruncatedStream(Exception):
    """The compressed input ended inside a frame."""


BLOCK_BYTES = 1 << 20


def _zstd_blocks(path: Path) -> Iterator[tuple[bytes, int]]:
    """(decompressed block, compressed bytes read so far) of a (possibly multi-frame) zstd file; raises
    TruncatedStream when the last frame is cut.  (zstandard's stream reader ends quietly on a truncated
    file; the decompression object says whether the frame finished.)"""
    dctx = zstandard.ZstdDecompressor()
    dobj, read = dctx.decompressobj(), 0
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(BLOCK_BYTES), b""):
            read += len(block)
            data = dobj.decompress(block)
            while dobj.eof and dobj.unused_data:  # another frame follows
                rest, dobj = dobj.unused_data, dctx.decompressobj()
                data += dobj.decompress(rest)
            yield data, read
    if not dobj.eof:
        raise TruncatedStream("zstd frame incomplete: the file is truncated")


def _gzip_blocks(path: Path) -> Iterator[tuple[bytes, int]]:
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            yield block, raw.tell()


STREAM_ERRORS = (TruncatedStream, zstandard.ZstdError, EOFError, OSError, zlib.error)
"""What reading a damaged input raises: the rest of the file is one bad line."""


class LineStream:
    """A file's text bytes (decompressed), handed out in whole lines.

    ``offset`` is the position in the decompressed stream of the next line; ``raw`` how much of the file
    has been read (for progress).  An uncompressed file can start at any byte: reading begins with the
    first line that starts at or after it.  A damaged compressed stream ends early: ``error`` says why
    and the line it cut short is dropped.
    """

    def __init__(self, path: Path, start: int = 0) -> None:
        self.offset, self.raw = 0, 0
        self.error: str | None = None
        self._buf, self._done = bytearray(), False
        self._blocks: Iterator[tuple[bytes, int]]
        if is_plain(path):
            f = open(path, "rb")  # noqa: SIM115 (closed by _plain_blocks)
            if start > 0:
                f.seek(start - 1)
                if f.read(1) != b"\n":
                    f.readline()  # the line holding byte `start` began before it
                self.offset = self.raw = f.tell()
            self._blocks = self._plain_blocks(f)
        elif start > 0:
            raise ValueError(f"{path}: a compressed stream is read from its start")
        elif path.name.endswith(".zst"):
            self._blocks = _zstd_blocks(path)
        else:
            self._blocks = _gzip_blocks(path)

    @staticmethod
    def _plain_blocks(f) -> Iterator[tuple[bytes, int]]:
        with f:
            for block in iter(lambda: f.read(BLOCK_BYTES), b""):
                yield block, f.tell()

    @property
    def exhausted(self) -> bool:
        return self._done and not self._buf

    def _more(self) -> bool:
        if self._done:
            return False
        try:
            block, self.raw = next(self._blocks)
        except StopIteration:
            self._done = True
            return False
        except STREAM_ERRORS as exc:
            self._done, self.error = True, f"{type(exc).__name__}: {str(exc)[:120]}"
            return False
        self._buf += block
        return True

    def take(self, end: int) -> bytes:
        """The lines from ``offset`` through the one that holds byte ``end - 1`` (fewer at the end of the
        stream); empty when ``end <= offset`` or nothing is left."""
        if end <= self.offset:
            return b""
        search = end - self.offset - 1
        while True:
            pos = self._buf.find(b"\n", search) if len(self._buf) > search else -1
            if pos >= 0:
                cut = pos + 1
                break
            search = max(search, len(self._buf))
            if not self._more():
                cut = len(self._buf)
                if self.error is not None:  # the last line was cut short by the damage: not a line
                    cut = self._buf.rfind(b"\n") + 1
                    del self._buf[cut:]
                break
        out = bytes(self._buf[:cut])
        del self._buf[:cut]
        self.offset += cut
        return out


def count_lines(blob: bytes) -> int:
    """Lines in ``blob`` (a last line without its newline counts)."""
    return blob.count(b"\n") + (1 if blob and not blob.endswith(b"\n") else 0)


def split_lines(blob: bytes) -> list[bytes]:
    """The lines of ``blob`` without their newlines (only ``\\n`` ends a line, as in a file's iteration)."""
    lines = blob.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def lines_before(path: Path, offset: int) -> int:
    """Lines of an uncompressed file that end before byte ``offset`` (a line start)."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(BLOCK_BYTES * 16, offset))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


def parse_line(raw: bytes, line_no: int, text_key: str) -> Document | BadLine | None:
    """One JSONL line as a :class:`Document` or a :class:`BadLine`; None for a blank line."""
    if not raw.strip():
        return None
    try:
        text_line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(line_no, f"invalid UTF-8 at byte {exc.start}")
    try:
        record = json.loads(text_line)
    except ValueError:
        return BadLine(line_no, "invalid JSON")
    text = record.get(text_key) if isinstance(record, dict) else None
    if not isinstance(text, str):
        return BadLine(line_no, f"no string field '{text_key}'")
    if b"\\u" in raw and (bad_at := _lone_surrogate(text)) is not None:
        return BadLine(line_no, f"invalid Unicode: a lone surrogate escape at character {bad_at}")
    meta = record.get("meta")
    return Document(line_no, text, meta.get("redpajama_set_name") if isinstance(meta, dict) else None)


def _lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone UTF-16 surrogate (only a JSON ``\\udXXX`` escape can put one there)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def iter_records(path: Path, text_key: str = "text") -> Iterator[Document | BadLine]:
    """Each line of ``path`` as a :class:`Document` or a :class:`BadLine`, in order."""
    stream, line_no = LineStream(path), 0
    while not stream.exhausted:
        for raw in split_lines(stream.take(stream.offset + BLOCK_BYTES)):
            line_no += 1
            if (item := parse_line(raw, line_no, text_key)) is not None:
                yield item
    if stream.error is not None:
        yield BadLine(line_no + 1, f"unreadable stream after line {line_no} ({stream.error})")


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
