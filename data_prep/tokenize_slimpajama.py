"""SlimPajama (or any JSONL corpus) to a Megatron indexed dataset: ``PREFIX.bin`` + ``PREFIX.idx``.

    python data_prep/tokenize_slimpajama.py --input data/sample/train --tokenizer data/tokenizer.model \\
        --output-prefix data/sample_train

One sequence per document: BOS + tokens + EOS (``--no-bos`` drops the BOS, as Megatron-LM's newer
tokenizer path does).  Tokens are uint16 when the vocabulary is below 65,500, else int32.  The dataset
is written by Megatron-Core's own ``IndexedDatasetBuilder`` under temporary names and renamed only when
complete, with ``PREFIX.manifest.json`` (tokenizer checksum, vocabulary, per-file counts).

This build is sequential; parallel, resumable tokenisation with per-line error accounting is the data
issue's work (docs/data.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.corpus import input_files, iter_texts  # noqa: E402

BATCH = 256


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65_500 else np.int32


def tokenize(files: list[Path], sp: spm.SentencePieceProcessor, prefix: Path, *, bos: bool, text_key: str,
             include: set[str] | None, exclude: set[str]) -> dict:
    """Encode every document of ``files`` into ``prefix``.bin/.idx; returns the manifest."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tmp_bin, tmp_idx = prefix.with_name(f".{prefix.name}.bin.tmp"), prefix.with_name(f".{prefix.name}.idx.tmp")
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=token_dtype(sp.get_piece_size()))
    head, tail = ([sp.bos_id()] if bos else []), [sp.eos_id()]
    per_file, sets = [], {}
    for path in files:
        docs = tokens = skipped = 0
        batch, names = [], []

        def flush():
            nonlocal docs, tokens
            for ids, name in zip(sp.encode(batch), names):
                seq = head + ids + tail
                builder.add_document(torch.tensor(seq, dtype=torch.int64), [len(seq)])
                docs, tokens = docs + 1, tokens + len(seq)
                entry = sets.setdefault(name or "unknown", {"documents": 0, "tokens": 0})
                entry["documents"] += 1
                entry["tokens"] += len(seq)
            batch.clear(), names.clear()

        for text, set_name in iter_texts(path, text_key):
            if (include and set_name not in include) or set_name in exclude:
                skipped += 1
                continue
            batch.append(text)
            names.append(set_name)
            if len(batch) == BATCH:
                flush()
        flush()
        stat = path.stat()
        per_file.append({"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime, "documents": docs,
                         "tokens": tokens, "filtered_out": skipped})
    builder.finalize(str(tmp_idx))
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")
    return {"files": per_file, "sets": sets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="files, directories or globs of .jsonl[.gz|.zst]")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--no-bos", action="store_true", help="no BOS before each document")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--include-sets", nargs="*", default=None, help="keep only these redpajama_set_name values")
    parser.add_argument("--exclude-sets", nargs="*", default=[], help="drop these redpajama_set_name values")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed.*")
    tok = Path(args.tokenizer)
    try:
        if not tok.is_file():
            raise FileNotFoundError(f"--tokenizer {tok} does not exist")
        files = input_files(args.input)
    except FileNotFoundError as exc:
        print(f"tokenize_slimpajama: error: {exc}", file=sys.stderr)
        return 2
    prefix = Path(args.output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    start = time.perf_counter()
    result = tokenize(files, sp, prefix, bos=not args.no_bos, text_key=args.text_key,
                      include=set(args.include_sets) if args.include_sets else None, exclude=set(args.exclude_sets))
    manifest = {"tokenizer": str(tok), "tokenizer_sha256": hashlib.sha256(tok.read_bytes()).hexdigest(),
                "vocab_size": sp.get_piece_size(), "bos": not args.no_bos, "eos": True,
                "dtype": np.dtype(token_dtype(sp.get_piece_size())).name, **result}
    tmp = prefix.with_name(f".{prefix.name}.manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, f"{prefix}.manifest.json")
    docs = sum(f["documents"] for f in result["files"])
    tokens = sum(f["tokens"] for f in result["files"])
    seconds = time.perf_counter() - start
    print(f"wrote {prefix}.bin/.idx: {docs} documents, {tokens} tokens from {len(files)} files "
          f"in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
