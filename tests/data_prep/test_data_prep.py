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


@pytest.fixture(scope="module")
def big_file(corpus):
    """The sample's documents three times over in one uncompressed JSONL file (a few MB)."""
    docs = [t for t, _ in _documents(corpus / "sample" / "train")]
    path = corpus / "big.jsonl"
    path.write_text("".join(json.dumps({"text": f"copy {k}: {t}"}) + "\n" for k in range(3) for t in docs))
    return path


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
    committed = _kill_after_commits(
        _tokenize_cmd([many_files], corpus / "tok.model", prefix, "--batch-bytes", "2048"), prefix, 4
    )
    assert 0 < committed < 12, f"{committed} parts committed when killed: the kill came too late or too early"
    assert not Path(f"{prefix}.bin").exists()  # nothing final before completion
    resumed = _tokenize([many_files], corpus / "tok.model", prefix)
    assert f"resuming: {committed} parts already tokenized" in resumed.stderr
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
def test_shards_are_contiguous_and_balanced():
    from data_prep.corpus import shard

    weights = [5, 1, 1, 1, 8, 0, 2, 2, 4]
    taken = [shard(weights, i, 3) for i in range(3)]
    assert [list(r) for r in taken] == [[0, 1, 2, 3], [4], [5, 6, 7, 8]]
    assert [u for r in taken for u in r] == list(range(len(weights)))  # every unit once, in order
    assert sorted(len(shard([1] * 10, i, 4)) for i in range(4)) == [2, 2, 3, 3]
    assert list(shard([3], 0, 2)) == [] and list(shard([3], 1, 2)) == [0] and list(shard([], 0, 2)) == []
    with pytest.raises(ValueError):
        shard(weights, 3, 3)


