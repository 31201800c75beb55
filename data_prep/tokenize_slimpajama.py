"""SlimPajama (or any JSONL corpus) to a Megatron indexed dataset: ``PREFIX.bin`` + ``PREFIX.idx``.

    python data_prep/tokenize_slimpajama.py --input data/slimpajama/train --tokenizer tokenizer.model \\
        --output-prefix data/slimpajama_train --workers 16

One sequence per document, as Megatron-LM's ``tools/preprocess_data.py --append-eod`` writes it for the
same tokenizer (``data_prep/tokenizer_loader.py``: a SentencePiece model, a Hugging Face
``tokenizer.json`` or a checkpoint directory).  Tokens are uint16 below a 65,500 vocabulary, else int32.

How it works (``data_prep/plan.py``, ``data_prep/jobs.py``): ``--workers`` processes parse the JSON and
encode, each writing pieces of the output itself; this process plans their jobs and commits the
output.  An uncompressed file is cut into byte ranges that the workers read themselves, so one large
file is encoded by every worker; compressed files and dataset shards go whole to the workers when
there are at least as many as workers, else this process reads them and hands out batches of lines.
The output is committed in parts under ``PREFIX.parts/`` (``data_prep/parts.py``): one per
``--chunk-bytes`` of each input file (the lines that start in that byte range of the decompressed
text), marked done by its ``.json``.  A rerun after Ctrl-C or SIGKILL skips every committed part whose
input, tokenizer and options are unchanged.  The parts are concatenated in order into
``PREFIX.bin/.idx`` (temporary names, renamed when complete), so an interrupted and resumed run is
byte-identical to an uninterrupted one, whatever ``--workers``, ``--batch-bytes`` or
``--chunk-bytes``.  ``--shard I/N`` (Slurm array tasks) takes a contiguous share of the parts,
balanced by size; an uncompressed file is split at chunk boundaries, so one file can feed many tasks.

Bad input (invalid UTF-8 or JSON, a lone surrogate escape, a line without the text field, a truncated
or corrupt compressed file) is skipped, counted per file with line numbers in ``PREFIX.manifest.json``
and the summary; ``--strict`` makes it fatal (exit 1).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from data_prep.corpus import Document, hf_shard_count, input_files, iter_hf_records, iter_records, lines_before, shard
from data_prep.jobs import Job, build_encoder, init_worker, run_job, token_dtype
from data_prep.merge_indexed import sum_sets, write_manifest
from data_prep.parts import (
    MAX_BAD_LINES_LISTED,
    add_report,
    commit_part,
    committed_marker,
    empty_report,
    hf_unit,
    is_dataset,
    parse_hf_unit,
    part_stem,
    source_of,
    splittable,
)
from data_prep.plan import PartPlan, Planner, Unit, plan_units
from data_prep.tokenizer_loader import HUGGINGFACE, BadTokenizer, TokenizerSpec, load_tokenizer, sha256_of
from litespark.files import (
    NO_SPACE,
    FileLock,
    LockHeld,
    describe_write_error,
    hold_lock,
    write_error_in,
)
from litespark.indexed_files import concatenate

TUNING = ("threads", "batch_bytes", "memo_words")  # options that change speed and memory, never the output
JOBS_PER_WORKER = 2  # jobs handed out ahead: keeps every worker busy, bounds the driver's memory


def output_identity(options: dict) -> dict:
    """The options a committed part must share to be reused."""
    return {k: v for k, v in options.items() if k not in TUNING}


# ----------------------------------------------------------------------------------------------
# Driver


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
    parser.add_argument(
        "--tokenizer", required=True, help="SentencePiece .model, Hugging Face tokenizer.json, or a directory with one"
    )
    parser.add_argument("--eos-token", help="the EOS of a tokenizer.json without tokenizer_config.json beside it")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoder processes")
    parser.add_argument("--threads", type=int, default=1, help="tokenizer threads per worker")
    parser.add_argument("--batch-bytes", type=int, default=4 << 20, help="text per batch a worker encodes")
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=256 << 20,
        help="input bytes per committed part: what a rerun resumes from and --shard splits a file at",
    )
    parser.add_argument(
        "--memo-words",
        type=int,
        default=1 << 20,
        help="distinct words whose ids a worker remembers (~250 B each; 0: off; see data_prep/encoder.py)",
    )
    parser.add_argument(
        "--no-bos", action="store_true", help="no BOS (Hugging Face: none of the tokenizer's special tokens)"
    )
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--include-sets", nargs="*", default=None, help="keep only these redpajama_set_name values")
    parser.add_argument("--exclude-sets", nargs="*", default=[], help="drop these redpajama_set_name values")
    parser.add_argument("--split-by-set", action="store_true", help="one dataset per source set: PREFIX_<set>.bin/.idx")
    parser.add_argument("--strict", action="store_true", help="any bad line or file is fatal (exit 1)")
    parser.add_argument(
        "--shard", metavar="I/N", help="a contiguous 1/N of the work, balanced by size (Slurm array task I)"
    )
    parser.add_argument("--keep-parts", action="store_true", help="keep PREFIX.parts/ after the final merge")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.tokenizer = str(Path(args.tokenizer))  # as the manifest records it
    return args


def input_sources(args: argparse.Namespace) -> list[str]:
    """The input files (or dataset shards) in output order; :class:`Refused` if the invocation is bad."""
    if bool(args.input) == bool(args.hf_dataset):
        raise Refused("give either --input or --hf-dataset")
    if args.workers < 1 or args.threads < 1 or args.batch_bytes < 1 or args.chunk_bytes < 1 or args.memo_words < 0:
        raise Refused(
            "--workers, --threads, --batch-bytes and --chunk-bytes must be positive, --memo-words not negative"
        )
    try:
        if args.hf_dataset:
            n = hf_shard_count(args.hf_dataset, args.split)
            return [hf_unit(args.hf_dataset, args.split, i, n) for i in range(n)]
        return [str(p) for p in input_files(args.input)]
    except (FileNotFoundError, ValueError) as exc:
        raise Refused(str(exc)) from None
    except Exception as exc:
        raise Refused(
            f"--hf-dataset {args.hf_dataset}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None


def first_documents(sources: list[str], limit: int = 1 << 18) -> list[str]:
    """The texts of the first documents of the input, about ``limit`` characters (a sample to check
    the word memo of a Hugging Face tokenizer on)."""
    texts: list[str] = []
    size = 0
    for source in sources:
        records = iter_hf_records(*parse_hf_unit(source)) if is_dataset(source) else iter_records(Path(source))
        for item in records:
            if isinstance(item, Document):
                texts.append(item.text)
                size += len(item.text)
                if size >= limit:
                    return texts
    return texts


def work_units(args: argparse.Namespace, sources: list[str]) -> tuple[list[Unit], list[int]]:
    """This run's units (all, or its ``--shard``) and their sizes; :class:`Refused` if there are none."""
    units, sizes = plan_units(sources, args.chunk_bytes)
    if args.shard:
        try:
            i, _, n = args.shard.partition("/")
            taken = shard(sizes, int(i), int(n))
        except ValueError as exc:
            raise Refused(f"--shard {args.shard}: {exc}") from None
        return units[taken.start : taken.stop], sizes[taken.start : taken.stop]
    if not units:
        raise Refused("no input files")  # an array task may get none (more tasks than work): empty output
    return units, sizes


