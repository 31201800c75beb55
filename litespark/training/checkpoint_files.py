"""The files of a checkpoint: their layout, the manifest, and the content digests that prove them whole.

Layout under ``RUN_DIR/checkpoints``::

    step_00000100/        DeepSpeed's model / optimizer / scheduler files, rng_rank<R>.pt, litespark.json
    latest                the name of the newest complete checkpoint
    .incomplete-step_N    a save in progress (or one that died): never read, removed at the next start

``litespark.json`` (the manifest) records the step, the layout that wrote the checkpoint (world size,
tensor- and data-parallel sizes, ZeRO stage, optimizer), the run's config, and every file with its
size and its xxh3-64 content digest.  The digests are computed while the files are written (a file
is hashed as its bytes go out, not read back), and checked on load: a file damaged in place, with its
size unchanged, is found before anything reads it.  Nothing here touches torch.distributed: the
caller decides which rank checks which files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import xxhash

MANIFEST = "litespark.json"
LATEST = "latest"
PREFIX, INCOMPLETE = "step_", ".incomplete-"
_READ_BLOCK = 8 << 20


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


@dataclass
class FileRecord:
    """What the manifest says of one file."""

    bytes: int
    xxh3_64: str | None = None
    """None for checkpoints written before digests were recorded (their sizes are still checked)."""


class HashingWriter:
    """A binary file that hashes what is written to it (``torch.save(obj, HashingWriter(f))``)."""

    def __init__(self, f):
        self._f, self._hash, self.bytes = f, xxhash.xxh3_64(), 0

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self.bytes += view.nbytes
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def record(self) -> FileRecord:
        return FileRecord(self.bytes, self._hash.hexdigest())


def save_hashed(obj: Any, path: Path) -> FileRecord:
    """``torch.save(obj, path)``, fsynced, hashing the bytes as they are written."""
    import torch

    with open(path, "wb") as f:
        writer = HashingWriter(f)
        torch.save(obj, cast(IO[bytes], writer))
        f.flush()
        os.fsync(f.fileno())
    return writer.record()


def file_digest(path: Path) -> str:
    """xxh3-64 of a whole file, read in blocks."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: Path) -> dict | None:
    """The manifest of checkpoint ``path``, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def file_records(manifest: dict) -> dict[str, FileRecord]:
    """The manifest's files, from either form: ``{name: size}`` (older checkpoints) or
    ``{name: {"bytes": n, "xxh3_64": hex}}``."""
    out = {}
    for name, entry in manifest["files"].items():
        out[name] = FileRecord(entry) if isinstance(entry, int) else FileRecord(entry["bytes"], entry.get("xxh3_64"))
    return out


def write_manifest_text(manifest: dict) -> str:
    files = {name: {"bytes": r.bytes, "xxh3_64": r.xxh3_64} for name, r in manifest["files"].items()}
    return json.dumps({**manifest, "files": files}, indent=1, sort_keys=True)


def check_complete(path: Path) -> str | None:
    """None when ``path`` has a readable manifest and every file it lists, of the listed size; else why
    not (cheap: no file is read)."""
    manifest = read_manifest(path)
    if manifest is None:
        return "no readable manifest (an unfinished save)"
    for name, record in file_records(manifest).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != record.bytes:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {record.bytes}"
    return None


def check_digests(path: Path, names: Iterable[str]) -> str | None:
    """None when each of ``names`` (files of checkpoint ``path``) has the content digest its manifest
    records; else the first that does not (reads the files)."""
    manifest = read_manifest(path)
    if manifest is None:
        return "no readable manifest"
    records = file_records(manifest)
    for name in names:
        expected = records[name].xxh3_64
        if expected is not None and file_digest(path / name) != expected:
            return f"{name} is damaged (its content digest differs from the one recorded when it was written)"
    return None


def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints to try, best first: the ``latest`` pointer, then every step directory, newest first."""
    root = checkpoint_dir(run_dir)
    found = sorted(root.glob(PREFIX + "*"), reverse=True)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named.is_dir():
            found = [named] + [p for p in found if p != named]
    return found


def shape_mismatch(found: dict[str, tuple[int, ...]], needed: dict[str, tuple[int, ...]]) -> str | None:
    """The first missing, reshaped or unexpected tensor of ``found`` against ``needed`` (name -> shape),
    as a phrase for an error message, or None when they agree."""
    for name, shape in needed.items():
        if name not in found:
            return f"tensor {name} is missing"
        if tuple(found[name]) != tuple(shape):
            return f"{name} has shape {tuple(found[name])}, this run's model needs {tuple(shape)}"
    extra = sorted(set(found) - set(needed))
    return f"unexpected tensor {extra[0]}" if extra else None
