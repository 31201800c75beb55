"""litespark.indexed_files: the .bin/.idx data preparation writes without torch, checked against
Megatron-Core's own builder and reader."""

from __future__ import annotations

import numpy as np
import pytest

from litespark.indexed_files import BadIndex, IndexWriter, concatenate, read_header, read_index


def _documents(rng, count: int, high: int) -> list[np.ndarray]:
    return [rng.integers(0, high, rng.integers(1, 50)) for _ in range(count)]


@pytest.mark.parametrize("dtype, high", [(np.uint16, 65_000), (np.int32, 130_000)])
def test_the_writer_writes_what_megatron_core_writes(tmp_path, dtype, high):
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    docs = _documents(rng, 300, high)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        theirs.add_document(doc, [len(doc)])
    theirs.finalize(str(tmp_path / "theirs.idx"))
    ours = IndexWriter(tmp_path / "ours.bin", dtype)
    for start in range(0, 300, 70):  # in batches of documents, as the tokenizer writes them
        batch = docs[start : start + 70]
        ours.add_documents(np.concatenate(batch), np.array([len(d) for d in batch]))
    ours.finalize(tmp_path / "ours.idx")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()
    read = IndexedDataset(str(tmp_path / "ours"))
    assert [read[i].tolist() for i in (0, 150, 299)] == [docs[i].tolist() for i in (0, 150, 299)]
    header = read_header(tmp_path / "ours.idx")
    assert (header.dtype, header.sequences, header.documents) == (np.dtype(dtype), 300, 300)


def test_concatenation_equals_megatron_core_add_index(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(1)
    prefixes = []
    for k, count in enumerate((5, 0, 17)):  # an empty dataset too (an array task with no work)
        docs = _documents(rng, count, 1000)
        writer = IndexWriter(tmp_path / f"p{k}.bin", np.uint16)
        if docs:
            writer.add_documents(np.concatenate(docs), np.array([len(d) for d in docs]))
        writer.finalize(tmp_path / f"p{k}.idx")
        prefixes.append(str(tmp_path / f"p{k}"))
    # A dataset with several sequences per document (Megatron's sentence splitting) is carried as it is.
    multi = IndexedDatasetBuilder(str(tmp_path / "multi.bin"), dtype=np.uint16)
    multi.add_document(np.arange(10), [4, 6])
    multi.finalize(str(tmp_path / "multi.idx"))
    prefixes.append(str(tmp_path / "multi"))
    concatenate(prefixes, tmp_path / "ours", np.uint16)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for prefix in prefixes:
        theirs.add_index(prefix)
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # no temporaries left
    header, lengths, _, documents = read_index(tmp_path / "ours.idx")
    assert header.documents == 5 + 17 + 1 and lengths[-2:].tolist() == [4, 6] and documents[-1] == header.sequences


def test_a_damaged_index_is_named_in_one_line(tmp_path):
    writer = IndexWriter(tmp_path / "d.bin", np.int32)
    writer.add_documents(np.arange(20), np.array([5, 15]))
    writer.finalize(tmp_path / "d.idx")
    whole = (tmp_path / "d.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(whole[:-3])
    with pytest.raises(BadIndex, match=r"cut.idx is truncated: \d+ bytes, its header promises \d+"):
        read_header(tmp_path / "cut.idx")
    (tmp_path / "junk.idx").write_bytes(b"hello")
    with pytest.raises(BadIndex, match=r"junk.idx is not a Megatron index"):
        read_header(tmp_path / "junk.idx")
    (tmp_path / "v2.idx").write_bytes(whole[:9] + (2).to_bytes(8, "little") + whole[17:])
    with pytest.raises(BadIndex, match="index version 2"):
        read_header(tmp_path / "v2.idx")
    (tmp_path / "float.idx").write_bytes(whole[:17] + bytes([6]) + whole[18:])
    with pytest.raises(BadIndex, match="dtype code 6"):
        read_header(tmp_path / "float.idx")
    with pytest.raises(BadIndex, match="holds int32 tokens, the output uint16"):
        IndexWriter(tmp_path / "o.bin", np.uint16).add_index(tmp_path / "d")
