"""The training data: sample order, indexed-dataset checks, blended data (litespark.training.data)."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from litespark.config import ConfigError, apply_overrides
from litespark.config.presets import get_preset
from litespark.training.data import check_indexed_prefixes, check_token_ids, micro_batch_indices
from tests.helpers.processes import run_training


def write_indexed(prefix, documents, dtype=np.uint16):
    """A Megatron indexed dataset written with Megatron-Core's own builder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_micro_batch_order_is_a_partition_of_the_global_batch():
    seen = []
    for rank in range(2):
        for micro in micro_batch_indices(step=3, micro=2, global_batch=8, dp_size=2, dp_rank=rank):
            seen += micro
    assert sorted(seen) == list(range(24, 32))
    # Accumulation sees the samples one big micro-batch would.
    assert sum(micro_batch_indices(1, 2, 8, 1, 0), []) == micro_batch_indices(1, 8, 8, 1, 0)[0]


def _indexed_cfg(*prefixes, extra=()):
    return apply_overrides(
        get_preset("tiny"), ["data.source=indexed", f"data.prefixes={','.join(map(str, prefixes))}", *extra]
    )


def test_indexed_dataset_checks(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good"
    write_indexed(good, [rng.integers(0, 500, size=rng.integers(20, 200)).tolist() for _ in range(50)])
    check_indexed_prefixes(_indexed_cfg(good))
    with pytest.raises(ConfigError, match="missing.bin does not exist"):
        check_indexed_prefixes(_indexed_cfg(tmp_path / "missing"))
    (tmp_path / "junk.bin").write_bytes(b"\1\2\3")
    (tmp_path / "junk.idx").write_bytes(b"not an index")
    with pytest.raises(ConfigError, match=r"junk.idx is not a Megatron index \(no MMIDIDX header\)"):
        check_indexed_prefixes(_indexed_cfg(tmp_path / "junk"))


def test_a_truncated_bin_or_idx_is_named_in_one_line_without_megatron_noise(tmp_path, recwarn):
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 500, size=rng.integers(20, 200)).tolist() for _ in range(50)]
    for name in ("bin", "idx"):
        prefix = tmp_path / name
        write_indexed(prefix, docs)
        path = Path(f"{prefix}.{name}")
        path.write_bytes(path.read_bytes()[:-100])  # cut off the end, as a full disk or a killed copy would
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'bin'}.bin is truncated: \d+ bytes, its index .* needs \d+"):
        check_indexed_prefixes(_indexed_cfg(tmp_path / "bin"))
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'idx'}.idx is truncated: \d+ bytes, its header promises \d+"):
        check_indexed_prefixes(_indexed_cfg(tmp_path / "idx"))
    gc.collect()  # an IndexedDataset that failed half-built would now print "Exception ignored"
    assert not [w for w in recwarn if "Exception ignored" in str(w.message)]


def test_every_token_id_is_checked_against_the_vocabulary(tmp_path, dist_world_1):
    """An id outside the vocabulary in the middle of a long file (the old check read only its ends)."""
    from litespark.runtime.distributed import init_distributed

    init_distributed(1, 0)
    docs = [[7] * 300 for _ in range(20_000)]  # 6 M tokens
    docs[10_000] = [1, 2, 700, 3]
    prefix = tmp_path / "middle"
    write_indexed(prefix, docs)
    cfg = _indexed_cfg(prefix)
    check_indexed_prefixes(cfg)  # the cheap checks pass: the index and the .bin agree
    with pytest.raises(ConfigError, match=rf"{prefix} contains token id 700, outside model.vocab_size \(512\)"):
        check_token_ids(cfg)
    check_token_ids(_indexed_cfg(prefix, extra=["data.scan_token_ids=false"]))  # switched off: trusted


def test_the_tokenizer_must_be_the_one_the_data_was_made_with(tmp_path):
    prefix = tmp_path / "d"
    write_indexed(prefix, [[1, 2, 3]] * 4)
    made_with, other = tmp_path / "made_with.model", tmp_path / "other.model"
    made_with.write_bytes(b"tokenizer one")
    other.write_bytes(b"tokenizer two")
    digest = hashlib.sha256(made_with.read_bytes()).hexdigest()
    Path(f"{prefix}.manifest.json").write_text(json.dumps({"tokenizer": str(made_with), "tokenizer_sha256": digest}))
    check_indexed_prefixes(_indexed_cfg(prefix, extra=[f"data.tokenizer={made_with}"]))
    with pytest.raises(ConfigError, match=r"data.tokenizer: .*other.model is not the tokenizer .* was made with"):
        check_indexed_prefixes(_indexed_cfg(prefix, extra=[f"data.tokenizer={other}"]))
    check_indexed_prefixes(
        _indexed_cfg(prefix, extra=[f"data.tokenizer={other}", "data.allow_tokenizer_mismatch=true"])
    )
    with pytest.raises(ConfigError, match="data.tokenizer: .*nope.model does not exist"):
        check_indexed_prefixes(_indexed_cfg(prefix, extra=[f"data.tokenizer={tmp_path / 'nope.model'}"]))


@pytest.mark.slow
def test_training_on_blended_indexed_data_and_bad_data_exit_2(tmp_path):
    rng = np.random.default_rng(1)
    prefixes = []
    for name in ("a", "b"):
        prefix = tmp_path / name
        write_indexed(prefix, [rng.integers(3, 512, size=rng.integers(30, 300)).tolist() for _ in range(200)])
        prefixes.append(str(prefix))
    run_training(
        tmp_path / "run",
        "data.source=indexed",
        f"data.prefixes={','.join(prefixes)}",
        "data.weights=0.7,0.3",
        "run.train_iters=3",
        "run.log_interval=1",
    )
    bad = run_training(
        tmp_path / "run2", "data.source=indexed", f"data.prefixes={tmp_path / 'nope'}", "run.train_iters=3", expect=2
    )
    errors = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "nope.bin does not exist" in errors[0]


@pytest.mark.parametrize(("micro", "dp"), [(1, 1), (2, 1), (4, 2), (1, 4)])
def test_an_evaluation_pass_covers_the_same_sequences_whatever_the_micro_batch_and_dp(micro, dp):
    """run.eval_iters global batches: the same sequences, so validation losses of runs with another
    (e.g. automatic) micro-batch or data-parallel size compare."""
    import torch

    from litespark.config import resolve
    from litespark.training.data import eval_batches

    cfg = apply_overrides(
        get_preset("tiny"), [f"data.micro_batch_size={micro}", "data.global_batch_size=8", "run.eval_iters=3"]
    )
    dataset = [{k: torch.full((4,), i) for k in ("tokens", "labels", "loss_mask")} for i in range(100)]
    seen = []
    for rank in range(dp):
        for batch in eval_batches(dataset, resolve(cfg, dp), dp, rank, torch.device("cpu")):
            assert batch["tokens"].shape == (micro, 4)
            seen += batch["tokens"][:, 0].tolist()
    assert sorted(seen) == list(range(24))
