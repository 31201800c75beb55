"""Tokenisation speed: Litespark's tokenize_slimpajama.py vs Megatron-LM's tools/preprocess_data.py.

    python data_prep/make_sample.py --out /tmp/bench_corpus --max-mb 200 --validation-every 1000000 \\
        --source "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" --source .venv/lib/python3.11/site-packages
    python -m litespark.bench.tokenize_vs_megatron --megatron-lm /path/to/Megatron-LM --input /tmp/bench_corpus/train \\
        --tokenizer data/tokenizer.model --workers 1 2 [--out benchmarks/results/tokenize_...]

Both tools tokenize the same documents with the same SentencePiece model and the same worker count,
one after the other in this process's machine.  Litespark reads the ``.jsonl.zst`` files as given;
Megatron-LM (which reads plain JSONL, one file) gets their decompressed concatenation, so its
decompression is not timed while Litespark's is.  The input should be large and free of repeats:
Litespark's workers remember the ids of the words they have seen (``data_prep/encoder.py``), so a corpus
made of copies of one sample would flatter it; ``make_sample.py --source`` builds a distinct corpus of
any size from installed Python sources and docstrings.  Megatron-LM runs with ``--tokenizer-type
Llama2Tokenizer --legacy-tokenizer --append-eod`` (BOS + tokens + EOS); the two outputs are compared byte for byte.  The Megatron-LM
checkout is only read, never copied into this repository; it needs ``six`` and ``regex`` installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import data_prep
from data_prep.corpus import BadLine, input_files, iter_records

TOKENIZE_SCRIPT = Path(data_prep.__file__).resolve().parent / "tokenize_slimpajama.py"


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megatron-lm", required=True, help="Megatron-LM checkout (core_v0.16.1)")
    parser.add_argument("--input", nargs="+", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=1, help="SentencePiece threads per Litespark worker")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    mlm = Path(args.megatron_lm).resolve()
    if not (mlm / "tools" / "preprocess_data.py").is_file():
        print(f"tokenize_bench: error: {mlm}/tools/preprocess_data.py does not exist", file=sys.stderr)
        return 2
    files = input_files(args.input)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        copies = []
        for i, f in enumerate(files):  # one flat directory, in input order, for both tools
            dst = tmp / "in" / f"{i:05d}_{f.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            copies.append(dst)
        plain, text_bytes = tmp / "all.jsonl", 0
        with open(plain, "w", encoding="utf-8") as out:
            for f in copies:
                for d in iter_records(f):
                    if isinstance(d, BadLine):
                        continue
                    out.write(json.dumps({"text": d.text}) + "\n")
                    text_bytes += len(d.text.encode())
        import sentencepiece as spm

        vocab_size = spm.SentencePieceProcessor(model_file=args.tokenizer).get_piece_size()
        print(f"{len(files)} files, {text_bytes / 1e6:.1f} MB of text, vocabulary {vocab_size}", file=sys.stderr)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for workers in args.workers:
            ours_prefix, theirs_prefix = tmp / f"ours{workers}", tmp / f"mlm{workers}"
            ours = timed(
                [
                    sys.executable,
                    str(TOKENIZE_SCRIPT),
                    "--input",
                    str(tmp / "in"),
                    "--tokenizer",
                    args.tokenizer,
                    "--output-prefix",
                    str(ours_prefix),
                    "--workers",
                    str(workers),
                    "--threads",
                    str(args.threads),
                    "--no-progress",
                ],
                env,
            )
            theirs = timed(
                [
                    sys.executable,
                    str(mlm / "tools" / "preprocess_data.py"),
                    "--input",
                    str(plain),
                    "--output-prefix",
                    str(theirs_prefix),
                    "--tokenizer-type",
                    "Llama2Tokenizer",
                    "--tokenizer-model",
                    args.tokenizer,
                    "--legacy-tokenizer",
                    "--append-eod",
                    "--workers",
                    str(workers),
                    "--json-keys",
                    "text",
                ],
                dict(env, PYTHONPATH=str(mlm)),
            )
            tokens = json.loads(Path(f"{ours_prefix}.manifest.json").read_text())
            n_tokens = sum(f["tokens"] for f in tokens["files"])
            identical = all(
                Path(f"{ours_prefix}{s}").read_bytes() == Path(f"{theirs_prefix}_text_document{s}").read_bytes()
                for s in (".bin", ".idx")
            )
            rows.append(
                {
                    "workers": workers,
                    "threads": args.threads,
                    "tokens": n_tokens,
                    "litespark_s": ours,
                    "megatron_lm_s": theirs,
                    "litespark_tok_s_per_worker": n_tokens / ours / workers,
                    "megatron_lm_tok_s_per_worker": n_tokens / theirs / workers,
                    "ratio": theirs / ours,
                    "byte_identical": identical,
                }
            )
    lines = [
        "| workers | Litespark threads/worker | tokens | Litespark s | Megatron-LM s | Litespark tok/s/worker | Megatron-LM tok/s/worker | ratio | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['threads']} | {r['tokens']:,} | {r['litespark_s']:.1f} | {r['megatron_lm_s']:.1f} | "
            f"{r['litespark_tok_s_per_worker']:,.0f} | {r['megatron_lm_tok_s_per_worker']:,.0f} | "
            f"{r['ratio']:.2f}x | {'yes' if r['byte_identical'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        meta = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "input_files": len(files),
            "input_text_bytes": text_bytes,
            "vocab_size": vocab_size,
            "rows": rows,
        }
        Path(args.out + ".json").write_text(json.dumps(meta, indent=1) + "\n")
        Path(args.out + ".md").write_text(table + "\n")
    return 0 if all(r["byte_identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
