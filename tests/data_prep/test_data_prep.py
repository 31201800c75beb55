"""data_prep: sample corpus -> tokenizer -> Megatron indexed dataset, checked by reading it back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from tests.helpers.disks import mounted_tmpfs, resize_tmpfs
from tests.helpers.processes import ROOT


def _run(script: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, f"data_prep/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def _tokenize(inputs, tok, prefix, *extra, expect: int = 0) -> subprocess.CompletedProcess:
    return _run(
        "tokenize_slimpajama.py",
        "--input",
        *map(str, inputs),
        "--tokenizer",
        str(tok),
        "--output-prefix",
        str(prefix),
        "--no-progress",
        "--workers",
        "1",
        "--threads",
        "1",
        *extra,
        expect=expect,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _run("make_sample.py", "--out", str(root / "sample"), "--max-mb", "1")
    _run(
        "train_tokenizer.py",
        "--input",
        str(root / "sample" / "train"),
        "--vocab-size",
        "400",
        "--out",
        str(root / "tok.model"),
    )
    return root


@pytest.fixture(scope="module")
def many_files(corpus):
    """The sample's documents spread over 12 small files of each supported kind."""
    from data_prep.corpus import input_files, iter_records

    docs = [d for f in input_files([str(corpus / "sample" / "train")]) for d in iter_records(f)]
    out = corpus / "many"
    out.mkdir()
    for k in range(12):
        lines = "".join(
            json.dumps({"text": d.text, "meta": {"redpajama_set_name": d.set_name}}) + "\n" for d in docs[k::12]
        ).encode()
        name = out / f"part_{k:02d}.jsonl"
        if k % 3 == 1:
            Path(f"{name}.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
        elif k % 3 == 2:
            import gzip

            Path(f"{name}.gz").write_bytes(gzip.compress(lines))
        else:
            name.write_bytes(lines)
    return out


def _documents(path):
    from data_prep.corpus import input_files, iter_texts

    return [(text, name) for f in input_files([str(path)]) for text, name in iter_texts(f)]


def test_sample_has_slimpajama_layout(corpus):
    files = sorted(p.relative_to(corpus / "sample").as_posix() for p in (corpus / "sample").rglob("*.jsonl.zst"))
    assert any(f.startswith("train/chunk1/example_train_") for f in files)
    assert any(f.startswith("validation/chunk1/example_validation_") for f in files)
    assert {name for _, name in _documents(corpus / "sample")} == {"RedPajamaGithub", "RedPajamaWikipedia"}


def test_tokenizer_is_llama_style(corpus):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(corpus / "tok.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.get_piece_size()) == (0, 1, 2, 400)
    text = "héllo ✓ 1234"
    assert sp.decode(sp.encode(text)) == text  # byte fallback: nothing is lost


@pytest.mark.slow
@pytest.mark.parametrize("bos", [True, False])
def test_round_trip_through_megatron_indexed_dataset(corpus, tmp_path, bos):
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = tmp_path / "train"
    _tokenize([corpus / "sample" / "train"], corpus / "tok.model", prefix, *([] if bos else ["--no-bos"]))
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.idx", "train.manifest.json"]


@pytest.mark.slow
def test_workers_and_batch_bound_do_not_change_the_output(many_files, corpus, tmp_path):
    _tokenize([many_files], corpus / "tok.model", tmp_path / "one")
    # A 4 KiB batch bound is far below each file's size: the stream is encoded in many batches.
    _tokenize([many_files], corpus / "tok.model", tmp_path / "two", "--workers", "2", "--batch-bytes", "4096")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


@pytest.mark.slow
def test_resume_after_sigkill_is_byte_identical(many_files, corpus, tmp_path):
    _tokenize([many_files], corpus / "tok.model", tmp_path / "clean")
    prefix = tmp_path / "killed"
    cmd = [
        sys.executable,
        "data_prep/tokenize_slimpajama.py",
        "--input",
        str(many_files),
        "--tokenizer",
        str(corpus / "tok.model"),
        "--output-prefix",
        str(prefix),
        "--no-progress",
        "--workers",
        "1",
        "--threads",
        "1",
        "--batch-bytes",
        "2048",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = Path(f"{prefix}.parts")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("*.json"))) < 4:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(parts.glob("*.json")))
    assert 0 < committed < 12, f"{committed} parts committed when killed: the kill came too late or too early"
    assert not Path(f"{prefix}.bin").exists()  # nothing final before completion
    resumed = _tokenize([many_files], corpus / "tok.model", prefix)
    assert f"resuming: {committed} of 12 files" in resumed.stderr
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()