class Workers:
    """Jobs run by ``--workers`` processes, or in this process for an input smaller than one batch."""

    def __init__(self, workers: int, spec: TokenizerSpec, options: dict, inline: bool) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.window = workers * JOBS_PER_WORKER
        self.pending: dict[Future, Job] = {}
        if inline:
            init_worker(spec, options)
        else:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=init_worker, initargs=(spec, options)
            )

    def run(self, jobs: Iterator[Job]) -> Iterator[tuple[Job, list[dict]]]:
        """(job, results) as jobs finish, in any order; at most ``window`` jobs in flight."""
        for job in jobs:
            if self.pool is None:
                yield job, run_job(job)
                continue
            self.pending[self.pool.submit(run_job, job)] = job
            while len(self.pending) >= self.window:
                yield from self._finished()
        while self.pending:
            yield from self._finished()

    def _finished(self) -> Iterator[tuple[Job, list[dict]]]:
        done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
        for future in done:
            job = self.pending.pop(future)
            try:
                results = future.result()
            except BrokenProcessPool:
                raise WorkerDied(
                    "a worker process died (killed, or out of memory: lower --batch-bytes or --workers)"
                ) from None
            yield job, results

    def close(self, finished: bool) -> None:
        """Wait for the idle workers when all went well; stop them at once otherwise."""
        if self.pool is None:
            return
        if not finished:
            for process in list((self.pool._processes or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


class WorkerDied(Exception):
    """A worker process ended without a result: ``main`` says so in one line (exit 1)."""


class Terminated(Exception):
    """SIGTERM or SIGHUP reached the driver (``scancel``, ``kill``, a closed terminal): raised in the main
    thread so that the clean-up runs: the workers are stopped, not orphaned, and the lock released."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


class Committer:
    """Collects the pieces of each part and commits the part when its plan's pieces are all in."""

    def __init__(self, planner: Planner, identity: dict, dtype) -> None:
        self.planner, self.identity, self.dtype = planner, identity, dtype
        self.pieces: dict[tuple[int, int], list[dict]] = {}

    def add(self, job: Job, results: list[dict]) -> list[tuple[str, dict]]:
        """Take a job's results; returns (source, marker) of every part this completes."""
        committed = []
        for result in results:
            part = tuple(result["part"])
            if result.get("complete"):  # a stream job's part: whole in one piece
                plan = PartPlan(1, result["first_line"], result["lines"], result["stream_end"], result["error"])
                committed.append((job.source, self._commit(part, job.source, plan, [result])))
            else:
                self.pieces.setdefault(part, []).append(result)
        return committed + self.ready()

    def ready(self) -> list[tuple[str, dict]]:
        """Commit every part whose pieces are all in (a planned part with none at once)."""
        committed = []
        for part, plan in list(self.planner.plans.items()):
            pieces = self.pieces.get(part, [])
            if len(pieces) == plan.pieces:
                del self.planner.plans[part]
                self.pieces.pop(part, None)
                source = self.planner.sources[part[0]]
                committed.append((source, self._commit(part, source, plan, pieces)))
        return committed

    def _commit(self, part: tuple[int, int], source: str, plan: PartPlan, pieces: list[dict]) -> dict:
        pieces = sorted(pieces, key=lambda p: p["piece"])
        report = empty_report()
        first_line = plan.first_line
        if first_line is None and (any(p["report"]["bad"] for p in pieces) or plan.error):
            first_line = lines_before(Path(source), pieces[0].get("offset", 0))  # counted only when needed
        base, lines = first_line or 0, 0
        for piece in pieces:
            for bad in piece["report"]["bad"]:
                bad["line"] += base + (lines if plan.relative else 0)
            lines += piece["lines"]
            add_report(report, piece["report"])
        lines = plan.lines if plan.lines is not None else lines
        if plan.error:
            report["bad_lines"] += 1
            last = base + lines
            if len(report["bad"]) < MAX_BAD_LINES_LISTED:
                report["bad"].append(
                    {"line": last + 1, "reason": f"unreadable stream after line {last} ({plan.error})"}
                )
        marker = {
            "source": source_of(source),
            "options": self.identity,
            "chunk_bytes": self.planner.args.chunk_bytes,
            "chunk": part[1],
            "lines": lines,
            "stream_end": plan.stream_end,
            "report": report,
        }
        return commit_part(part_stem(self.planner.parts_dir, part[0], source, part[1]), pieces, self.dtype, marker)


def tokenize_pending(
    args: argparse.Namespace, units: list[Unit], sizes: list[int], spec: TokenizerSpec, options: dict, parts_dir: Path
) -> tuple[int, int, int]:
    """Encode and commit every part not yet committed, showing progress; returns (exit code, tokens
    written, parts skipped): the code is 1 when ``--strict`` meets a bad line, else 0."""
    from tqdm import tqdm

    identity = output_identity(options)
    inline = sum(sizes) <= args.batch_bytes and all(splittable(u.source) for u in units)  # small, sizes known
    streams = sum(1 for u in units if not splittable(u.source))
    planner = Planner(units, args, parts_dir, identity, stream_jobs=streams >= args.workers and not inline)
    committer = Committer(planner, identity, token_dtype(spec.vocab_size))
    workers = Workers(args.workers, spec, options, inline)
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, disable=args.no_progress, desc="tokenizing")
    start, docs, tokens, shown, finished = time.perf_counter(), 0, 0, 0, False
    try:
        for job, results in workers.run(planner.jobs()):
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(job.raw_bytes + planner.skipped_bytes - shown)
            shown = planner.skipped_bytes
            for source, marker in committer.add(job, results):
                report = marker["report"]
                docs, tokens = docs + report["documents"], tokens + report["tokens"]
                bar.set_postfix(docs_s=f"{docs / elapsed:,.0f}", tok_s=f"{tokens / elapsed:,.0f}", refresh=False)
                if report["bad_lines"] and args.strict:
                    bad = report["bad"][0]
                    print(
                        f"tokenize_slimpajama: error: {source} line {bad['line']}: {bad['reason']} (--strict)",
                        file=sys.stderr,
                    )
                    return 1, tokens, planner.skipped
        committer.ready()  # parts planned after their last piece came in (a fed stream's last chunk)
        if planner.plans:
            raise RuntimeError(f"parts {sorted(planner.plans)} were planned but not all their pieces came back")
        finished = True
    finally:
        workers.close(finished)
        bar.close()
    return 0, tokens, planner.skipped


def committed_parts(units: list[Unit], parts_dir: Path, identity: dict, chunk_bytes: int) -> list[tuple[Path, dict]]:
    """(stem, marker) of every part of ``units``, in output order; RuntimeError if one is missing."""
    found = []
    for unit in units:
        chunk = unit.first
        while unit.last is None or chunk <= unit.last:
            stem = part_stem(parts_dir, unit.index, unit.source, chunk)
            marker = committed_marker(stem, unit.source, identity, chunk_bytes)
            if marker is None:
                raise RuntimeError(f"part {stem} of {unit.source} is missing after tokenization")
            found.append((stem, marker))
            if marker["stream_end"]:
                break
            chunk += 1
    return found


def file_reports(parts: list[tuple[Path, dict]], sources: list[str]) -> list[dict]:
    """One manifest entry per input (its parts' counts summed), in order."""
    by_source: dict[str, dict] = {}
    for _, marker in parts:
        source, report = marker["source"], marker["report"]
        entry = by_source.setdefault(
            source["path"],
            {
                "path": source["path"],
                "size": source.get("size", 0),
                "mtime": source.get("mtime"),
                "chunks": [marker["chunk"], marker["chunk"]],
                **empty_report(),
            },
        )
        entry["chunks"][1] = marker["chunk"]
        add_report(entry, report)
    return [by_source[s] for s in dict.fromkeys(sources) if s in by_source]


def merge_outputs(args: argparse.Namespace, prefix: Path, parts: list[tuple[Path, dict]], dtype) -> dict:
    """Concatenate the committed parts into the output dataset(s); returns {set or 'all': prefix}."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for _, m in parts for k in m["parts"]}) if args.split_by_set else ["all"]
    outputs = {}
    for key in keys:
        out = prefix.with_name(f"{prefix.name}_{key}") if args.split_by_set else prefix
        concatenate([f"{stem}.{key}" for stem, m in parts if key in m["parts"]], out, dtype)
        outputs[key] = str(out)
    return outputs


def dataset_manifest(args: argparse.Namespace, spec: TokenizerSpec, sha: str, outputs: dict, files: list[dict]) -> dict:
    """What ``PREFIX.manifest.json`` records: the tokenizer, the format, the outputs and every file's counts."""
    return {
        "tokenizer": args.tokenizer,
        "tokenizer_kind": spec.kind,
        "tokenizer_sha256": sha,
        "vocab_size": spec.vocab_size,
        "bos": not args.no_bos,
        "eos": True,
        "eos_id": spec.eos_id,
        "dtype": np.dtype(token_dtype(spec.vocab_size)).name,
        "outputs": outputs,
        "files": [{k: v for k, v in f.items() if k != "sets"} for f in files],
        "sets": sum_sets([f["sets"] for f in files]),
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
    """The temporary files a failed run leaves: unfinished parts, pieces of uncommitted parts and the
    unfinished merge and manifest (committed parts stay, so that a rerun resumes)."""
    parts_dir = prefix.with_name(prefix.name + ".parts")
    leftovers = []
    if parts_dir.is_dir():  # unfinished files, and the pieces of parts no one will commit (no worker runs now)
        leftovers = [*parts_dir.glob("*.tmp"), *parts_dir.glob("*.r[0-9][0-9][0-9][0-9][0-9].bin")]
        leftovers += parts_dir.glob("*.r[0-9][0-9][0-9][0-9][0-9].idx")
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
    prefix = Path(args.output_prefix)
    try:
        spec = load_tokenizer(args.tokenizer, args.eos_token)
        sources = input_sources(args)
        units, sizes = work_units(args, sources)
        lock = lock_output(prefix)
    except (Refused, BadTokenizer) as exc:
        print(f"tokenize_slimpajama: error: {exc}", file=sys.stderr)
        return 2
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return tokenize(args, spec, sources, units, sizes, prefix)
    except Terminated as exc:
        print(
            f"tokenize_slimpajama: stopped by {exc}; the workers were stopped, committed parts are kept and a "
            "rerun resumes",
            file=sys.stderr,
        )
        return 128 + exc.signum
    except WorkerDied as exc:
        print(f"tokenize_slimpajama: error: {exc}; committed parts are kept and a rerun resumes", file=sys.stderr)
        return 1
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
        remove_temporaries(prefix)
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tokenize(
    args: argparse.Namespace, spec: TokenizerSpec, sources: list[str], units: list[Unit], sizes: list[int], prefix: Path
) -> int:
    """Tokenize every uncommitted part, merge the parts into the output and write its manifest."""
    memo_words = args.memo_words
    encoder = build_encoder(spec, 1, memo_words, not args.no_bos)  # what every worker's encoder decides
    blocker = encoder.blocker
    if blocker is None and spec.kind == HUGGINGFACE:  # its regex is another engine's: compare on the input
        blocker = encoder.check(first_documents(sources))
    memo = f"on ({memo_words:,} words per worker)" if blocker is None else f"off ({blocker})"
    print(f"tokenizer: {spec.describe()}; word memo: {memo}", file=sys.stderr)
    memo_words = memo_words if blocker is None else 0
    sha = sha256_of(spec.file)
    options = {
        "tokenizer_sha256": sha,
        "eos_id": spec.eos_id,
        "bos": not args.no_bos,
        "text_key": args.text_key,
        "include_sets": args.include_sets,
        "exclude_sets": args.exclude_sets,
        "split_by_set": args.split_by_set,
        "threads": args.threads,
        "batch_bytes": args.batch_bytes,
        "memo_words": memo_words,
    }
    identity = output_identity(options)
    parts_dir = prefix.with_name(prefix.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(prefix)  # a killed run's unfinished files: nothing reads them, they hold space
    start = time.perf_counter()
    status, new_tokens, skipped = tokenize_pending(args, units, sizes, spec, options, parts_dir)
    if skipped:
        print(f"resuming: {skipped} parts already tokenized in {parts_dir} were kept", file=sys.stderr)
    if status:
        return status
    parts = committed_parts(units, parts_dir, identity, args.chunk_bytes)
    files = file_reports(parts, sources)
    outputs = merge_outputs(args, prefix, parts, token_dtype(spec.vocab_size))
    manifest = dataset_manifest(args, spec, sha, outputs, files)
    for p in [prefix] if not args.split_by_set else [Path(p) for p in outputs.values()]:
        write_manifest(p, manifest)
    if not args.keep_parts:
        shutil.rmtree(parts_dir)
    seconds = time.perf_counter() - start
    bad = sum(f["bad_lines"] for f in files)
    peaks = [resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(
        f"wrote {', '.join(outputs.values())} (.bin/.idx): {sum(f['documents'] for f in files)} documents, "
        f"{sum(f['tokens'] for f in files)} tokens from {len(files)} files in {seconds:.1f} s "
        f"({new_tokens / max(seconds, 1e-9):,.0f} tokens/s this run; peak RSS {peaks[0]:,.0f} MiB driver, "
        f"{peaks[1]:,.0f} MiB per worker); "
        f"{bad} bad lines skipped" + (" (see the manifest)" if bad else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
