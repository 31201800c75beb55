"""The committed parts of a tokenization: what makes ``tokenize_slimpajama.py`` resumable.

A part is chunk ``k`` of input ``i``: the lines that start in bytes ``[k * chunk_bytes, (k + 1) *
chunk_bytes)`` of the input's (decompressed) text, or a whole dataset shard.  Workers write a part's
pieces (``STEM.KEY.rNNNNN.bin/.idx``, one per range or batch they encoded, renamed into place when
whole); the driver concatenates them into ``STEM.KEY.bin/.idx`` and then writes ``STEM.json``, the
commit marker.  A part is reused by a later run only when its marker records the same input (path,
size, mtime), the same output options and the same ``chunk_bytes``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data_prep.corpus import is_plain
from data_prep.merge_indexed import sum_sets
from litespark.indexed_files import concatenate

MAX_BAD_LINES_LISTED = 100  # per part and per file in the manifest; the count is always exact
HF_PREFIX = "hf://"  # inputs of --hf-dataset: hf://NAME?split=S&shard=I/N


def hf_unit(name: str, split: str, index: int, count: int) -> str:
    return f"{HF_PREFIX}{name}?split={split}&shard={index}/{count}"


def parse_hf_unit(unit: str) -> tuple[str, str, int, int]:
    name, _, query = unit[len(HF_PREFIX) :].rpartition("?")
    fields = dict(kv.split("=", 1) for kv in query.split("&"))
    index, count = fields["shard"].split("/")
    return name, fields["split"], int(index), int(count)


def is_dataset(source: str) -> bool:
    return source.startswith(HF_PREFIX)


def splittable(source: str) -> bool:
    """An uncompressed file: its byte ranges can be read independently."""
    return not is_dataset(source) and is_plain(source)


def source_of(source: str) -> dict:
    """What a committed part was made from: a file's path, size and mtime, or a dataset shard."""
    if is_dataset(source):
        return {"path": source}  # a hub dataset has no mtime: a changed upstream needs a fresh output prefix
    stat = Path(source).stat()
    return {"path": source, "size": stat.st_size, "mtime": stat.st_mtime}


def part_stem(parts_dir: Path, index: int, source: str, chunk: int) -> Path:
    key = source if is_dataset(source) else str(Path(source).resolve())
    return parts_dir / f"{index:06d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}-{chunk:06d}"


def piece_prefix(stem: Path | str, key: str, piece: int) -> str:
    """A worker's piece of a part: one encoded range or batch, for output ``key`` ('all' or a set)."""
    return f"{stem}.{key}.r{piece:05d}"


def committed_marker(stem: Path, source: str, identity: dict, chunk_bytes: int) -> dict | None:
    """The commit marker of a part made from this very input with these options, or None."""
    marker = stem.with_suffix(".json")
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return None
    current = (
        done.get("source") == source_of(source)
        and done.get("options") == identity
        and done.get("chunk_bytes") == chunk_bytes
    )
    return done if current else None


def empty_report() -> dict:
    return {"documents": 0, "tokens": 0, "filtered_out": 0, "bad_lines": 0, "bad": [], "sets": {}}


def add_report(total: dict, report: dict) -> None:
    """Add ``report``'s counts to ``total`` (bad lines listed up to the limit)."""
    for name in ("documents", "tokens", "filtered_out", "bad_lines"):
        total[name] += report[name]
    total["bad"] = (total["bad"] + report["bad"])[:MAX_BAD_LINES_LISTED]
    total["sets"] = sum_sets([total["sets"], report["sets"]])


def commit_part(stem: Path, pieces: list[dict], dtype, marker: dict) -> dict:
    """Concatenate the part's pieces (in order) per output key, remove them, write the marker; returns
    the marker.  ``pieces``: the workers' results, each with its ``piece`` number and ``keys``."""
    keys = sorted({k for p in pieces for k in p["keys"]})
    for key in keys:
        prefixes = [piece_prefix(stem, key, p["piece"]) for p in pieces if key in p["keys"]]
        if len(prefixes) == 1:  # the whole part in one piece: renamed, not copied
            os.replace(prefixes[0] + ".bin", f"{stem}.{key}.bin")
            os.replace(prefixes[0] + ".idx", f"{stem}.{key}.idx")
            continue
        concatenate(prefixes, Path(f"{stem}.{key}"), dtype)
        for prefix in prefixes:
            Path(prefix + ".bin").unlink()
            Path(prefix + ".idx").unlink()
    marker["parts"] = keys
    tmp = Path(f"{stem}.json.tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, f"{stem}.json")  # the commit
    return marker