@pytest.mark.slow
def test_shards_merged_in_order_equal_one_run_even_inside_a_file(many_files, big_file, corpus, tmp_path):
    """Array tasks (--shard I/N) take contiguous shares; an uncompressed file is split at chunk
    boundaries, so one file feeds several tasks, and the merge of the shards equals a single run."""
    inputs = [many_files, big_file]
    chunk = ["--chunk-bytes", str(big_file.stat().st_size // 5)]
    for i in range(3):
        _tokenize(inputs, corpus / "tok.model", tmp_path / f"s{i}", "--shard", f"{i}/3", *chunk)
    _run(
        "merge_indexed.py",
        "--inputs",
        *[str(tmp_path / f"s{i}") for i in range(3)],
        "--output-prefix",
        str(tmp_path / "merged"),
    )
    _tokenize(inputs, corpus / "tok.model", tmp_path / "single")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"merged{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()
    shards = [json.loads((tmp_path / f"s{i}.manifest.json").read_text())["files"] for i in range(3)]
    big = [f["chunks"] for files in shards for f in files if f["path"] == str(big_file)]
    assert len(big) >= 2, f"the big file went to one task only: {shards}"
    merged = json.loads((tmp_path / "merged.manifest.json").read_text())
    single = json.loads((tmp_path / "single.manifest.json").read_text())
    assert sum(f["documents"] for f in merged["files"]) == sum(f["documents"] for f in single["files"])
    one = many_files / "part_00.jsonl"  # one unit, taken by task 1 of 2: task 0 writes an empty dataset
    _tokenize([one], corpus / "tok.model", tmp_path / "empty_shard", "--shard", "0/2")
    assert json.loads((tmp_path / "empty_shard.manifest.json").read_text())["files"] == []
    assert (tmp_path / "empty_shard.bin").stat().st_size == 0
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
@pytest.mark.parametrize("workers", [2, 4])
def test_hf_dataset_path_with_a_local_dataset(corpus, tmp_path, monkeypatch, workers):
    """--hf-dataset streams through `datasets` (here a local directory: no hub is reachable in tests); its 3
    shards go whole to 2 workers, or are read by the driver and fed to 4."""
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
        str(workers),
        "--batch-bytes",
        "100",
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
    assert [ds[i].tolist() for i in range(len(ds))] == [[1, *sp.encode(t), 2] for t in texts]
    again = subprocess.run(
        [sys.executable, "data_prep/tokenize_slimpajama.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "resuming: 3 parts already tokenized" in again.stderr
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
def _peak_rss(stdout: str) -> tuple[float, float]:
    """(driver, worker) peak RSS in MiB from the summary line."""
    driver, worker = stdout.split("peak RSS ")[1].split(" MiB per worker")[0].split(" MiB driver, ")
    return float(driver.replace(",", "")), float(worker.replace(",", ""))


@pytest.mark.slow
def test_memory_stays_bounded_on_a_file_larger_than_the_bound(corpus, tmp_path):
    """One 96 MB file with a 1 MiB batch and a 20k-word memo: neither the driver's nor the worker's peak
    RSS grows by more than a fraction of the file, against the same run on a 3 MB file."""
    docs = [t for t, _ in _documents(corpus / "sample" / "train")]
    sizes = {"small": 3_000_000, "large": 96_000_000}
    peaks = {}
    for name, size in sizes.items():
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            written, k = 0, 0
            while written < size:
                line = json.dumps({"text": f"copy {k}: " + docs[k % len(docs)]}) + "\n"
                f.write(line)
                written, k = written + len(line), k + 1
        proc = _tokenize(
            [path], corpus / "tok.model", tmp_path / name, "--batch-bytes", str(1 << 20), "--memo-words", "20000"
        )
        peaks[name] = _peak_rss(proc.stdout)
    assert peaks["small"][1] > 0, "the small run had no worker process"
    growth = [large - small for large, small in zip(peaks["large"], peaks["small"])]
    assert max(growth) < 48, f"peak RSS (driver, worker) {peaks}: grew {growth} MiB on a 96 MB file"


def _kill_after_commits(cmd: list[str], prefix: Path, parts: int) -> int:
    """Start a tokenization, SIGKILL its process group once ``parts`` parts are committed; returns how
    many were committed by then."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = Path(f"{prefix}.parts")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(markers.glob("*.json"))) < parts:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(markers.glob("*.json")))


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


# ----------------------------------------------------------------------------------------------
# One file, many workers; Hugging Face tokenizers


@pytest.mark.slow
def test_one_file_is_encoded_by_every_worker_in_parts_byte_identical(big_file, corpus, tmp_path):
    """A single file, plain or zstd, is read in batches that both workers encode and committed in
    several parts; the output equals one worker's with one part."""
    compressed = tmp_path / "big.jsonl.zst"
    compressed.write_bytes(zstandard.ZstdCompressor().compress(big_file.read_bytes()))
    _tokenize([big_file], corpus / "tok.model", tmp_path / "one")
    chunk = big_file.stat().st_size // 4 + 1
    for name, path in (("plain", big_file), ("zstd", compressed)):
        proc = _tokenize(
            [path],
            corpus / "tok.model",
            tmp_path / name,
            *("--workers", "2", "--batch-bytes", "20000", "--chunk-bytes", str(chunk), "--keep-parts"),
        )
        for suffix in (".bin", ".idx"):
            assert Path(f"{tmp_path / name}{suffix}").read_bytes() == (tmp_path / f"one{suffix}").read_bytes(), name
        markers = sorted(Path(f"{tmp_path / name}.parts").glob("*.json"))
        assert len(markers) == 4, (name, [m.name for m in markers])
        assert _peak_rss(proc.stdout)[1] > 0, "no worker process ran"
        (entry,) = json.loads(Path(f"{tmp_path / name}.manifest.json").read_text())["files"]
        assert entry["chunks"] == [0, 3] and entry["documents"] == 3 * len(_documents(corpus / "sample" / "train"))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["plain", "zstd"])
def test_a_single_file_killed_mid_way_resumes_from_its_committed_parts(big_file, corpus, tmp_path, layout):
    """Killed mid-file and rerun: an uncompressed file's ranges (read by the workers) or a zstd file's
    batches (read by the driver and fed to two workers) resume from the committed chunks."""
    if layout == "zstd":
        path = tmp_path / "big.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(big_file.read_bytes()))
    else:
        path = big_file
    _tokenize([big_file], corpus / "tok.model", tmp_path / "clean")
    prefix = tmp_path / "killed"
    chunk = ["--chunk-bytes", str(big_file.stat().st_size // 12 + 1), "--batch-bytes", "4096", "--workers", "2"]
    committed = _kill_after_commits(_tokenize_cmd([path], corpus / "tok.model", prefix, *chunk), prefix, 3)
    assert 0 < committed < 12, f"{committed} of 12 parts committed when killed"
    resumed = _tokenize([path], corpus / "tok.model", prefix, *chunk)
    assert f"resuming: {committed} parts already tokenized" in resumed.stderr
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()


@pytest.mark.slow
def test_bad_lines_are_numbered_in_their_file_whatever_the_parts(corpus, tmp_path):
    lines = [b'{"text": "doc %d"}\n' % i for i in range(60)]
    for at in (7, 23, 41, 58):
        lines[at] = b'{"text": broken %d\n' % at
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines))
    compressed = tmp_path / "bad.jsonl.zst"
    compressed.write_bytes(zstandard.ZstdCompressor().compress(bad.read_bytes()))
    expected = [at + 1 for at in (7, 23, 41, 58)]
    for path in (bad, compressed):
        for extra in ([], ["--chunk-bytes", "100", "--batch-bytes", "30", "--workers", "2"]):
            prefix = tmp_path / f"out{len(extra)}{path.suffix}"
            _tokenize([path], corpus / "tok.model", prefix, *extra)
            (entry,) = json.loads(Path(f"{prefix}.manifest.json").read_text())["files"]
            assert [b["line"] for b in entry["bad"]] == expected, (path.name, extra, entry["bad"])
            assert entry["documents"] == 56 and entry["bad_lines"] == 4


@pytest.fixture(scope="module")
def hf_tokenizer(corpus):
    """A Llama-3-style byte-level BPE (Llama 3's split regex, <|begin_of_text|> added by the
    post-processor, <|end_of_text|> the EOS) trained on the sample, as a checkpoint directory."""
    _run(
        "train_tokenizer.py",
        "--input",
        str(corpus / "sample" / "train"),
        "--vocab-size",
        "700",
        "--format",
        "huggingface",
        "--out",
        str(corpus / "hf_tok"),
    )
    return corpus / "hf_tok"


@pytest.mark.slow
@pytest.mark.parametrize("bos", [True, False])
def test_huggingface_tokenizer_writes_what_megatron_lm_writes(hf_tokenizer, big_file, corpus, tmp_path, bos):
    """Megatron-LM's preprocess_data.py --tokenizer-type HuggingFaceTokenizer --append-eod writes, per
    document, ``AutoTokenizer.from_pretrained(DIR)(text).input_ids + [tokenizer.eos_token_id]``
    (megatron/training/tokenizer/tokenizer.py, _HuggingFaceTokenizer.tokenize and .eod)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    prefix = tmp_path / "hf"
    extra = [] if bos else ["--no-bos"]
    _tokenize([big_file], hf_tokenizer, prefix, "--workers", "2", "--batch-bytes", "50000", *extra)
    reference = AutoTokenizer.from_pretrained(str(hf_tokenizer))
    texts = [json.loads(line)["text"] for line in big_file.read_text().splitlines()]
    ds = IndexedDataset(str(prefix))
    assert len(ds) == len(texts) and ds.index.dtype == np.uint16
    for i, text in enumerate(texts):
        expected = [*reference(text, add_special_tokens=bos).input_ids, reference.eos_token_id]
        assert ds[i].tolist() == expected, f"document {i} differs"
    assert bool(ds[0][0] == reference.bos_token_id) is bos
    manifest = json.loads((tmp_path / "hf.manifest.json").read_text())
    from data_prep.tokenizer_loader import sha256_of

    assert manifest["tokenizer_sha256"] == sha256_of(hf_tokenizer / "tokenizer.json")
    assert manifest["tokenizer_kind"] == "huggingface" and manifest["vocab_size"] == len(reference)


@pytest.mark.slow
def test_a_vocabulary_of_65500_entries_or_more_gives_int32_tokens(corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    big_vocab = tmp_path / "tok"
    _run(
        "train_tokenizer.py",
        *("--input", str(corpus / "sample" / "train"), "--vocab-size", "600", "--format", "huggingface"),
        *("--special-tokens", "65000", "--out", str(big_vocab)),
    )
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"text": f"document {k} <|reserved_special_token_64990|>"}) + "\n" for k in range(5))
    )
    _tokenize([docs], big_vocab, tmp_path / "out")
    reference = AutoTokenizer.from_pretrained(str(big_vocab))
    assert len(reference) >= 65_500
    ds = IndexedDataset(str(tmp_path / "out"))
    assert ds.index.dtype == np.int32
    for k in range(5):
        expected = [*reference(f"document {k} <|reserved_special_token_64990|>").input_ids, reference.eos_token_id]
        assert ds[k].tolist() == expected and max(expected) > 65_535


@pytest.mark.slow
def test_a_tokenizer_that_cannot_be_used_is_one_line(hf_tokenizer, corpus, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((hf_tokenizer / "tokenizer.json").read_bytes())
    docs = corpus / "sample" / "train"
    cases = [
        (tmp_path, "the directory holds no tokenizer.json"),
        (bare / "tokenizer.json", "no eos_token in tokenizer_config.json"),
        (corpus / "sample" / "train" / "chunk1", "the directory holds no tokenizer.json"),
    ]
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    cases.append((junk, "is not a SentencePiece model"))
    for tok, message in cases:
        proc = _tokenize([docs], tok, tmp_path / "out", expect=2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (tok, proc.stderr)
    ok = _tokenize([docs], bare / "tokenizer.json", tmp_path / "out", "--eos-token", "<|end_of_text|>")
    assert "EOS 701" in ok.stderr
    wrong = _tokenize([docs], bare / "tokenizer.json", tmp_path / "out2", "--eos-token", "<nope>", expect=2)
    assert "its EOS '<nope>' is not in the vocabulary" in wrong.stderr


def test_huggingface_word_memo_equals_the_tokenizer(hf_tokenizer, corpus):
    """The byte-level BPE memo gives the tokenizer's own ids on real and adversarial text: added tokens
    in the text, characters the two regex engines may class differently (then encoded by the tokenizer),
    with and without the post-processor's special tokens, across memo resets."""
    from data_prep.hf_encoder import HuggingFaceEncoder

    definition = (hf_tokenizer / "tokenizer.json").read_text()
    texts = [t for t, _ in _documents(corpus / "sample" / "train")] + _adversarial_texts(2, 2000)
    texts += [
        "<|end_of_text|> inside <|begin_of_text|>text<|reserved_special_token_3|>",
        "<|",
        "|>",
        "<|end_of_text",
        "it's IT'S it'S  'll 'LL ſ 'ſ",  # case-insensitive contractions
        "new letters \u0558\u088f and a tag \U000e0001 private \U000f0000 \x1c\x1d\x1e\x1f\x85\u2028",
        "digits 1234567 ١٢٣ 12.5e3",
        "\r\n\r\n  \t\n",
    ]
    for special_tokens in (True, False):
        plain = HuggingFaceEncoder(definition, special_tokens=special_tokens, memo_words=0)
        for memo_words in (1 << 20, 50):
            memo = HuggingFaceEncoder(definition, special_tokens=special_tokens, memo_words=memo_words)
            assert memo.memoised, memo.blocker
            for start in range(0, len(texts), 301):
                batch = texts[start : start + 301]
                ids, lengths = memo.encode(batch)
                expected_ids, expected_lengths = plain.encode(batch)
                assert lengths.tolist() == expected_lengths.tolist()
                assert ids.tolist() == expected_ids.tolist()
    assert memo._known and len(memo._slots) < sum(len(t.split()) for t in texts)


def test_huggingface_word_memo_refuses_tokenizers_it_cannot_reproduce(hf_tokenizer):
    from data_prep.hf_encoder import HuggingFaceEncoder

    spec = json.loads((hf_tokenizer / "tokenizer.json").read_text())
    normalised = dict(spec, normalizer={"type": "NFKC"})
    assert "normaliser NFKC" in HuggingFaceEncoder(json.dumps(normalised)).blocker
    stripped = json.loads(json.dumps(spec))
    stripped["added_tokens"][0]["lstrip"] = True
    assert "not a plain special token" in HuggingFaceEncoder(json.dumps(stripped)).blocker
    assert HuggingFaceEncoder(json.dumps(spec), memo_words=0).blocker == "memo_words=0"
    memo = HuggingFaceEncoder(json.dumps(spec))
    assert memo.check(["a sample"]) is None and memo.memoised


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_sigterm_to_the_driver_alone_stops_its_workers_and_the_rerun_resumes(big_file, corpus, tmp_path):
    """``kill PID`` (or ``scancel`` signalling the driver only): one line, exit 143, no worker left
    running, the lock free, and the rerun resumes to the output of an uninterrupted run."""
    _tokenize([big_file], corpus / "tok.model", tmp_path / "clean")
    prefix = tmp_path / "stopped"
    extra = ["--chunk-bytes", str(big_file.stat().st_size // 12 + 1), "--batch-bytes", "4096", "--workers", "2"]
    proc = subprocess.Popen(
        _tokenize_cmd([big_file], corpus / "tok.model", prefix, *extra),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    markers = Path(f"{prefix}.parts")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(markers.glob("*.json")):
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert proc.poll() is None and workers, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.startswith("tokenize_slimpajama:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "Traceback" not in err, err
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "worker processes outlived the driver"
    resumed = _tokenize([big_file], corpus / "tok.model", prefix, *extra)  # the lock is free
    assert "resuming:" in resumed.stderr
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()
