"""SlimPajama (or any JSONL corpus) to a Megatron indexed dataset: ``PREFIX.bin`` + ``PREFIX.idx``.

    python data_prep/tokenize_slimpajama.py --input data/slimpajama/train --tokenizer tokenizer.model \\
        --output-prefix data/slimpajama_train --workers 16

One sequence per document: BOS + tokens + EOS, as Megatron-LM's ``tools/preprocess_data.py`` writes with
``--tokenizer-type Llama2Tokenizer --append-eod`` (``--no-bos`` drops the BOS, as its newer tokenizer
path does).  Tokens are uint16 below a 65,500 vocabulary, else int32.

How it works: each input file is tokenized by one worker process (``--workers``) into its own part under
``PREFIX.parts/``, streamed in batches of at most ``--batch-bytes`` of text.  Each distinct word is
encoded once per worker (``data_prep/encoder.py``: exact for Llama-style models, checked at start-up)
with ``--threads`` SentencePiece threads.  A part is committed by writing its ``.bin``/``.idx`` under
temporary names and then its ``.json`` (the commit marker); a rerun after Ctrl-C or SIGKILL skips every committed part
whose input file, tokenizer and options are unchanged.  The parts are then concatenated in input order
with Megatron-Core's ``IndexedDatasetBuilder.add_index`` into ``PREFIX.bin/.idx`` (temporary names,
renamed when complete), so an interrupted and resumed run is byte-identical to an uninterrupted one.

Bad input (invalid UTF-8 or JSON, a lone surrogate escape, a line without the text field, a truncated
or corrupt compressed file) is skipped, counted per file with line numbers in ``PREFIX.manifest.json``
and the summary; ``--strict`` makes it fatal (exit 1).  Memory per worker: the interpreter with
megatron.core, about 7 x ``--batch-bytes`` while a batch is encoded, the word memo (``--memo-words``
x ~250 B) and the decompression window (docs/data.md has the measurements).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from data_prep.corpus import (
    BadLine,
    Document,
    hf_shard_count,
    input_files,
    iter_hf_records,
    iter_records,
    shard,
)
from data_prep.encoder import Encoder
from data_prep.merge_indexed import concatenate, sum_sets, write_manifest
from litespark.files import (
    NO_SPACE,
    FileLock,
    LockHeld,
    describe_write_error,
    hold_lock,
    write_error_in,
)

MAX_BAD_LINES_LISTED = 100  # per file in the manifest; the count is always exact
TUNING = ("threads", "batch_bytes", "memo_words")  # options that change speed and memory, never the output


def output_identity(options: dict) -> dict:
    """The options a committed part must share to be reused."""
    return {k: v for k, v in options.items() if k not in TUNING}


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65_500 else np.int32


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# One file -> one committed part (runs in a worker process)

_ENCODER: Encoder | None = None
_OPTS: dict = {}


def _init_worker(tokenizer: str, options: dict) -> None:
    global _ENCODER, _OPTS
    import sentencepiece as spm

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed.*")
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    _ENCODER, _OPTS = Encoder(sp, options["threads"], options["memo_words"]), options


HF_PREFIX = "hf://"  # work units of --hf-dataset: hf://NAME?split=S&shard=I/N


def hf_unit(name: str, split: str, index: int, count: int) -> str:
    return f"{HF_PREFIX}{name}?split={split}&shard={index}/{count}"


def parse_hf_unit(unit: str) -> tuple[str, str, int, int]:
    name, _, query = unit[len(HF_PREFIX) :].rpartition("?")
    fields = dict(kv.split("=", 1) for kv in query.split("&"))
    index, count = fields["shard"].split("/")
    return name, fields["split"], int(index), int(count)


def source_of(unit: str) -> dict:
    """What a committed part was made from: a file's path, size and mtime, or a dataset shard."""
    if unit.startswith(HF_PREFIX):
        return {"path": unit}  # a hub dataset has no mtime: a changed upstream needs a fresh output prefix
    stat = Path(unit).stat()
    return {"path": unit, "size": stat.st_size, "mtime": stat.st_mtime}


def part_stem(parts_dir: Path, index: int, unit: str) -> Path:
    key = unit if unit.startswith(HF_PREFIX) else str(Path(unit).resolve())
    return parts_dir / f"{index:06d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def part_is_current(stem: Path, unit: str, options: dict) -> bool:
    """A committed part for this very input (file or dataset shard) and these options exists."""
    marker = stem.with_suffix(".json")
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return False
    return done.get("source") == source_of(unit) and done.get("options") == options


