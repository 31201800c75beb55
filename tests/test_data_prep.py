"""data_prep: sample corpus -> tokenizer -> Megatron indexed dataset, checked by reading it back."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


def _run(script: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, f"data_prep/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _run("make_sample.py", "--out", str(root / "sample"), "--max-mb", "1")
    _run("train_tokenizer.py", "--input", str(root / "sample" / "train"), "--vocab-size", "400",
         "--out", str(root / "tok.model"))
    return root


def _documents(path):
    from data_prep.corpus import input_files, iter_texts

    return [(text, name) for f in input_files([str(path)]) for text, name in iter_texts(f)]


def test_sample_has_slimpajama_layout(corpus):
    files = sorted(p.relative_to(corpus / "sample").as_posix() for p in (corpus / "sample").rglob("*.jsonl.zst"))
    assert any(f.startswith("train/chunk1/example_train_") for f in files)
    assert any(f.startswith("validation/chunk1/example_validation_") for f in files)
    names = {name for _, name in _documents(corpus / "sample")}
    assert names == {"RedPajamaGithub", "RedPajamaWikipedia"}


def test_tokenizer_is_llama_style(corpus):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(corpus / "tok.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.get_piece_size()) == (0, 1, 2, 400)
    text = "héllo ✓ 1234"
    assert sp.decode(sp.encode(text)) == text  # byte fallback: nothing is lost


@pytest.mark.parametrize("bos", [True, False])
def test_round_trip_through_megatron_indexed_dataset(corpus, tmp_path, bos):
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = tmp_path / "train"
    _run("tokenize_slimpajama.py", "--input", str(corpus / "sample" / "train"), "--tokenizer", str(corpus / "tok.model"),
         "--output-prefix", str(prefix), *([] if bos else ["--no-bos"]))
    sp = spm.SentencePieceProcessor(model_file=str(corpus / "tok.model"))
    expected = [([1] if bos else []) + sp.encode(text) + [2] for text, _ in _documents(corpus / "sample" / "train")]
    ds = IndexedDataset(str(prefix))
    assert ds.index.dtype == np.uint16
    assert len(ds) == len(expected) and len(ds.document_indices) == len(expected) + 1
    for i in range(len(ds)):
        assert ds[i].tolist() == expected[i], f"document {i} differs"
    manifest = json.loads((tmp_path / "train.manifest.json").read_text())
    assert manifest["vocab_size"] == 400 and manifest["bos"] is bos
    assert sum(f["tokens"] for f in manifest["files"]) == sum(map(len, expected))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_set_filters(corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    _run("tokenize_slimpajama.py", "--input", str(corpus / "sample" / "train"), "--tokenizer", str(corpus / "tok.model"),
         "--output-prefix", str(tmp_path / "code"), "--include-sets", "RedPajamaGithub")
    docs = _documents(corpus / "sample" / "train")
    assert len(IndexedDataset(str(tmp_path / "code"))) == sum(1 for _, n in docs if n == "RedPajamaGithub")
    manifest = json.loads((tmp_path / "code.manifest.json").read_text())
    assert set(manifest["sets"]) == {"RedPajamaGithub"}
    assert sum(f["filtered_out"] for f in manifest["files"]) == sum(1 for _, n in docs if n != "RedPajamaGithub")


def test_missing_inputs_exit_2(tmp_path):
    proc = _run("tokenize_slimpajama.py", "--input", str(tmp_path / "none"), "--tokenizer", str(tmp_path / "x.model"),
                "--output-prefix", str(tmp_path / "out"), expect=2)
    assert "does not exist" in proc.stderr.strip().splitlines()[-1]