@pytest.mark.slow
def test_bad_input_is_counted_not_lost(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"text": "good one"}\n{"text": broken json\n{"meta": {}}\n\xff\xfe not utf8\n{"text": 5}\n'
        b'{"text": "good two"}\n{"text": "lone \\ud83d surrogate"}\n{"text": "pair \\ud83d\\ude00 ok"}\n'
    )
    good = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(50)))
    (tmp_path / "cut.jsonl.zst").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    proc = _tokenize(
        [bad, tmp_path / "cut.jsonl.zst", tmp_path / "empty.jsonl"], corpus / "tok.model", tmp_path / "out"
    )
    assert "bad lines skipped" in proc.stdout
    files = {Path(f["path"]).name: f for f in json.loads((tmp_path / "out.manifest.json").read_text())["files"]}
    assert files["bad.jsonl"]["documents"] == 3 and files["bad.jsonl"]["bad_lines"] == 5
    assert [(b["line"], b["reason"].split(" at")[0]) for b in files["bad.jsonl"]["bad"]] == [
        (2, "invalid JSON"),
        (3, "no string field 'text'"),
        (4, "invalid UTF-8"),
        (5, "no string field 'text'"),
        (7, "invalid Unicode: a lone surrogate escape"),
    ]
    cut = files["cut.jsonl.zst"]
    assert cut["bad_lines"] == 1 and "truncated" in cut["bad"][0]["reason"]
    assert 0 <= cut["documents"] < 50
    assert files["empty.jsonl"]["documents"] == 0
    strict = _tokenize([bad], corpus / "tok.model", tmp_path / "strict", "--strict", expect=1)
    assert "bad.jsonl line 2: invalid JSON (--strict)" in strict.stderr
    assert not (tmp_path / "strict.bin").exists()