def tokenize_file(job: tuple[int, str, str]) -> dict:
    """Tokenize one input file into the part at ``stem``; returns its per-file report."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    index, unit, stem_str = job
    stem, opts, encoder = Path(stem_str), _OPTS, _ENCODER
    if encoder is None:
        raise RuntimeError("tokenize_file runs in a worker set up by _init_worker")
    sp = encoder.sp
    source = source_of(unit)
    if unit.startswith(HF_PREFIX):
        records = iter_hf_records(*parse_hf_unit(unit), text_key=opts["text_key"])
    else:
        records = iter_records(Path(unit), opts["text_key"])
    dtype = token_dtype(sp.get_piece_size())
    head = np.array([sp.bos_id()] if opts["bos"] else [], dtype)
    tail = np.array([sp.eos_id()], dtype)
    builders: dict[str, IndexedDatasetBuilder] = {}
    sets: dict[str, dict] = {}
    report = {
        "size": 0,
        "mtime": None,
        **source,
        "documents": 0,
        "tokens": 0,
        "filtered_out": 0,
        "bad_lines": 0,
        "bad": [],
    }
    include, exclude = set(opts["include_sets"] or []), set(opts["exclude_sets"])
    batch: list[Document] = []
    batch_bytes = 0

    def builder_for(name: str) -> IndexedDatasetBuilder:
        key = name if opts["split_by_set"] else "all"
        if key not in builders:
            builders[key] = IndexedDatasetBuilder(f"{stem}.{key}.bin.tmp", dtype=dtype)
        return builders[key]

    def flush() -> None:
        nonlocal batch_bytes
        if not batch:
            return
        ids, lengths = encoder.encode([d.text for d in batch])
        ids = ids.astype(dtype, copy=False)
        end = 0
        for doc, n in zip(batch, lengths.tolist()):
            start, end = end, end + n
            seq = np.concatenate((head, ids[start:end], tail))
            name = doc.set_name or "unknown"
            builder_for(name).add_document(seq, [len(seq)])
            report["documents"] += 1
            report["tokens"] += len(seq)
            entry = sets.setdefault(name, {"documents": 0, "tokens": 0})
            entry["documents"] += 1
            entry["tokens"] += len(seq)
        batch.clear()
        batch_bytes = 0

    for item in records:
        if isinstance(item, BadLine):
            report["bad_lines"] += 1
            if len(report["bad"]) < MAX_BAD_LINES_LISTED:
                report["bad"].append({"line": item.line, "reason": item.reason})
            continue
        if (include and item.set_name not in include) or item.set_name in exclude:
            report["filtered_out"] += 1
            continue
        batch.append(item)
        batch_bytes += len(item.text)
        if batch_bytes >= opts["batch_bytes"]:
            flush()
    flush()
    for key, builder in builders.items():
        builder.finalize(f"{stem}.{key}.idx.tmp")
        os.replace(f"{stem}.{key}.bin.tmp", f"{stem}.{key}.bin")
        os.replace(f"{stem}.{key}.idx.tmp", f"{stem}.{key}.idx")
    report["sets"] = sets
    report["parts"] = sorted(builders)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    marker = {"source": source, "options": output_identity(opts), "report": report}
    tmp = Path(f"{stem}.json.tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, f"{stem}.json")  # the commit
    return {"index": index, **report}


# ----------------------------------------------------------------------------------------------
# Driver


def merge_parts(stems: list[Path], reports: list[dict], out: Path, key: str, dtype) -> None:
    """Concatenate the parts named ``key`` of ``stems`` (in order) into ``out``.bin/.idx, atomically."""
    concatenate([f"{stem}.{key}" for stem, report in zip(stems, reports) if key in report["parts"]], out, dtype)


class Refused(Exception):
    """A bad invocation: ``main`` prints it on one line and exits with code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", nargs="+", help="files, directories, globs of .jsonl[.gz|.zst], or @LIST files of paths"
    )
    parser.add_argument(
        "--hf-dataset", metavar="NAME", help="stream a `datasets` dataset (hub name or local path) instead"
    )
    parser.add_argument("--split", default="train", help="split of --hf-dataset")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="processes over files")
    parser.add_argument("--threads", type=int, default=2, help="SentencePiece threads per worker")
    parser.add_argument("--batch-bytes", type=int, default=16 << 20, help="text per encode batch (memory bound)")
    parser.add_argument(
        "--memo-words",
        type=int,
        default=1 << 20,
        help="distinct words whose ids a worker remembers (~250 B each; 0: off; see data_prep/encoder.py)",
    )
    parser.add_argument("--no-bos", action="store_true", help="no BOS before each document")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--include-sets", nargs="*", default=None, help="keep only these redpajama_set_name values")
    parser.add_argument("--exclude-sets", nargs="*", default=[], help="drop these redpajama_set_name values")
    parser.add_argument("--split-by-set", action="store_true", help="one dataset per source set: PREFIX_<set>.bin/.idx")
    parser.add_argument("--strict", action="store_true", help="any bad line or file is fatal (exit 1)")
    parser.add_argument("--shard", metavar="I/N", help="take every N-th input file from the I-th (Slurm arrays)")
    parser.add_argument("--keep-parts", action="store_true", help="keep PREFIX.parts/ after the final merge")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.tokenizer = str(Path(args.tokenizer))  # as the manifest records it
    return args


