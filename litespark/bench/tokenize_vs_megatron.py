"""Tokenisation speed: Litespark's tokenize_slimpajama.py vs Megatron-LM's tools/preprocess_data.py.

    python data_prep/make_sample.py --out /tmp/bench_corpus --max-mb 200 --validation-every 1000000 \\
        --source "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" --source .venv/lib/python3.11/site-packages
    python -m litespark.bench.tokenize_vs_megatron --megatron-lm /path/to/Megatron-LM --input /tmp/bench_corpus/train \\
        --tokenizer data/tokenizer.model --workers 1 2 [--out benchmarks/results/tokenize_...]

Both tools tokenize the same documents with the same tokenizer and the same worker count, one after the
other on this machine; each whole command is timed (start-up included) and the outputs are compared
byte for byte.  ``--layouts`` says what Litespark reads: ``files`` (the input files as given, e.g. many
``.jsonl.zst``), ``single`` (their documents in one plain JSONL) or ``single-zst`` (that JSONL
zstd-compressed, decompression timed).  Megatron-LM always reads the one plain JSONL (it reads no
compressed input), so its decompression is never timed.  A SentencePiece ``.model`` runs Megatron-LM
with ``--tokenizer-type Llama2Tokenizer``, a Hugging Face tokenizer directory with
``HuggingFaceTokenizer``; both with ``--legacy-tokenizer --append-eod``.  ``--startup`` adds a row for
a one-document input.  The input should be large and free of repeats: Litespark's SentencePiece workers
remember the ids of the words they have seen (``data_prep/encoder.py``), so a corpus made of copies of
one sample would flatter it.  The Megatron-LM checkout is only read, never copied into this repository;
it needs ``six`` and ``regex`` installed.
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


LAYOUTS = ("files", "single", "single-zst")
"""What Litespark reads: the input files as given, their documents in one JSONL, or that JSONL zstd-compressed.
Megatron-LM reads one plain JSONL in every layout (it cannot read compressed files)."""


def megatron_tokenizer_args(tokenizer: str) -> list[str]:
    """Megatron-LM's tokenizer options for the same tokenizer and document layout as Litespark's default."""
    if Path(tokenizer).is_dir() or tokenizer.endswith(".json"):
        model = str(Path(tokenizer).parent if tokenizer.endswith(".json") else tokenizer)
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", model, "--legacy-tokenizer"]
    return ["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", tokenizer, "--legacy-tokenizer"]


def litespark_cmd(inputs: list[Path], tokenizer: str, prefix: Path, workers: int, threads: int) -> list[str]:
    return [
        sys.executable,
        str(TOKENIZE_SCRIPT),
        "--input",
        *map(str, inputs),
        "--tokenizer",
        tokenizer,
        "--output-prefix",
        str(prefix),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--no-progress",
    ]


def megatron_cmd(mlm: Path, plain: Path, tokenizer: str, prefix: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        str(mlm / "tools" / "preprocess_data.py"),
        "--input",
        str(plain),
        "--output-prefix",
        str(prefix),
        *megatron_tokenizer_args(tokenizer),
        "--append-eod",
        "--workers",
        str(workers),
        "--json-keys",
        "text",
    ]


def identical(ours: Path, theirs: Path) -> bool:
    return all(
        Path(f"{ours}{s}").read_bytes() == Path(f"{theirs}_text_document{s}").read_bytes() for s in (".bin", ".idx")
    )


def vocabulary_size(tokenizer: str) -> int:
    from data_prep.tokenizer_loader import load_tokenizer

    return load_tokenizer(tokenizer).vocab_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megatron-lm", required=True, help="Megatron-LM checkout (core_v0.16.1)")
    parser.add_argument("--input", nargs="+", required=True)
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model or Hugging Face tokenizer directory")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=1, help="tokenizer threads per Litespark worker")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["files"])
    parser.add_argument("--startup", action="store_true", help="also time both tools on a one-document input")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    mlm = Path(args.megatron_lm).resolve()
    if not (mlm / "tools" / "preprocess_data.py").is_file():
        print(f"tokenize_bench: error: {mlm}/tools/preprocess_data.py does not exist", file=sys.stderr)
        return 2
    files = input_files(args.input)
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    mlm_env = dict(env, PYTHONPATH=str(mlm))
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_dir:
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
        compressed = tmp / "all.jsonl.zst"
        if "single-zst" in args.layouts:
            import zstandard

            with open(plain, "rb") as src, open(compressed, "wb") as sink:
                zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, sink)
        layout_inputs = {"files": [tmp / "in"], "single": [plain], "single-zst": [compressed]}
        vocab_size, plain_bytes = vocabulary_size(args.tokenizer), plain.stat().st_size
        print(
            f"{len(files)} files, {text_bytes / 1e6:.1f} MB of text, one JSONL of {plain_bytes / 1e6:.1f} MB, "
            f"vocabulary {vocab_size}",
            file=sys.stderr,
        )
        if args.startup:
            tiny = tmp / "tiny.jsonl"
            tiny.write_text(json.dumps({"text": "A short document of a few words to time the start-up."}) + "\n")
            ours = timed(litespark_cmd([tiny], args.tokenizer, tmp / "tiny_ours", 1, 1), env)
            theirs = timed(megatron_cmd(mlm, tiny, args.tokenizer, tmp / "tiny_mlm", 1), mlm_env)
            rows.append(
                row("start-up (one document)", 1, args.threads, tmp / "tiny_ours", tmp / "tiny_mlm", ours, theirs)
            )
        for workers in args.workers:  # Megatron-LM once per worker count: it reads the same file in every layout
            theirs_prefix = tmp / f"mlm{workers}"
            print(f"{workers} workers: Megatron-LM ...", file=sys.stderr)
            theirs = timed(megatron_cmd(mlm, plain, args.tokenizer, theirs_prefix, workers), mlm_env)
            print(f"  {theirs:.1f} s", file=sys.stderr)
            for layout in args.layouts:
                ours_prefix = tmp / f"ours_{layout}{workers}"
                cmd = litespark_cmd(layout_inputs[layout], args.tokenizer, ours_prefix, workers, args.threads)
                print(f"{layout}, {workers} workers: Litespark ...", file=sys.stderr)
                ours = timed(cmd, env)
                print(f"  {ours:.1f} s", file=sys.stderr)
                rows.append(row(layout, workers, args.threads, ours_prefix, theirs_prefix, ours, theirs))
                for suffix in (".bin", ".idx"):
                    Path(f"{ours_prefix}{suffix}").unlink(missing_ok=True)
    lines = [
        "| Litespark reads | workers | Litespark threads/worker | tokens | Litespark s | Megatron-LM s | "
        "Litespark tok/s | Megatron-LM tok/s | speed-up | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['workers']} | {r['threads']} | {r['tokens']:,} | {r['litespark_s']:.1f} | "
            f"{r['megatron_lm_s']:.1f} | {r['litespark_tok_s']:,.0f} | {r['megatron_lm_tok_s']:,.0f} | "
            f"{r['ratio']:.2f}x | {'yes' if r['byte_identical'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        meta = {
            "command": " ".join(["python -m litespark.bench.tokenize_vs_megatron", *sys.argv[1:]]),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "input_files": len(files),
            "input_text_bytes": text_bytes,
            "single_jsonl_bytes": plain_bytes,
            "tokenizer": args.tokenizer,
            "vocab_size": vocab_size,
            "rows": rows,
        }
        Path(args.out + ".json").write_text(json.dumps(meta, indent=1) + "\n")
        Path(args.out + ".md").write_text(f"`{meta['command']}`\n\n{table}\n")
        plot(meta, Path(args.out + ".png"))
    return 0 if all(r["byte_identical"] for r in rows) else 1


def plot(meta: dict, path: Path) -> None:
    """Wall time of both tools per row, start-up row excluded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in meta["rows"] if not r["layout"].startswith("start-up")]
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 3, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["litespark_s"] for r in rows], 0.4, label="Litespark", color="tab:blue")
    ax.bar([i + 0.2 for i in x], [r["megatron_lm_s"] for r in rows], 0.4, label="Megatron-LM", color="tab:gray")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['ratio']:.2f}x", (i - 0.2, r["litespark_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{r['layout']}\n{r['workers']} workers" for r in rows])
    ax.set_ylabel("wall time, s")
    ax.set_title(
        f"{meta['single_jsonl_bytes'] / 1e9:.2f} GB JSONL, vocabulary {meta['vocab_size']:,}, {meta['cpu_count']} CPUs"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row(layout: str, workers: int, threads: int, ours: Path, theirs: Path, ours_s: float, theirs_s: float) -> dict:
    manifest = json.loads(Path(f"{ours}.manifest.json").read_text())
    tokens = sum(f["tokens"] for f in manifest["files"])
    return {
        "layout": layout,
        "workers": workers,
        "threads": threads,
        "tokens": tokens,
        "litespark_s": ours_s,
        "megatron_lm_s": theirs_s,
        "litespark_tok_s": tokens / ours_s,
        "megatron_lm_tok_s": tokens / theirs_s,
        "ratio": theirs_s / ours_s,
        "byte_identical": identical(ours, theirs),
    }


if __name__ == "__main__":
    sys.exit(main())