@pytest.mark.slow
def test_set_filters_and_split_by_set(corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = _documents(corpus / "sample" / "train")
    _tokenize(
        [corpus / "sample" / "train"], corpus / "tok.model", tmp_path / "code", "--include-sets", "RedPajamaGithub"
    )
    assert len(IndexedDataset(str(tmp_path / "code"))) == sum(1 for _, n in docs if n == "RedPajamaGithub")
    manifest = json.loads((tmp_path / "code.manifest.json").read_text())
    assert set(manifest["sets"]) == {"RedPajamaGithub"}
    assert sum(f["filtered_out"] for f in manifest["files"]) == sum(1 for _, n in docs if n != "RedPajamaGithub")
    _tokenize([corpus / "sample" / "train"], corpus / "tok.model", tmp_path / "by", "--split-by-set")
    for name in ("RedPajamaGithub", "RedPajamaWikipedia"):
        assert len(IndexedDataset(str(tmp_path / f"by_{name}"))) == sum(1 for _, n in docs if n == name)


@pytest.mark.slow
def test_shards_cover_every_file_once_and_merge_equals_one_run(many_files, corpus, tmp_path):
    from data_prep.corpus import input_files, shard

    files = input_files([str(many_files)])
    taken = [f for i in range(5) for f in shard(files, i, 5)]
    assert sorted(taken) == sorted(files) and len(taken) == len(set(taken))
    with pytest.raises(ValueError):
        shard(files, 5, 5)
    # Shards as an array job would make them, merged in order, equal a run over files in shard order.
    for i in range(3):
        _tokenize([many_files], corpus / "tok.model", tmp_path / f"s{i}", "--shard", f"{i}/3")
    _run(
        "merge_indexed.py",
        "--inputs",
        *[str(tmp_path / f"s{i}") for i in range(3)],
        "--output-prefix",
        str(tmp_path / "merged"),
    )
    ordered = [str(f) for i in range(3) for f in shard(files, i, 3)]
    _tokenize(ordered, corpus / "tok.model", tmp_path / "single")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"merged{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()
    merged = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert len(merged["files"]) == 12
    _tokenize(
        [many_files], corpus / "tok.model", tmp_path / "empty_shard", "--shard", "12/13"
    )  # no files: empty output
    mismatch = _run(
        "merge_indexed.py",
        "--inputs",
        str(tmp_path / "s0"),
        str(tmp_path / "nope"),
        "--output-prefix",
        str(tmp_path / "x"),
        expect=2,
    )
    assert "nope.bin does not exist" in mismatch.stderr


@pytest.mark.slow
def test_missing_inputs_exit_2(tmp_path):
    proc = _run(
        "tokenize_slimpajama.py",
        "--input",
        str(tmp_path / "none"),
        "--tokenizer",
        str(tmp_path / "x.model"),
        "--output-prefix",
        str(tmp_path / "out"),
        expect=2,
    )
    assert "does not exist" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_hf_dataset_path_with_a_local_dataset(corpus, tmp_path, monkeypatch):
    """--hf-dataset streams through `datasets` (here a local directory: no hub is reachable in tests)."""
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    local = tmp_path / "local_dataset"
    local.mkdir()
    texts = [f"document {k} of shard {s}: " + "words " * (k + 1) for s in range(3) for k in range(5)]
    for s in range(3):
        (local / f"part{s}.jsonl").write_text(
            "".join(
                json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n"
                for t in texts[s * 5 : (s + 1) * 5]
            )
        )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        "--hf-dataset",
        str(local),
        "--split",
        "train",
        "--tokenizer",
        str(corpus / "tok.model"),
        "--output-prefix",
        str(tmp_path / "hf"),
        "--no-progress",
        "--workers",
        "2",
        "--keep-parts",
    ]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "data_prep/tokenize_slimpajama.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sp = spm.SentencePieceProcessor(model_file=str(corpus / "tok.model"))
    ds = IndexedDataset(str(tmp_path / "hf"))
    got = sorted(ds[i].tolist() for i in range(len(ds)))
    assert got == sorted([1, *sp.encode(t), 2] for t in texts)
    again = subprocess.run(
        [sys.executable, "data_prep/tokenize_slimpajama.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "resuming: 3 of 3" in again.stderr
    both = _run(
        "tokenize_slimpajama.py",
        "--input",
        str(local),
        "--hf-dataset",
        str(local),
        "--tokenizer",
        str(corpus / "tok.model"),
        "--output-prefix",
        str(tmp_path / "x"),
        expect=2,
    )
    assert "either --input or --hf-dataset" in both.stderr


def _adversarial_texts(seed: int, count: int) -> list[str]:
    """Short texts mixing the characters SentencePiece's word boundaries depend on."""
    import random

    rng = random.Random(seed)
    chars = list(" \n\t\r\u2581\u3000\u00a0\u200b\ufeff\x00abcXYZ019.,;:()'\"\\/-_=#éüñ中文字😀🎉")
    words = ["the", "of", "def", "self", "return", "  ", "\n", "    ", "1234", "3.14", "http://a.b/c", "\u2581x"]
    edge = ["", " ", "  ", "\n", " \n ", "a", " a", "a ", "\u2581", "\u2581a", "a\u2581b", " \u2581 ", "\n\u2581 "]
    return edge + [
        "".join(
            rng.choice(chars) if rng.random() < 0.6 else rng.choice(words) + rng.choice(" \n")
            for _ in range(rng.randint(0, 40))
        )
        for _ in range(count)
    ]


def test_word_memo_encoder_equals_sentencepiece(corpus):
    """The memoised encoder gives sp.encode's ids on real documents and on adversarial whitespace/Unicode,
    across memo resets (a tiny memo) and batches."""
    import sentencepiece as spm

    from data_prep.encoder import Encoder

    sp = spm.SentencePieceProcessor(model_file=str(corpus / "tok.model"))
    texts = [t for t, _ in _documents(corpus / "sample" / "train")] + _adversarial_texts(0, 3000)
    for memo_words in (1 << 20, 300):
        encoder = Encoder(sp, memo_words=memo_words)
        assert encoder.memoised, encoder.blocker
        for start in range(0, len(texts), 257):
            batch = texts[start : start + 257]
            ids, lengths = encoder.encode(batch)
            expected = sp.encode(batch)
            assert lengths.tolist() == [len(e) for e in expected]
            assert ids.tolist() == [i for e in expected for i in e]
    # fewer memo entries than words: repeated words were served from the memo, not re-encoded
    assert encoder._slots and len(encoder._slots) < sum(len(t.split()) for t in texts)


def test_word_memo_refuses_models_it_cannot_reproduce(corpus, tmp_path):
    """A normalising (NFKC) model or one that collapses whitespace is encoded plainly, still exactly."""
    import sentencepiece as spm

    from data_prep.encoder import Encoder, memo_blocker

    text_file = tmp_path / "lines.txt"
    text_file.write_text("\n".join(t for t, _ in _documents(corpus / "sample" / "train"))[:400_000])
    texts = [*_adversarial_texts(1, 300), "ﬁne  Ｗｉｄｅ   spaces"]
    for name, extra in (
        ("nfkc", {"normalization_rule_name": "nmt_nfkc"}),
        ("collapse", {"normalization_rule_name": "identity", "remove_extra_whitespaces": True}),
        ("unigram", {"normalization_rule_name": "identity", "model_type": "unigram"}),
    ):
        options = {"model_type": "bpe", **extra}
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(tmp_path / name),
            vocab_size=600,
            byte_fallback=True,
            minloglevel=2,
            **options,
        )
        sp = spm.SentencePieceProcessor(model_file=str(tmp_path / f"{name}.model"))
        assert memo_blocker(sp) is not None, name
        encoder = Encoder(sp)
        assert not encoder.memoised
        ids, _lengths = encoder.encode(texts)
        assert ids.tolist() == [i for e in sp.encode(texts) for i in e]


@pytest.mark.slow
def test_worker_memory_stays_bounded_on_a_file_larger_than_the_bound(corpus, tmp_path):
    """One 96 MB file with a 1 MiB batch and a 20k-word memo: the worker's peak RSS grows by far less than the
    file, against the same worker on a 1 MB file (the import of megatron.core dominates both)."""
    docs = [t for t, _ in _documents(corpus / "sample" / "train")]
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    with open(large, "w") as f:
        written, k = 0, 0
        while written < 96_000_000:
            line = json.dumps({"text": f"copy {k}: " + docs[k % len(docs)]}) + "\n"
            f.write(line)
            written, k = written + len(line), k + 1
    small.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs)[:1_000_000].rsplit("\n", 1)[0] + "\n")
    peaks = {}
    for name, path in (("small", small), ("large", large)):
        _tokenize(
            [path],
            corpus / "tok.model",
            tmp_path / name,
            "--batch-bytes",
            str(1 << 20),
            "--memo-words",
            "20000",
            "--keep-parts",
        )
        marker = next(Path(f"{tmp_path / name}.parts").glob("*.json"))
        peaks[name] = json.loads(marker.read_text())["report"]["peak_rss_mib"]
    growth = peaks["large"] - peaks["small"]
    assert growth < 48, f"worker peak RSS {peaks}: grew {growth:.0f} MiB on a 96 MB file"


