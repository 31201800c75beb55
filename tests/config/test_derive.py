"""to_transformer_config and to_deepspeed_config are pure, concrete and consistent with the plan."""

from __future__ import annotations

import itertools
import json

import pytest
import torch.nn.functional as F

from litespark.config import apply_overrides, resolve
from litespark.config.presets import PRESETS, get_preset
from litespark.model.transformer_config import to_transformer_config
from litespark.planner.gpus import GPUS
from litespark.runtime.deepspeed_config import to_deepspeed_config


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


def test_transformer_config_is_llama():
    cfg = apply_overrides(get_preset("tiny"), ["model.rotary_base=50000", "model.norm_epsilon=1e-6"])
    tc = to_transformer_config(resolve(cfg))
    assert tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-6
    assert tc.gated_linear_unit and tc.activation_func is F.silu
    assert not tc.add_bias_linear and tc.hidden_dropout == 0 and tc.attention_dropout == 0
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups, tc.ffn_hidden_size) == (
        2,
        64,
        4,
        2,
        176,
    )
    assert tc.kv_channels == 16
    assert tc.use_cpu_initialization and not tc.gradient_accumulation_fusion
    assert not tc.apply_rope_fusion and not tc.bias_activation_fusion  # torch backend: no CUDA fusions
    assert not tc.fused_single_qkv_rope and not tc.cross_entropy_loss_fusion
    assert tc.fp8 is None


def _te_transformer_config_fields(cfg) -> dict:
    """The keyword arguments ``to_transformer_config`` passes for ``cfg`` resolved on an H200 host with
    TE (building a real TE TransformerConfig would need TE for some fusions; the fields are what is
    checked here)."""
    from litespark.model import transformer_config as mod

    captured = {}
    original = mod.TransformerConfig
    mod.TransformerConfig = lambda **kw: captured.update(kw) or kw
    try:
        to_transformer_config(resolve(cfg, backend="te", gpu=GPUS["h200"]))
    finally:
        mod.TransformerConfig = original
    return captured


def test_transformer_config_fp8_fields():
    cfg = get_preset("llama-3b")
    cfg.kernels.backend = "te"
    cfg.precision.fp8_recipe = "tensorwise"
    captured = _te_transformer_config_fields(cfg)
    assert captured["fp8"] == "hybrid" and captured["fp8_recipe"] == "tensorwise"
    assert captured["fp8_amax_history_len"] == 1024 and captured["fp8_amax_compute_algo"] == "max"
    assert captured["apply_rope_fusion"] and captured["bf16"]
    assert captured["fused_single_qkv_rope"] and captured["cross_entropy_fusion_impl"] == "te"


@pytest.mark.parametrize(
    "overrides, qkv_rope, ce_impl",
    [
        (["kernels.fused_qkv_rope=false"], False, "te"),
        (["kernels.rope_fusion=false"], False, "te"),  # the single-QKV kernel is a fused RoPE
        (["kernels.te_cross_entropy=false"], True, "native"),
    ],
)
def test_transformer_config_kernel_switches(overrides, qkv_rope, ce_impl):
    captured = _te_transformer_config_fields(
        apply_overrides(get_preset("llama-3b"), ["kernels.backend=te", *overrides])
    )
    assert captured["fused_single_qkv_rope"] is qkv_rope
    assert captured["cross_entropy_loss_fusion"] and captured["cross_entropy_fusion_impl"] == ce_impl


def test_an_automatic_backend_is_decided_in_the_plan_not_in_the_config(monkeypatch):
    import litespark.environment

    monkeypatch.setattr(litespark.environment, "te_available", lambda: False)  # a CPU host
    cfg = get_preset("tiny")
    cfg.kernels.backend = "auto"
    plan = resolve(cfg)
    assert plan.backend == "torch"
    assert cfg.kernels.backend == "auto" and plan.config.kernels.backend == "auto"
    tc = to_transformer_config(plan)  # the plan's backend, not the config's 'auto'
    assert not tc.apply_rope_fusion and not tc.bias_activation_fusion
    assert _te_transformer_config_fields(cfg)["apply_rope_fusion"]  # the same config on a TE host


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_config_is_concrete(name, stage):
    cfg = apply_overrides(
        get_preset(name),
        [f"parallel.zero_stage={stage}", "parallel.tensor_parallel=1", "parallel.sequence_parallel=false"],
    )
    if cfg.data.micro_batch_size is None:  # automatic in the GPU presets: fixed here, for any world size
        cfg.data.micro_batch_size = 2
    plan = resolve(cfg, cfg.data.global_batch_size // cfg.data.micro_batch_size, backend="te")
    ds = to_deepspeed_config(plan)
    assert "auto" not in [v for v in _walk(ds) if isinstance(v, str)]
    json.dumps(ds)  # plain data only
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == plan.micro_batch_size
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * (
        plan.data_parallel
    )


def test_deepspeed_batch_and_schedule_follow_config():
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "data.micro_batch_size=2",
            "data.global_batch_size=16",
            "parallel.tensor_parallel=2",
            "optim.lr=1e-3",
            "optim.min_lr=1e-4",
            "optim.warmup_iters=5",
            "run.train_iters=50",
            "optim.clip_grad=0.5",
        ],
    )
    ds = to_deepspeed_config(resolve(cfg, 4))  # DP = 2
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    sched = ds["scheduler"]["params"]
    assert sched["warmup_num_steps"] == 5 and sched["total_num_steps"] == 50
    assert sched["cos_min_ratio"] == pytest.approx(0.1)
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert ds["bf16"]["enabled"] is False  # tiny trains in fp32


def _learning_rates(*sets: str) -> list[float]:
    """The learning rate of each optimizer step under DeepSpeed's scheduler with these settings."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from litespark.runtime.deepspeed_config import scheduler_params, start_schedule

    cfg = apply_overrides(get_preset("tiny"), ["optim.lr=1e-3", "optim.min_lr=0", *sets])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = WarmupCosineLR(opt, **scheduler_params(cfg))
    start_schedule(sched, cfg)  # as build_engine does
    rates = []
    for _ in range(cfg.run.train_iters):
        rates.append(opt.param_groups[0]["lr"])  # what this step's update uses
        opt.step()
        sched.step()
    return rates


def test_no_warmup_trains_from_the_first_step_and_decays_to_the_end():
    rates = _learning_rates("optim.warmup_iters=0", "run.train_iters=10")
    assert rates[0] == pytest.approx(1e-3) and rates[1] == pytest.approx(1e-3)  # not 0 and half
    assert all(a > b for a, b in itertools.pairwise(rates[1:])), rates  # then the cosine, down
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    # A warm-up is DeepSpeed's own: the step before its first step() and its first iteration at 0.
    warm = _learning_rates("optim.warmup_iters=4", "run.train_iters=10")
    assert warm[:5] == pytest.approx([0.0, 0.0, 2.5e-4, 5e-4, 7.5e-4])


def test_deepspeed_accepts_the_config(dist_world_1):
    from deepspeed.runtime.config import DeepSpeedConfig

    from litespark.runtime.distributed import init_distributed
    from litespark.runtime.engine import init_deepspeed_comm

    init_distributed(tensor_parallel=1, seed=0)
    init_deepspeed_comm()  # as the engine does: gloo, no JIT build of DeepSpeed's shared-memory op
    cfg = apply_overrides(get_preset("tiny"), ["parallel.zero_stage=2"])
    ds = to_deepspeed_config(resolve(cfg))
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == 2
    assert parsed.train_batch_size == 8 and parsed.gradient_accumulation_steps == 2
    assert parsed.gradient_clipping == 1.0
