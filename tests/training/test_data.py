"""The training data: sample order, indexed-dataset checks, blended data (litespark.training.data)."""

from __future__ import annotations

import numpy as np
import pytest

from litespark.config import ConfigError, apply_overrides
from litespark.config.presets import get_preset
from litespark.training.data import check_indexed_prefixes, micro_batch_indices
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


def test_indexed_dataset_checks(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good"
    write_indexed(good, [rng.integers(0, 500, size=rng.integers(20, 200)).tolist() for _ in range(50)])
    cfg = apply_overrides(get_preset("tiny"), ["data.source=indexed", f"data.prefixes={good}"])
    check_indexed_prefixes(cfg)
    big = tmp_path / "big"
    write_indexed(big, [[1, 2, 700, 3]] * 5)
    cfg = apply_overrides(get_preset("tiny"), ["data.source=indexed", f"data.prefixes={big}"])
    with pytest.raises(ConfigError, match=r"contains token id 700, outside model.vocab_size \(512\)"):
        check_indexed_prefixes(cfg)
    cfg = apply_overrides(get_preset("tiny"), ["data.source=indexed", f"data.prefixes={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="missing.bin does not exist"):
        check_indexed_prefixes(cfg)
    (tmp_path / "junk.bin").write_bytes(b"\1\2\3")
    (tmp_path / "junk.idx").write_bytes(b"not an index")
    cfg = apply_overrides(get_preset("tiny"), ["data.source=indexed", f"data.prefixes={tmp_path / 'junk'}"])
    with pytest.raises(ConfigError, match="cannot be read as a Megatron indexed dataset"):
        check_indexed_prefixes(cfg)


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