def work_units(args: argparse.Namespace) -> list[str]:
    """The input files (or dataset shards) this run tokenizes, in output order; :class:`Refused` if
    the invocation is bad."""
    if not Path(args.tokenizer).is_file():
        raise Refused(f"--tokenizer {args.tokenizer} does not exist")
    if bool(args.input) == bool(args.hf_dataset):
        raise Refused("give either --input or --hf-dataset")
    try:
        if args.hf_dataset:
            n = hf_shard_count(args.hf_dataset, args.split)
            files = [hf_unit(args.hf_dataset, args.split, i, n) for i in range(n)]
        else:
            files = [str(p) for p in input_files(args.input)]
        if args.shard:
            i, _, n = args.shard.partition("/")
            files = shard(files, int(i), int(n))
    except (FileNotFoundError, ValueError) as exc:
        raise Refused(str(exc)) from None
    except Exception as exc:
        raise Refused(
            f"--hf-dataset {args.hf_dataset}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if not files and not args.shard:
        raise Refused("no input files")  # an array task may get none (more tasks than files): empty output
    if args.workers < 1 or args.threads < 1 or args.batch_bytes < 1 or args.memo_words < 0:
        raise Refused("--workers, --threads and --batch-bytes must be positive, --memo-words not negative")
    return files


def tokenize_pending(args: argparse.Namespace, pending: list[tuple[int, str, str]], options: dict) -> tuple[int, int]:
    """Tokenize the uncommitted parts with ``--workers`` processes, showing progress; returns (exit
    code, tokens written): 1 when ``--strict`` meets a bad line, else 0."""
    from tqdm import tqdm

    start, docs, tokens = time.perf_counter(), 0, 0
    total_bytes = sum(source_of(p).get("size", 0) for _, p, _ in pending) or len(pending)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, disable=args.no_progress, desc="tokenizing")
    with mp.get_context("spawn").Pool(
        args.workers, initializer=_init_worker, initargs=(args.tokenizer, options)
    ) as pool:
        for result in pool.imap_unordered(tokenize_file, pending):
            docs, tokens = docs + result["documents"], tokens + result["tokens"]
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(result["size"] or 1)
            bar.set_postfix(docs_s=f"{docs / elapsed:,.0f}", tok_s=f"{tokens / elapsed:,.0f}", refresh=False)
            if result["bad_lines"] and args.strict:
                pool.terminate()
                bad = result["bad"][0]
                print(
                    f"tokenize_slimpajama: error: {result['path']} line {bad['line']}: {bad['reason']} (--strict)",
                    file=sys.stderr,
                )
                return 1, tokens
    bar.close()
    return 0, tokens


def merge_outputs(args: argparse.Namespace, prefix: Path, stems: list[Path], reports: list[dict], dtype) -> dict:
    """Concatenate the committed parts into the output dataset(s); returns {set or 'all': prefix}."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    outputs = {}
    if args.split_by_set:
        for key in sorted({k for r in reports for k in r["parts"]}):
            out = prefix.with_name(f"{prefix.name}_{key}")
            merge_parts(stems, reports, out, key, dtype)
            outputs[key] = str(out)
    else:
        merge_parts(stems, reports, prefix, "all", dtype)
        outputs["all"] = str(prefix)
    return outputs


def dataset_manifest(
    args: argparse.Namespace, tokenizer_sha: str, vocab_size: int, dtype, outputs: dict, reports: list[dict]
) -> dict:
    """What ``PREFIX.manifest.json`` records: the tokenizer, the format, the outputs and every file's counts."""
    return {
        "tokenizer": args.tokenizer,
        "tokenizer_sha256": tokenizer_sha,
        "vocab_size": vocab_size,
        "bos": not args.no_bos,
        "eos": True,
        "dtype": np.dtype(dtype).name,
        "outputs": outputs,
        "files": [
            {k: r[k] for k in ("path", "size", "mtime", "documents", "tokens", "filtered_out", "bad_lines", "bad")}
            for r in reports
        ],
        "sets": sum_sets([r["sets"] for r in reports]),
    }


EXIT_WRITE_FAILED = 74
"""The output could not be written (disk full, quota): the committed parts stay, a rerun resumes."""


def lock_output(prefix: Path) -> FileLock:
    """Hold ``PREFIX.lock`` for the whole run: two runs on one prefix would overwrite each other's
    parts and merge; the second is refused (:class:`Refused`) instead."""
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        return hold_lock(prefix.with_name(prefix.name + ".lock"), f"--output-prefix {prefix}")
    except LockHeld as exc:
        raise Refused(f"{exc}: another tokenization is writing it") from None
    except OSError as exc:
        raise Refused(f"--output-prefix {prefix}: cannot write in {prefix.parent} ({exc.strerror})") from None


