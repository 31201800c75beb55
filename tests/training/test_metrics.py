"""Model arithmetic and the throughput metrics (litespark.training.metrics)."""

from __future__ import annotations

import pytest

from litespark.config.presets import get_preset
from litespark.training.metrics import flops_per_token, interval_metrics, mfu, peak_bf16_tflops


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


def test_a_rank_without_a_reading_means_no_energy_fields():
    from litespark.config import ModelConfig

    m = ModelConfig()
    full = interval_metrics(
        tokens=1000, seconds=2.0, world_size=2, m=m, peak_tflops=None, energy_joules_all_gpus=500.0, gpus_reporting=2
    )
    assert full["joules_per_token"] == 0.5 and full["power_w_per_gpu"] == 125.0
    partial = interval_metrics(
        tokens=1000, seconds=2.0, world_size=2, m=m, peak_tflops=None, energy_joules_all_gpus=250.0, gpus_reporting=1
    )
    assert "energy_j" not in partial and "joules_per_token" not in partial
