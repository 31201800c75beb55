"""Megatron-Core's indexed dataset files (``PREFIX.bin`` + ``PREFIX.idx``), read and written with numpy.

Why: ``megatron.core.datasets.indexed_dataset`` imports torch (seconds of start-up) and keeps every
sequence length in a Python list; data preparation and the trainer's start-up checks need neither.
What :class:`IndexWriter` writes equals, byte for byte, what Megatron-Core's ``IndexedDatasetBuilder``
writes for the same documents (``tests/data_prep`` compares them), and Megatron-Core reads it.

The format (version 1): ``.bin`` holds the tokens of every sequence back to back.  ``.idx`` holds the
magic ``MMIDIDX\\0\\0``, the version (``<Q``, 1), the token dtype code (``<B``), the sequence count
(``<Q``) and the length of the document index (``<Q``: documents + 1), then the sequence lengths
(int32), each sequence's byte offset in ``.bin`` (int64) and the document index (int64: the first
sequence of each document, starting with 0, ending with the sequence count).
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 34  # magic 9, version 8, dtype code 1, sequence count 8, document index length 8
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
"""Megatron-Core's codes (``indexed_dataset.DType``) of the integer token types."""
_CODE_OF = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


class BadIndex(ValueError):
    """A ``.idx`` that is not a whole version-1 index of integer tokens; the message names the file."""


@dataclass(frozen=True)
class Header:
    dtype: np.dtype
    sequences: int
    documents: int
    """Documents in the dataset (the document index holds one entry more)."""


def read_header(idx_path: str | Path) -> Header:
    """The header of ``idx_path``, checked against the file's size; :class:`BadIndex` otherwise."""
    path = Path(idx_path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:9] != MAGIC:
        raise BadIndex(f"{path} is not a Megatron index (no MMIDIDX header)")
    version, code, sequences, index_length = struct.unpack("<QBQQ", head[9:])
    if version != VERSION:
        raise BadIndex(f"{path} has index version {version}; Megatron-Core reads version {VERSION}")
    if code not in DTYPE_CODES:
        raise BadIndex(f"{path} holds tokens of dtype code {code}, not integer token ids")
    needed = HEADER_BYTES + 12 * sequences + 8 * index_length
    if size < needed or index_length < 1:
        raise BadIndex(f"{path} is truncated: {size} bytes, its header promises {needed}")
    return Header(np.dtype(DTYPE_CODES[code]), sequences, index_length - 1)


def read_index(idx_path: str | Path) -> tuple[Header, np.ndarray, np.ndarray, np.ndarray]:
    """(header, sequence lengths, sequence byte offsets, document index) of ``idx_path``, memory-mapped."""
    header = read_header(idx_path)
    raw = np.memmap(idx_path, dtype=np.uint8, mode="r")
    n, start = header.sequences, HEADER_BYTES
    lengths = raw[start : start + 4 * n].view(np.int32)
    pointers = raw[start + 4 * n : start + 12 * n].view(np.int64)
    documents = raw[start + 12 * n : start + 12 * n + 8 * (header.documents + 1)].view(np.int64)
    return header, lengths, pointers, documents


def bin_bytes(header: Header, lengths: np.ndarray, pointers: np.ndarray) -> int:
    """The size the ``.bin`` must have: the last sequence's offset plus its length."""
    return int(pointers[-1]) + int(lengths[-1]) * header.dtype.itemsize if header.sequences else 0


def write_index(idx_path: str | Path, dtype, lengths: np.ndarray, document_index: np.ndarray) -> None:
    """Write ``idx_path`` for sequences of ``lengths`` tokens of ``dtype`` and the given document index."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths, np.int32)
    pointers = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    with open(idx_path, "wb") as f:
        f.write(MAGIC + struct.pack("<QBQQ", VERSION, _CODE_OF[dtype], len(lengths), len(document_index)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.asarray(document_index, np.int64).tobytes())


class GrowingArray:
    """A numpy array with amortised appends."""

    def __init__(self, dtype, initial=()) -> None:
        self.data = np.empty(max(1024, len(initial)), dtype)
        self.size = len(initial)
        self.data[: self.size] = initial

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.data):
            grown = np.empty(max(end, 2 * len(self.data)), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class IndexWriter:
    """Appends documents to ``bin_path``; :meth:`finalize` writes the index.  The caller names the files
    (temporary names, renamed when complete)."""

    def __init__(self, bin_path: str | Path, dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"token dtype {self.dtype} has no Megatron-Core code")
        self._bin = open(bin_path, "wb")  # noqa: SIM115 (closed by finalize or abandon)
        self._lengths = GrowingArray(np.int32)
        self._documents = GrowingArray(np.int64, [0])

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents of one sequence each: ``tokens`` holds them back to back, ``lengths`` their sizes."""
        tokens = np.asarray(tokens)
        if tokens.dtype != self.dtype:
            tokens = tokens.astype(self.dtype)
        self._bin.write(tokens.tobytes())
        first = self._lengths.size
        self._lengths.extend(lengths)
        self._documents.extend(np.arange(first + 1, self._lengths.size + 1, dtype=np.int64))

    def add_index(self, prefix: str | Path) -> None:
        """Append the whole dataset ``prefix``.bin/.idx (its tokens must have this writer's dtype)."""
        header, lengths, _, documents = read_index(f"{prefix}.idx")
        if header.dtype != self.dtype:
            raise BadIndex(f"{prefix}.idx holds {header.dtype} tokens, the output {self.dtype}")
        offset = self._lengths.size
        self._lengths.extend(lengths)
        self._documents.extend(documents[1:] + offset)
        with open(f"{prefix}.bin", "rb") as src:
            shutil.copyfileobj(src, self._bin, 16 << 20)

    def finalize(self, idx_path: str | Path) -> None:
        self._bin.close()
        write_index(idx_path, self.dtype, self._lengths.view(), self._documents.view())

    def abandon(self) -> None:
        """Close the data file without writing an index (the caller removes its temporary files)."""
        self._bin.close()


def concatenate(prefixes: list[str], out: Path, dtype) -> None:
    """Concatenate indexed datasets, in order, into ``out``.bin/.idx (temporary names, then renamed);
    the temporary files are removed if it fails."""
    tmp_bin, tmp_idx = out.with_name(f".{out.name}.bin.tmp"), out.with_name(f".{out.name}.idx.tmp")
    try:
        writer = IndexWriter(tmp_bin, dtype)
        try:
            for prefix in prefixes:
                writer.add_index(prefix)
        except BaseException:
            writer.abandon()
            raise
        writer.finalize(tmp_idx)
    except BaseException:
        tmp_bin.unlink(missing_ok=True)  # an unfinished merge holds the space of the whole output
        tmp_idx.unlink(missing_ok=True)
        raise
    os.replace(tmp_bin, f"{out}.bin")
    os.replace(tmp_idx, f"{out}.idx")
