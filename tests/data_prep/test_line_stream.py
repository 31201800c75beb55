"""data_prep.corpus.LineStream: byte-range chunks of an input cover every line once, in order,
whether the file is read from its start or entered at a chunk boundary, plain or compressed."""

from __future__ import annotations

import gzip
import random

import pytest
import zstandard

from data_prep.corpus import LineStream, count_lines, lines_before, split_lines


def _chunks(path, size: int, chunk: int, seek: bool) -> list[list[bytes]]:
    """The lines of each chunk of ``path``; ``seek``: a fresh stream entered at each chunk."""
    out, stream, k = [], LineStream(path), 0
    while True:
        if seek:
            stream = LineStream(path, k * chunk)
        start = stream.offset
        blob = stream.take((k + 1) * chunk)
        assert start >= k * chunk or start == 0
        out.append(split_lines(blob) if blob else [])
        if stream.exhausted or (seek and (k + 1) * chunk >= size):
            return out
        k += 1


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 10**6])
def test_chunks_cover_every_line_once_in_order(tmp_path, chunk):
    rng = random.Random(chunk)
    lines = [b"x" * rng.choice([0, 1, 3, 50, 300]) for _ in range(400)]
    data = b"\n".join(lines) + b"\n"
    plain = tmp_path / "f.jsonl"
    plain.write_bytes(data)
    joined = lambda chunks: [line for c in chunks for line in c]  # noqa: E731
    by_reading = _chunks(plain, len(data), chunk, seek=False)
    by_seeking = _chunks(plain, len(data), chunk, seek=True)
    assert joined(by_reading) == lines
    assert joined(by_seeking) == lines
    assert by_reading[: len(by_seeking)] == by_seeking[: len(by_reading)]
    for name, blob in (("f.jsonl.zst", zstandard.ZstdCompressor().compress(data)), ("f.jsonl.gz", gzip.compress(data))):
        (tmp_path / name).write_bytes(blob)
        assert _chunks(tmp_path / name, len(data), chunk, seek=False) == by_reading


def test_a_line_belongs_to_the_chunk_it_starts_in(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"aaaa\nbb\ncccccccc\nd\n")  # lines start at 0, 5, 8, 17
    stream = LineStream(path)
    assert stream.take(6) == b"aaaa\nbb\n"  # bytes 0-5: the lines starting at 0 and 5
    assert stream.take(12) == b"cccccccc\n"
    assert stream.take(12) == b""  # nothing starts before 12 any more
    assert LineStream(path, 6).take(100) == b"cccccccc\nd\n"  # entered mid-line: the next line starts the chunk
    assert LineStream(path, 5).take(6) == b"bb\n"
    assert lines_before(path, 8) == 2 and count_lines(b"a\nb") == 2


def test_a_truncated_stream_ends_with_its_error_and_drops_the_cut_line(tmp_path):
    rng = random.Random(0)
    data = b"".join(b'{"text": "%d %s"}\n' % (i, rng.randbytes(200).hex().encode()) for i in range(5000))
    compressed = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[: len(compressed) // 2])
    stream = LineStream(path)
    got = stream.take(10**9)
    assert stream.exhausted and "truncated" in (stream.error or "")
    assert got.endswith(b"\n") and data.startswith(got) and len(got) < len(data)