def remove_temporaries(prefix: Path) -> None:
    """The temporary files a failed run leaves: unfinished parts and the unfinished merge and manifest
    (committed parts stay, so that a rerun resumes)."""
    parts_dir = prefix.with_name(prefix.name + ".parts")
    leftovers = list(parts_dir.glob("*.tmp")) if parts_dir.is_dir() else []
    for pattern in (
        f".{prefix.name}.*.tmp",
        f".{prefix.name}_*.bin.tmp",
        f".{prefix.name}_*.idx.tmp",
        f".{prefix.name}_*.manifest.json.tmp",
    ):  # the merge's and the manifest's (split by set too)
        leftovers += prefix.parent.glob(pattern)
    for path in leftovers:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed.*")
    prefix = Path(args.output_prefix)
    try:
        files = work_units(args)
        lock = lock_output(prefix)
    except Refused as exc:
        print(f"tokenize_slimpajama: error: {exc}", file=sys.stderr)
        return 2
    try:
        return tokenize(args, files, prefix)
    except Exception as exc:
        error = write_error_in(exc)
        if error is None:
            raise
        remove_temporaries(prefix)
        print(
            f"tokenize_slimpajama: error: {describe_write_error(error, prefix.parent)}; committed parts are "
            "kept and a rerun resumes",
            file=sys.stderr,
        )
        return EXIT_WRITE_FAILED if error.errno in NO_SPACE else 2
    finally:
        lock.release()


def tokenize(args: argparse.Namespace, files: list[str], prefix: Path) -> int:
    """Tokenize every uncommitted part, merge the parts into the output and write its manifest."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    blocker = Encoder(sp, args.threads, args.memo_words).blocker  # what every worker's encoder will decide
    print(
        "word memo: " + (f"on ({args.memo_words:,} words per worker)" if blocker is None else f"off ({blocker})"),
        file=sys.stderr,
    )
    tokenizer_sha = sha256_of(Path(args.tokenizer))
    options = {
        "tokenizer_sha256": tokenizer_sha,
        "bos": not args.no_bos,
        "text_key": args.text_key,
        "include_sets": args.include_sets,
        "exclude_sets": args.exclude_sets,
        "split_by_set": args.split_by_set,
        "threads": args.threads,
        "batch_bytes": args.batch_bytes,
        "memo_words": args.memo_words,
    }
    identity = output_identity(options)
    parts_dir = prefix.with_name(prefix.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(prefix)  # a killed run's unfinished files: nothing reads them, they hold space
    stems = [part_stem(parts_dir, i, p) for i, p in enumerate(files)]
    pending = [(i, p, str(s)) for i, (p, s) in enumerate(zip(files, stems)) if not part_is_current(s, p, identity)]
    if len(files) > len(pending):
        print(
            f"resuming: {len(files) - len(pending)} of {len(files)} files already tokenized in {parts_dir}",
            file=sys.stderr,
        )

    # Importing megatron.core takes seconds; do it for the final merge while the workers run.
    preload = threading.Thread(
        target=importlib.import_module, args=("megatron.core.datasets.indexed_dataset",), daemon=True
    )
    preload.start()
    start = time.perf_counter()
    status, new_tokens = tokenize_pending(args, pending, options)
    if status:
        return status
    preload.join()

    # Every part is committed now; reports come from the markers so resumed files count too.
    for stem, path in zip(stems, files):
        if not part_is_current(stem, path, identity):
            raise RuntimeError(f"part {stem} for {path} is missing after tokenization")
    reports = [json.loads(s.with_suffix(".json").read_text())["report"] for s in stems]
    dtype = token_dtype(sp.get_piece_size())
    outputs = merge_outputs(args, prefix, stems, reports, dtype)
    manifest = dataset_manifest(args, tokenizer_sha, sp.get_piece_size(), dtype, outputs, reports)
    for p in [prefix] if not args.split_by_set else [Path(p) for p in outputs.values()]:
        write_manifest(p, manifest)
    if not args.keep_parts:
        shutil.rmtree(parts_dir)
    seconds = time.perf_counter() - start
    bad = sum(r["bad_lines"] for r in reports)
    print(
        f"wrote {', '.join(outputs.values())} (.bin/.idx): {sum(r['documents'] for r in reports)} documents, "
        f"{sum(r['tokens'] for r in reports)} tokens from {len(files)} files in {seconds:.1f} s "
        f"({new_tokens / max(seconds, 1e-9):,.0f} tokens/s this run); "
        f"{bad} bad lines skipped" + (" (see the manifest)" if bad else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
