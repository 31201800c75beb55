"""Unit tests of the trainer's parts: data checks, sample order, launcher environment, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from litespark.config import ConfigError, apply_overrides
from litespark.data import check_indexed_prefixes, micro_batch_indices
from litespark.distributed import expand_nodelist, launcher_env
from litespark.metrics import energy_delta_joules, flops_per_token, interval_metrics, mfu, peak_bf16_tflops
from litespark.presets import get_preset
from tests.conftest import run_training


def write_indexed(prefix, documents, dtype=np.uint16):
    """A Megatron indexed dataset written with Megatron-Core's own builder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_flops_per_token_llama_3b_by_hand():
    # Per layer: Q 3072x3072 + K,V 2 x 3072x1024 + O 3072x3072 = 25,165,824; MLP 3 x 3072x8192 = 75,497,472.
    # 28 layers: 2,818,572,288; LM head 32000 x 3072 = 98,304,000; N = 2,916,876,288.
    # 6N = 17,501,257,728; 12 L h s = 12 x 28 x 3072 x 4096 = 4,227,858,432.
    assert flops_per_token(get_preset("llama-3b").model) == 17_501_257_728 + 4_227_858_432
    # The reference H200 HF figure: 20,403 tok/s -> 44.8% MFU.
    assert mfu(20_403, get_preset("llama-3b").model, 989.4) == pytest.approx(0.448, abs=5e-4)


def test_peak_table():
    assert peak_bf16_tflops("NVIDIA H200") == 989.4
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("Some CPU") is None


def test_energy_arithmetic():
    assert energy_delta_joules(1_000_000, 1_250_500) == pytest.approx(250.5)
    assert energy_delta_joules(None, 5) is None and energy_delta_joules(5, None) is None
    assert energy_delta_joules(2_000, 1_000) is None  # counter went back (driver reload): unknown, not negative
    m = get_preset("llama-3b").model
    out = interval_metrics(tokens=40_960, seconds=2.0, world_size=2, m=m, peak_tflops=989.4,
                           energy_joules_all_gpus=1400.0, gpus_reporting=2)
    assert out["tokens_per_s_per_gpu"] == 10_240
    assert out["joules_per_token"] == pytest.approx(1400 / 40_960)
    assert out["power_w_per_gpu"] == pytest.approx(350.0)
    partial = interval_metrics(tokens=40_960, seconds=2.0, world_size=2, m=m, peak_tflops=None,
                               energy_joules_all_gpus=700.0, gpus_reporting=1)
    assert "energy_j" not in partial and "mfu" not in partial  # a rank without NVML: absent, not understated


def test_micro_batch_order_is_a_partition_of_the_global_batch():
    seen = []
    for rank in range(2):
        for micro in micro_batch_indices(step=3, micro=2, global_batch=8, dp_size=2, dp_rank=rank):
            seen += micro
    assert sorted(seen) == list(range(24, 32))
    # Accumulation sees the samples one big micro-batch would.
    assert sum(micro_batch_indices(1, 2, 8, 1, 0), []) == micro_batch_indices(1, 8, 8, 1, 0)[0]


def test_launcher_env_from_slurm():
    env = launcher_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "4242"})
    assert env == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007", "MASTER_PORT": "24242"}
    torchrun = launcher_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "5",
                             "SLURM_PROCID": "0"})
    assert torchrun["RANK"] == "1" and torchrun["MASTER_ADDR"] == "h"  # torchrun's variables win
    single = launcher_env({"RANK": "0", "WORLD_SIZE": "1"})  # leftovers of a single process: still runs
    assert single["MASTER_ADDR"] == "127.0.0.1" and single["MASTER_PORT"].isdigit()
    with pytest.raises(RuntimeError, match="MASTER_PORT is not"):
        launcher_env({"RANK": "0", "WORLD_SIZE": "2"})
    assert expand_nodelist("a[1-2,5],b,c[09-10]") == ["a1", "a2", "a5", "b", "c09", "c10"]


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


def test_training_on_blended_indexed_data_and_bad_data_exit_2(tmp_path):
    rng = np.random.default_rng(1)
    prefixes = []
    for name in ("a", "b"):
        prefix = tmp_path / name
        write_indexed(prefix, [rng.integers(3, 512, size=rng.integers(30, 300)).tolist() for _ in range(200)])
        prefixes.append(str(prefix))
    run_training(tmp_path / "run", "data.source=indexed", f"data.prefixes={','.join(prefixes)}", "data.weights=0.7,0.3",
                 "run.train_iters=3", "run.log_interval=1")
    bad = run_training(tmp_path / "run2", "data.source=indexed", f"data.prefixes={tmp_path / 'nope'}", "run.train_iters=3",
                       expect=2)
    errors = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "nope.bin does not exist" in errors[0]


def test_sequence_parallel_is_refused_by_the_trainer(tmp_path):
    from litespark.trainer import train

    cfg = apply_overrides(get_preset("tiny"), ["parallel.tensor_parallel=2"])
    cfg.parallel.sequence_parallel = True  # as a TE host would allow
    with pytest.raises(ConfigError, match="parallel.sequence_parallel is not supported by the DeepSpeed trainer"):
        train(cfg)


def test_mpu_maps_model_parallel_to_tensor_parallel(dist_world_1):
    from megatron.core import parallel_state as ps

    from litespark.distributed import init_distributed
    from litespark.mpu import MegatronMPU

    init_distributed(tensor_parallel=1, seed=0)
    mpu = MegatronMPU()
    assert mpu.get_model_parallel_group() is ps.get_tensor_model_parallel_group()
    assert mpu.get_data_parallel_group() is ps.get_data_parallel_group()
    assert (mpu.get_model_parallel_world_size(), mpu.get_data_parallel_world_size()) == (1, 1)
    assert mpu.get_data_parallel_group_ranks() == [0]
