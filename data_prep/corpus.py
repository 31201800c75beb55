"""Reading SlimPajama-style inputs: ``.jsonl``, ``.jsonl.gz`` and ``.jsonl.zst`` files, streamed."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterator

import zstandard

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def input_files(inputs: list[str]) -> list[Path]:
    """Files named directly, or found (recursively, sorted) under directories, or matched by globs."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            matched = sorted(Path().glob(item)) if any(c in item for c in "*?[") else []
            if not matched:
                raise FileNotFoundError(f"input {item} does not exist")
            files += [p for p in matched if p.is_file()]
    return files


def open_text(path: Path) -> io.TextIOBase:
    """A text stream over ``path``, decompressing zstd or gzip on the fly."""
    if path.name.endswith(".zst"):
        raw = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), encoding="utf-8")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_texts(path: Path, text_key: str = "text") -> Iterator[tuple[str, str | None]]:
    """(text, redpajama_set_name) of each well-formed line of ``path``."""
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            yield record[text_key], (record.get("meta") or {}).get("redpajama_set_name")
