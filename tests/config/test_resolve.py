"""``resolve``: every automatic choice decided once into a frozen RunPlan, the config left as given."""

from __future__ import annotations

import copy
import dataclasses
import importlib

import pytest

from litespark.config import ConfigError, RunPlan, apply_overrides, plan_for, resolve, validate
from litespark.config.presets import get_preset
from litespark.planner.gpus import GPUS

# The module, not the function that litespark.config exports under the same name.
resolve_module = importlib.import_module("litespark.config.resolve")


@pytest.mark.parametrize(
    "preset, world_size, kwargs",
    [
        ("tiny", 1, {}),
        ("llama-3b", 8, {"backend": "te", "gpu": GPUS["h200"]}),
    ],
    ids=["tiny", "llama-3b-h200x8"],
)
def test_resolve_leaves_the_config_as_given(preset, world_size, kwargs):
    cfg = get_preset(preset)
    before = copy.deepcopy(cfg)
    plan = resolve(cfg, world_size, **kwargs)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(before)
    # The plan keeps a private copy of the config as given: the caller's object is not aliased.
    assert plan.config is not cfg and dataclasses.asdict(plan.config) == dataclasses.asdict(before)
    cfg.model.num_layers += 1
    assert plan.config.model.num_layers == before.model.num_layers


def test_the_automatic_fields_stay_automatic_and_the_plan_decides_them():
    cfg = get_preset("llama-3b")
    plan = resolve(cfg, 8, backend="te", gpu=GPUS["h200"])
    assert cfg.kernels.backend == "auto" and cfg.data.micro_batch_size is None
    assert cfg.kernels.cuda_graphs is None and cfg.precision.fp32_grad_accumulation is None
    assert plan.backend == "te" and plan.micro_batch_size >= 1 and "H200" in plan.micro_batch_source
    assert (plan.world_size, plan.tensor_parallel, plan.data_parallel) == (8, 1, 8)
    gb = cfg.data.global_batch_size
    assert plan.micro_batch_size * plan.data_parallel * plan.gradient_accumulation_steps == gb
    assert set(plan.to_dict()) == {f.name for f in dataclasses.fields(RunPlan)} - {"config"}


def test_the_plan_is_frozen():
    plan = resolve(get_preset("tiny"))
    for field, value in (("micro_batch_size", 99), ("backend", "te"), ("cuda_graphs", True), ("config", None)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(plan, field, value)
    assert plan.micro_batch_size == 4 and plan.backend == "torch" and plan.cuda_graphs is False


def test_resolve_validates_exactly_once(monkeypatch):
    calls = []

    def counting_validate(cfg):
        calls.append(cfg)
        return validate(cfg)

    monkeypatch.setattr(resolve_module, "validate", counting_validate)
    cfg = get_preset("tiny")
    resolve(cfg)
    assert calls == [cfg] and calls[0] is cfg
    calls.clear()
    resolve(get_preset("llama-3b"), 8, backend="te", gpu=GPUS["h200"])  # the planner's candidates do not validate
    assert len(calls) == 1


def test_resolve_validates_before_deciding():
    cfg = apply_overrides(get_preset("tiny"), ["optim.min_lr=1"])
    with pytest.raises(ConfigError, match=r"optim.min_lr \(1.0\) must lie between 0 and optim.lr"):
        resolve(cfg)


@pytest.mark.parametrize(
    "overrides, world_size, message",
    [
        (["parallel.tensor_parallel=2"], 3, "parallel.tensor_parallel (2) does not divide the world size (3)"),
        (["parallel.tensor_parallel=2"], 1, "parallel.tensor_parallel (2) does not divide the world size (1)"),
        ([], 16, "data.global_batch_size (8) is not a multiple of the data-parallel size (16)"),
        (
            [],
            4,
            "data.global_batch_size (8) is not a multiple of data.micro_batch_size x data-parallel size (4 x 4)",
        ),
        ([], 0, "the world size must be >= 1, got 0"),
    ],
)
def test_world_size_errors_come_from_resolve(overrides, world_size, message):
    cfg = apply_overrides(get_preset("tiny"), overrides)
    validate(cfg)  # validate no longer knows a world size
    with pytest.raises(ConfigError) as info:
        resolve(cfg, world_size)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        plan_for(cfg, world_size, "torch", cfg.data.micro_batch_size)
    assert message in str(info.value)


def test_plan_for_is_pure_and_refuses_explicit_settings_that_cannot_hold():
    cfg = apply_overrides(get_preset("tiny"), ["precision.bf16=true", "precision.fp32_grad_accumulation=true"])
    before = copy.deepcopy(cfg)
    plan = plan_for(cfg, 1, "te", 4)
    assert plan.fp32_grad_accumulation is True and plan.cuda_graphs is False and plan.zero_sub_group_size is None
    with pytest.raises(ConfigError, match="cannot be combined with precision.fp32_grad_accumulation=true"):
        plan_for(apply_overrides(copy.deepcopy(cfg), ["kernels.cuda_graphs=true"]), 1, "te", 4)
    with pytest.raises(ConfigError, match="kernels.cuda_graphs=true needs kernels.backend 'te'"):
        plan_for(apply_overrides(get_preset("tiny"), ["kernels.cuda_graphs=true"]), 1, "torch", 4)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(before)


def test_checkpoint_copies_overlap_the_next_step_on_a_gpu_with_asynchronous_saves():
    """``checkpoint.overlap_copy`` None: on with asynchronous saves on the te backend, off on the torch
    backend (nothing to overlap on a CPU) and with synchronous saves, which then need no change."""
    gpu = {"backend": "te", "gpu": GPUS["h200"]}
    assert resolve(get_preset("llama-3b"), 1, **gpu).overlap_copy is True
    assert (
        resolve(apply_overrides(get_preset("llama-3b"), ["checkpoint.async_save=false"]), 1, **gpu).overlap_copy
        is False
    )
    assert (
        resolve(apply_overrides(get_preset("llama-3b"), ["checkpoint.overlap_copy=false"]), 1, **gpu).overlap_copy
        is False
    )
    assert resolve(get_preset("tiny")).overlap_copy is False
    with pytest.raises(ConfigError, match="checkpoint.overlap_copy=true needs checkpoint.async_save=true"):
        resolve(
            apply_overrides(get_preset("llama-3b"), ["checkpoint.overlap_copy=true", "checkpoint.async_save=false"]),
            1,
            **gpu,
        )