def _tokenize_cmd(inputs, tok, prefix, *extra) -> list[str]:
    return [
        sys.executable,
        "data_prep/tokenize_slimpajama.py",
        "--input",
        *map(str, inputs),
        "--tokenizer",
        str(tok),
        "--output-prefix",
        str(prefix),
        "--no-progress",
        "--workers",
        "1",
        "--threads",
        "1",
        *extra,
    ]


@pytest.mark.slow
def test_a_second_run_on_the_same_prefix_is_refused_and_the_first_finishes_untouched(many_files, corpus, tmp_path):
    """Two tokenizations started on one --output-prefix: the second is refused in one line while the
    first holds the prefix's lock, and the first writes what an undisturbed run writes."""
    inputs = tmp_path / "inputs"  # enough files that the first run is still busy when the second starts
    inputs.mkdir()
    for copy in range(16):
        for f in many_files.iterdir():
            (inputs / f"{copy:02d}_{f.name}").write_bytes(f.read_bytes())
    _tokenize([inputs], corpus / "tok.model", tmp_path / "clean")
    prefix = tmp_path / "shared"
    first = subprocess.Popen(
        _tokenize_cmd([inputs], corpus / "tok.model", prefix, "--batch-bytes", "2048"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        parts = Path(f"{prefix}.parts")
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not list(parts.glob("*.json")):
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before the second started"
        second = _tokenize([inputs], corpus / "tok.model", prefix, expect=2)
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--output-prefix {prefix} is in use by pid {first.pid}" in lines[0], lines
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()


@pytest.mark.slow
def test_an_output_that_cannot_be_written_is_one_line(corpus, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    proc = _tokenize([corpus / "sample" / "train"], corpus / "tok.model", tmp_path / "a_file" / "sub" / "p", expect=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write in" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "256k") as disk:
        yield disk


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_no_temporaries_and_resumes(many_files, corpus, tmp_path, small_disk):
    _tokenize([many_files], corpus / "tok.model", tmp_path / "clean")
    prefix = small_disk / "out"
    proc = _tokenize([many_files], corpus / "tok.model", prefix, expect=74)
    lines = proc.stderr.strip().splitlines()
    error = [line for line in lines if "error:" in line]
    assert len(error) == 1 and "No space left on device" in error[0] and f"on {small_disk}" in error[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(small_disk.rglob("*.tmp")), list(small_disk.rglob("*"))  # nothing holds the space
    resize_tmpfs(small_disk, "64m")
    _tokenize([many_files], corpus / "tok.model", prefix)
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()
