"""Write a small SlimPajama-layout corpus from text every Python install has (its standard library).

    python data_prep/make_sample.py --out data/sample [--max-mb 3]

Layout as SlimPajama ships it: ``{train,validation}/chunk{1,2}/example_{split}_{K}.jsonl.zst``, one
``{"text": ..., "meta": {"redpajama_set_name": ...}}`` per line.  Module sources become
``RedPajamaGithub`` documents, their docstrings ``RedPajamaWikipedia``-style prose, so the set
filters have something to filter.  ``--source DIR`` draws from other Python trees (a virtual
environment's site-packages gives hundreds of MB) and ``--text-source DIR`` from plain-text
documentation instead (``/usr/share/doc``: prose, a stand-in for web text), for tokenisation
benchmarks.  The output is deterministic for a given Python version and inputs; files are written
under temporary names and renamed.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import sys
import sysconfig
from pathlib import Path

import zstandard

DOCS_PER_FILE = 200


def python_files(roots: list[Path]):
    """The ``.py`` files under ``roots`` in a fixed order, test suites and installed packages skipped."""
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if any(
                part in {"site-packages", "test", "tests", "idlelib", "lib2to3"}
                for part in path.relative_to(root).parts
            ):
                continue
            yield path


def up_to(max_bytes: int, pairs):
    """The (set_name, text) pairs until their texts reach ~max_bytes (UTF-8), the last one included."""
    total = 0
    for set_name, text in pairs:
        yield set_name, text
        total += len(text.encode())
        if total >= max_bytes:
            return


def documents(roots: list[Path] | None = None):
    """(set_name, text) pairs from Python sources (default: the standard library), in a fixed order."""
    for path in python_files(roots or [Path(sysconfig.get_paths()["stdlib"])]):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        docs = [
            ast.get_docstring(node)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        prose = "\n\n".join(d for d in docs if d and len(d) > 80)
        for set_name, text in (("RedPajamaGithub", source), ("RedPajamaWikipedia", prose)):
            if len(text) >= 200:
                yield set_name, text


def text_documents(roots: list[Path]):
    """("RedPajamaCommonCrawl", text) for every UTF-8 text file (gzip read through) under ``roots``, in a
    fixed order: human-written prose such as /usr/share/doc, a stand-in for web text."""
    for root in roots:
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
                text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
            except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
                continue
            if len(text) >= 200 and "\x00" not in text:
                yield "RedPajamaCommonCrawl", text


def write_jsonl_zst(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=10).stream_writer(raw) as out:
        for record in records:
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (SlimPajama layout)")
    parser.add_argument("--max-mb", type=float, default=3.0, help="uncompressed text to collect (default 3 MB)")
    parser.add_argument(
        "--source",
        action="append",
        type=Path,
        help="directory of Python sources to draw from, repeatable (default: the standard library); "
        "e.g. a virtual environment's site-packages for a large benchmark corpus",
    )
    parser.add_argument(
        "--text-source",
        action="append",
        type=Path,
        help="directory of plain or .gz text files, one document each (e.g. /usr/share/doc), "
        "used instead of Python sources; repeatable",
    )
    parser.add_argument("--validation-every", type=int, default=20, help="every N-th document goes to validation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    pairs = text_documents(args.text_source) if args.text_source else documents(args.source)
    for i, (set_name, text) in enumerate(up_to(int(args.max_mb * 1e6), pairs)):
        split = "validation" if i % args.validation_every == args.validation_every - 1 else "train"
        splits[split].append({"text": text, "meta": {"redpajama_set_name": set_name}})
    written = 0
    for split, records in splits.items():
        for k in range(0, len(records), DOCS_PER_FILE):
            chunk = 1 + (k // DOCS_PER_FILE) % 2
            write_jsonl_zst(
                out / split / f"chunk{chunk}" / f"example_{split}_{k // DOCS_PER_FILE}.jsonl.zst",
                records[k : k + DOCS_PER_FILE],
            )
            written += 1
    print(
        f"wrote {written} files, {sum(map(len, splits.values()))} documents "
        f"({len(splits['train'])} train, {len(splits['validation'])} validation) under {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
