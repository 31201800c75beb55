"""``python -m litespark.bench.layer_variants`` on CPU: its table arithmetic, and its refusal without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from litespark.bench import layer_variants
from tests.helpers.processes import ROOT


def _report(rows):
    return {
        "preset": "llama-3b",
        "micro_batch": 8,
        "seq_length": 4096,
        "hidden_size": 3072,
        "num_layers": 28,
        "gpu": "test GPU",
        "command": "python -m litespark.bench.layer_variants",
        "rows": rows,
    }


def test_markdown_compares_each_variant_with_the_shipped_one_of_its_recipe_and_slot():
    rows = [
        {
            "slot": "mlp",
            "variant": "megatron-mlp",
            "recipe": "bf16",
            "ms": 20.0,
            "peak_extra_gib": 2.5,
            "finite": True,
            "rel_out": 0.0,
            "rel_dgrad": 0.0,
            "rel_fc1_wgrad": 0.0,
        },
        {"slot": "mlp", "variant": "te-layernorm-mlp", "recipe": "bf16", "ms": 19.0, "finite": True},
        {"slot": "mlp", "variant": "megatron-mlp", "recipe": "delayed", "ms": 10.0, "finite": True},
        {"slot": "mlp", "variant": "te-fused-mlp", "recipe": "delayed", "ms": 12.5, "finite": False},
        {"slot": "mlp", "variant": "te-layernorm-mlp", "recipe": "tensorwise", "error": "RuntimeError: no"},
        {"slot": "attention", "variant": "te-dot-product-attention", "recipe": "bf16", "ms": 6.0},
        {"slot": "attention", "variant": "sdpa-flash", "recipe": "bf16", "ms": 9.0},
    ]
    md = layer_variants.to_markdown(_report(rows)).splitlines()
    row = {
        (c[1], c[2], c[3]): c
        for c in (line.split(" | ") for line in md if line.startswith("| mlp") or line.startswith("| attention"))
    }
    assert row[("te-layernorm-mlp", "bf16", "19.00")][5] == "-5.0%"  # vs megatron-mlp bf16, not delayed
    assert row[("te-layernorm-mlp", "bf16", "19.00")][4] == "532"  # 19 ms x 28 layers
    assert row[("te-fused-mlp", "delayed", "12.50")][5] == "+25.0%"
    assert row[("te-fused-mlp", "delayed", "12.50")][7] == "NO"  # non-finite results are flagged
    assert row[("sdpa-flash", "bf16", "9.00")][5] == "+50.0%"  # vs TE attention, not the MLP
    assert any("failed: RuntimeError: no" in line for line in md)


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_refuses_without_a_gpu_with_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "litespark.bench.layer_variants",
            "--preset",
            "tiny",
            "--micro-batch",
            "1",
            "--out",
            str(tmp_path / "x"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_each_timed_call_requantizes_the_weights_like_a_training_step():
    """Megatron's TE linears skip the weight cast while ``is_first_microbatch`` is False; the timed
    calls must stand for optimizer steps, each re-casting the weights, so the flag is set again on
    every module that has it (and not invented on modules that do not)."""
    import torch

    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    outer[0].is_first_microbatch = False
    outer[1][0].is_first_microbatch = False
    layer_variants._requantize_weights(outer)
    assert outer[0].is_first_microbatch is True and outer[1][0].is_first_microbatch is True
    assert not hasattr(outer[1], "is_first_microbatch")


def test_each_recipe_is_timed_on_the_training_config_with_only_the_recipe_changed():
    """The timed recipes come from Megatron's ``get_fp8_recipe`` on the config training would use,
    changed only in the recipe; the caller's config is left as it was."""
    from litespark.config import apply_overrides
    from litespark.config.presets import get_preset

    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "kernels.backend=te",
            "precision.bf16=true",
            "precision.fp8=true",
            "precision.fp8_recipe=delayed",
            "precision.fp8_margin=1",
        ],
    )
    tensorwise = layer_variants._config_for("tensorwise", cfg).precision
    assert (tensorwise.fp8, tensorwise.fp8_recipe, tensorwise.fp8_margin) == (True, "tensorwise", 1)
    assert layer_variants._config_for("bf16", cfg).precision.fp8 is False
    assert cfg.precision.fp8 and cfg.precision.fp8_recipe == "delayed"
    assert layer_variants._recipe("bf16", cfg) is None
