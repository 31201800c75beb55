"""Merge several Megatron indexed datasets (e.g. the shards of a Slurm array job) into one.

    python data_prep/merge_indexed.py --inputs data/train.shard0 data/train.shard1 --output-prefix data/train

Datasets are concatenated in the order given (``litespark/indexed_files.py``: what Megatron-Core's
``IndexedDatasetBuilder.add_index`` writes, without importing torch);
their token dtypes and, where manifests exist, their tokenizers must agree.  The output is written under
temporary names and renamed when complete; the manifests are merged (file lists concatenated, per-set
totals summed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from litespark.files import NO_SPACE, LockHeld, describe_write_error, hold_lock, write_error_in
from litespark.indexed_files import BadIndex, concatenate, read_header

EXIT_WRITE_FAILED = 74
"""The output could not be written for want of space."""


def sum_sets(set_tables: list[dict]) -> dict:
    """Per-set document and token totals summed over several manifests or part reports."""
    total: dict[str, dict] = {}
    for table in set_tables:
        for name, entry in table.items():
            acc = total.setdefault(name, {"documents": 0, "tokens": 0})
            acc["documents"] += entry["documents"]
            acc["tokens"] += entry["tokens"]
    return total


def write_manifest(prefix: Path, manifest: dict) -> None:
    """``prefix``.manifest.json, through a temporary file and a rename."""
    tmp = prefix.with_name(f".{prefix.name}.manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, f"{prefix}.manifest.json")


def fail(message: str) -> int:
    print(f"merge_indexed: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="dataset prefixes, in order")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    dtypes, manifests = set(), []
    for prefix in args.inputs:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                return fail(f"{prefix}{suffix} does not exist")
        try:
            dtypes.add(read_header(prefix + ".idx").dtype)
        except BadIndex as exc:
            return fail(str(exc))
        manifest = Path(prefix + ".manifest.json")
        manifests.append(json.loads(manifest.read_text()) if manifest.is_file() else None)
    if len(dtypes) != 1:
        return fail(f"inputs hold different token dtypes: {sorted(str(d) for d in dtypes)}")
    shas = {m["tokenizer_sha256"] for m in manifests if m}
    if len(shas) > 1:
        return fail("inputs were tokenized with different tokenizers (manifest tokenizer_sha256 differs)")
    out = Path(args.output_prefix)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(out.with_name(out.name + ".lock"), f"--output-prefix {out}")
    except LockHeld as exc:
        return fail(f"{exc}: another merge or tokenization is writing it")
    except OSError as exc:
        return fail(f"--output-prefix {out}: cannot write in {out.parent} ({exc.strerror})")
    try:
        concatenate(list(args.inputs), out, dtypes.pop())
    except Exception as exc:
        error = write_error_in(exc)
        if error is None:
            raise
        print(f"merge_indexed: error: {describe_write_error(error, out.parent)}", file=sys.stderr)
        return EXIT_WRITE_FAILED if error.errno in NO_SPACE else 2
    finally:
        lock.release()
    present = [m for m in manifests if m]
    if len(present) == len(manifests):
        merged = {k: v for k, v in present[0].items() if k not in ("files", "sets", "outputs")}
        merged["merged_from"] = list(args.inputs)
        merged["files"] = [f for m in present for f in m["files"]]
        merged["sets"] = sum_sets([m["sets"] for m in present])
        write_manifest(out, merged)
    print(f"wrote {out}.bin/.idx from {len(args.inputs)} datasets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
