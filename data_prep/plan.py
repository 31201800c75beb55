"""The work of a tokenization, planned: inputs into units and parts, parts into worker jobs.

Why a plan: the driver must give every worker something to do whatever the input looks like (one
1 GB file, or 60,000 small ones), never move token data itself, and know when each part is whole so
that it can commit it.  Uncompressed files are cut into byte ranges the workers read themselves;
compressed files and dataset shards are either handed whole to workers (when there are at least as
many as workers) or read here and fed to the workers in batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.corpus import Document, LineStream, iter_hf_records
from data_prep.jobs import ChunkEnd, Job, chunk_batches
from data_prep.parts import committed_marker, is_dataset, parse_hf_unit, part_stem, splittable


@dataclass(frozen=True)
class Unit:
    """Chunks ``first`` .. ``last`` of input ``source`` (the ``index``-th); ``last`` None: to its end.
    An uncompressed file is one unit per chunk; a compressed file or a dataset shard is one unit."""

    index: int
    source: str
    first: int = 0
    last: int | None = None


def plan_units(sources: list[str], chunk_bytes: int) -> tuple[list[Unit], list[int]]:
    """The work units in output order, and their sizes in bytes (for sharding and progress)."""
    units, sizes = [], []
    for index, source in enumerate(sources):
        size = 0 if is_dataset(source) else Path(source).stat().st_size
        if splittable(source):
            for k in range(max(1, -(-size // chunk_bytes))):
                units.append(Unit(index, source, k, k))
                sizes.append(max(0, min(chunk_bytes, size - k * chunk_bytes)))
        else:
            units.append(Unit(index, source))
            sizes.append(size or 1)
    return units, sizes


@dataclass
class PartPlan:
    """What the driver needs to commit a part once its pieces are in."""

    pieces: int
    first_line: int | None  # lines of the input before the part (None: counted only if needed)
    lines: int | None = None  # lines in the part (None: the sum of the pieces')
    stream_end: bool = False
    error: str | None = None  # the input is damaged after the part's last line
    relative: bool = False  # each piece numbers its lines from 1 (ranges), not from the part's start


class Planner:
    """The jobs of every part not yet committed, in output order.  ``plans`` says, per part, how many
    pieces to wait for; a fed stream's part gets its plan only when its last batch has been read."""

    def __init__(
        self, units: list[Unit], args: argparse.Namespace, parts_dir: Path, identity: dict, stream_jobs: bool
    ) -> None:
        self.units, self.args, self.parts_dir, self.identity = units, args, parts_dir, identity
        self.stream_jobs = stream_jobs
        self.plans: dict[tuple[int, int], PartPlan] = {}
        self.sources = {u.index: u.source for u in units}
        self.skipped, self.skipped_bytes = 0, 0  # parts (and their input bytes) already committed

    def stem(self, index: int, source: str, chunk: int) -> str:
        return str(part_stem(self.parts_dir, index, source, chunk))

    def committed(self, index: int, source: str, chunk: int) -> dict | None:
        stem = part_stem(self.parts_dir, index, source, chunk)
        return committed_marker(stem, source, self.identity, self.args.chunk_bytes)

    def committed_chunks(self, unit: Unit) -> tuple[frozenset, bool]:
        """The committed chunks of a stream, and whether they are all of it."""
        name = part_stem(self.parts_dir, unit.index, unit.source, 0).name.rsplit("-", 1)[0]
        found, end = set(), None
        for marker_path in self.parts_dir.glob(f"{name}-*.json"):
            chunk = int(marker_path.stem.rsplit("-", 1)[1])
            marker = self.committed(unit.index, unit.source, chunk)
            if marker is not None:
                found.add(chunk)
                end = chunk if marker["stream_end"] else end
        return frozenset(found), end is not None and found == set(range(end + 1))

    def jobs(self) -> Iterator[Job]:
        for unit in self.units:
            if splittable(unit.source):
                yield from self._ranges(unit)
            elif self.stream_jobs:
                yield from self._stream(unit)
            elif is_dataset(unit.source):
                yield from self._fed_records(unit)
            else:
                yield from self._fed_lines(unit)

    def _ranges(self, unit: Unit) -> Iterator[Job]:
        path, chunk_bytes, workers = Path(unit.source), self.args.chunk_bytes, self.args.workers
        size = path.stat().st_size
        chunks = max(1, -(-size // chunk_bytes))
        # About four ranges per worker, of a chunk or of a small file, none below one batch: every worker
        # gets work and the last range leaves little idle time.
        range_bytes = max(self.args.batch_bytes, -(-min(chunk_bytes, size) // (4 * workers)))
        for k in range(unit.first, (unit.last if unit.last is not None else chunks - 1) + 1):
            start, end = k * chunk_bytes, (k + 1) * chunk_bytes
            span = max(0, min(end, size) - start)
            if self.committed(unit.index, unit.source, k) is not None:
                self.skipped, self.skipped_bytes = self.skipped + 1, self.skipped_bytes + span
                continue
            count = max(1, -(-span // range_bytes))
            self.plans[(unit.index, k)] = PartPlan(
                count, 0 if k == 0 else None, stream_end=k == chunks - 1, relative=True
            )
            for r in range(count):
                a, b = start + r * range_bytes, (end if r == count - 1 else start + (r + 1) * range_bytes)
                yield Job(
                    "range",
                    unit.index,
                    unit.source,
                    self.stem(unit.index, unit.source, k),
                    chunk=k,
                    piece=r,
                    start=a,
                    end=b,
                    raw_bytes=max(0, min(b, size) - min(a, size)),
                )

    def _stream(self, unit: Unit) -> Iterator[Job]:
        done, whole = self.committed_chunks(unit)
        self.skipped += len(done)
        if whole:
            self.skipped_bytes += Path(unit.source).stat().st_size if not is_dataset(unit.source) else 1
            return
        size = 1 if is_dataset(unit.source) else Path(unit.source).stat().st_size
        yield Job(
            "stream",
            unit.index,
            unit.source,
            str(self.parts_dir),
            committed=done,
            chunk_bytes=self.args.chunk_bytes,
            raw_bytes=size,
        )

    def _fed_lines(self, unit: Unit) -> Iterator[Job]:
        done, whole = self.committed_chunks(unit)
        self.skipped += len(done)
        stream = LineStream(Path(unit.source))
        if whole:
            self.skipped_bytes += Path(unit.source).stat().st_size
            return
        pieces, raw = 0, 0
        for event in chunk_batches(stream, self.args.chunk_bytes, self.args.batch_bytes, done):
            if isinstance(event, ChunkEnd):
                part = (unit.index, event.chunk)
                self.plans[part] = PartPlan(pieces, event.first_line, event.lines, event.stream_end, event.error)
                pieces = 0
                continue
            chunk, blob, first_line = event
            yield Job(
                "lines",
                unit.index,
                unit.source,
                self.stem(unit.index, unit.source, chunk),
                chunk=chunk,
                piece=pieces,
                payload=blob,
                first_line=first_line,
                raw_bytes=stream.raw - raw,
            )
            pieces, raw = pieces + 1, stream.raw
        self.skipped_bytes += stream.raw - raw  # the part of the file read past committed chunks

    def _fed_records(self, unit: Unit) -> Iterator[Job]:
        if self.committed(unit.index, unit.source, 0) is not None:
            self.skipped, self.skipped_bytes = self.skipped + 1, self.skipped_bytes + 1
            return
        stem = self.stem(unit.index, unit.source, 0)
        records: list = []
        size, pieces, lines = 0, 0, 0
        for item in iter_hf_records(*parse_hf_unit(unit.source), text_key=self.args.text_key):
            records.append(item)
            size += len(item.text) if isinstance(item, Document) else 0
            if size >= self.args.batch_bytes:
                yield Job("records", unit.index, unit.source, stem, piece=pieces, payload=records)
                pieces, lines, records, size = pieces + 1, lines + len(records), [], 0
        yield Job("records", unit.index, unit.source, stem, piece=pieces, payload=records, raw_bytes=1)
        self.plans[(unit.index, 0)] = PartPlan(pieces + 1, 0, lines + len(records), stream_end=True)
