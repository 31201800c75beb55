"""Config loading, overrides, validation messages and the CLI's exit-code-2 contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from litespark.config import (
    ConfigError,
    LitesparkConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    resolve,
    to_dict,
    validate,
)
from litespark.config.automatic import fp8_output_layer
from litespark.config.presets import PRESETS, get_preset
from litespark.planner.gpus import GPUS
from litespark.training.metrics import count_parameters
from tests.helpers.processes import ROOT


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_validates_and_round_trips(name):
    cfg = validate(get_preset(name))
    assert cfg.preset == name
    assert from_dict(to_dict(cfg)) == cfg


def test_presets_are_fresh_objects():
    a, b = get_preset("tiny"), get_preset("tiny")
    a.model.num_layers = 99
    assert b.model.num_layers == 2


def test_llama_3b_shape_and_parameter_count():
    m = get_preset("llama-3b").model
    assert (
        m.num_layers,
        m.hidden_size,
        m.num_attention_heads,
        m.num_query_groups,
        m.ffn_hidden_size,
        m.vocab_size,
        m.seq_length,
    ) == (28, 3072, 24, 8, 8192, 32000, 4096)
    n = count_parameters(m)
    assert n.without_input_embedding == 2_917_051_392  # "~2.92 B counting the LM head, not the input embedding"
    assert n.embedding == 32000 * 3072


def test_llama_30b_shape():
    m = get_preset("llama-30b").model
    assert (
        m.num_layers,
        m.hidden_size,
        m.num_attention_heads,
        m.num_query_groups,
        m.ffn_hidden_size,
        m.vocab_size,
        m.seq_length,
    ) == (60, 6656, 52, 52, 17920, 32000, 4096)
    assert 32.0e9 < count_parameters(m).without_input_embedding < 32.6e9


def test_overrides_are_typed():
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "optim.lr=3e-4",
            "model.num_layers=4",
            "precision.bf16=true",
            "data.prefixes=a,b",
            "data.weights=0.3,0.7",
            "optim.decay_iters=none",
            "parallel.zero_stage=2",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.num_layers == 4 and isinstance(cfg.model.num_layers, int)
    assert cfg.precision.bf16 is True
    assert cfg.data.prefixes == ["a", "b"] and cfg.data.weights == [0.3, 0.7]
    assert cfg.optim.decay_iters is None and cfg.parallel.zero_stage == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.bogus=1", "unknown config key 'model.bogus'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("model.num_layers=two", "model.num_layers: expected an integer"),
        ("model.num_layers=2.5", "model.num_layers: expected an integer"),
        ("precision.bf16=maybe", "precision.bf16: expected true or false"),
        ("precision.fp8_recipe=mxfp9", "precision.fp8_recipe: 'mxfp9' is not one of delayed, tensorwise, blockwise"),
        ("kernels.norm_kernel=apex", "kernels.norm_kernel: 'apex' is not one of te, cudnn"),
        ("optim.lr", "not of the form section.field=value"),
        ("optim.lr=inf", "optim.lr: expected a finite number, got 'inf'"),
        ("optim.lr=nan", "optim.lr: expected a finite number, got 'nan'"),
        ("model.rotary_base=-inf", "model.rotary_base: expected a finite number, got '-inf'"),
        ("data.weights=1,inf", "data.weights: expected a finite number, got 'inf'"),
        ("model.num_layers=inf", "model.num_layers: expected an integer, got 'inf'"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(get_preset("tiny"), [override])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["parallel.tensor_parallel=3"], "parallel.tensor_parallel (3) does not divide model.num_attention_heads (4)"),
        (["model.num_query_groups=3"], "model.num_query_groups (3) does not divide model.num_attention_heads (4)"),
        (["parallel.tensor_parallel=4"], "parallel.tensor_parallel (4) does not divide model.num_query_groups (2)"),
        (
            ["parallel.zero_stage=3", "parallel.tensor_parallel=2"],
            "parallel.zero_stage=3 needs parallel.tensor_parallel=1",
        ),
        (["parallel.zero_stage=4"], "parallel.zero_stage must be 1, 2 or 3"),
        (
            ["data.global_batch_size=6", "data.micro_batch_size=4"],
            "data.global_batch_size (6) is not a multiple of data.micro_batch_size (4)",
        ),
        (["parallel.sequence_parallel=true"], "parallel.sequence_parallel needs parallel.tensor_parallel > 1"),
        (["precision.fp8=true"], "precision.fp8=true needs precision.bf16=true"),
        (
            ["checkpoint.overlap_copy=true", "checkpoint.async_save=false"],
            "checkpoint.overlap_copy=true needs checkpoint.async_save=true",
        ),
        (
            ["kernels.backend=te", "precision.bf16=true", "precision.fp8=true", "kernels.fused_mlp=true"],
            "kernels.fused_mlp=true works with precision.fp8_recipe=tensorwise only, not delayed",
        ),
        (["kernels.cuda_graph_layers=1"], "kernels.cuda_graph_layers needs kernels.cuda_graphs=true"),
        (
            ["kernels.cuda_graph_layers=1", "kernels.cuda_graphs=false"],
            "kernels.cuda_graph_layers needs kernels.cuda_graphs=true",
        ),
        (
            ["kernels.cuda_graphs=true", "kernels.backend=te", "kernels.cuda_graph_layers=0"],
            "kernels.cuda_graph_layers must lie between 1 and model.num_layers (2), got 0",
        ),
        (
            ["kernels.cuda_graphs=true", "kernels.backend=te", "kernels.cuda_graph_layers=3"],
            "kernels.cuda_graph_layers must lie between 1 and model.num_layers (2), got 3",
        ),
        (["optim.min_lr=1"], "optim.min_lr (1.0) must lie between 0 and optim.lr"),
        (["data.source=indexed"], "data.prefixes is empty"),
        (["data.prefixes=a,b", "data.weights=1"], "data.weights has 1 entries for 2 data.prefixes"),
        (["data.split=98,2"], "data.split '98,2' must be three non-negative numbers"),
        (["model.hidden_size=66"], "model.hidden_size (66) is not divisible by model.num_attention_heads (4)"),
        (
            [
                "kernels.backend=te",
                "precision.bf16=true",
                "precision.fp8=true",
                "precision.fp8_output_layer=true",
                "model.tie_embeddings=true",
            ],
            "precision.fp8_output_layer=true does not support model.tie_embeddings=true",
        ),
    ],
)
def test_invalid_combinations_are_rejected(overrides, field):
    cfg = apply_overrides(get_preset("tiny"), overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert field in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=re.escape(field)):
        resolve(cfg)  # resolve validates first


@pytest.mark.parametrize(
    "overrides, world_size, field",
    [
        (
            ["precision.bf16=true", "precision.fp8=true"],
            1,
            "precision.fp8=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')",
        ),
        (
            ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"],
            2,
            "parallel.sequence_parallel=true needs Transformer Engine on a CUDA host",
        ),
        (
            ["kernels.cuda_graphs=true", "kernels.backend=torch"],
            1,
            "kernels.cuda_graphs=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')",
        ),
        (
            ["kernels.cuda_graphs=true", "kernels.backend=te", "parallel.tensor_parallel=2"],
            2,
            "kernels.cuda_graphs=true needs parallel.tensor_parallel=1",
        ),
        (
            ["kernels.cuda_graphs=true", "kernels.backend=te", "parallel.zero_stage=3"],
            1,
            "kernels.cuda_graphs=true needs parallel.zero_stage 1 or 2",
        ),
        (
            ["kernels.backend=te", "model.hidden_size=96"],
            1,
            "kernels.qkv_rope_kernel=triton needs a power-of-two head dimension, got 24: set kernels.qkv_rope_kernel=te",
        ),
        (["parallel.tensor_parallel=2"], 3, "parallel.tensor_parallel (2) does not divide the world size (3)"),
        (
            ["data.global_batch_size=6", "data.micro_batch_size=2"],
            4,
            "data.global_batch_size (6) is not a multiple of the data-parallel size (4)",
        ),
    ],
)
def test_what_depends_on_the_backend_or_world_size_is_refused_by_resolve(overrides, world_size, field):
    cfg = apply_overrides(get_preset("tiny"), overrides)
    validate(cfg)  # the config alone is fine: the refusal is resolve's
    with pytest.raises(ConfigError) as info:
        resolve(cfg, world_size)
    assert field in str(info.value)
    assert "\n" not in str(info.value)


def test_batch_arithmetic_needs_world_size():
    cfg = apply_overrides(
        get_preset("tiny"), ["data.micro_batch_size=2", "data.global_batch_size=12", "parallel.tensor_parallel=2"]
    )
    plan = resolve(cfg, world_size=4)
    assert (plan.data_parallel, plan.micro_batch_size, plan.gradient_accumulation_steps) == (2, 2, 3)  # 12 = 2 x 2 x 3
    validate(cfg)  # no world size: nothing to refuse
    with pytest.raises(ConfigError, match=r"not a multiple of data.micro_batch_size x data-parallel size \(2 x 4\)"):
        resolve(cfg, world_size=8)
    with pytest.raises(ConfigError, match=r"does not divide the world size \(3\)"):
        resolve(cfg, world_size=3)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\nmodel:\n  num_layers: 3\n")
    cfg = load_yaml(get_preset("tiny"), path)
    apply_overrides(cfg, ["model.num_layers=5"])
    assert cfg.optim.lr == 1e-3 and cfg.model.num_layers == 5


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(LitesparkConfig(), bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_yaml(LitesparkConfig(), unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(LitesparkConfig(), tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_yaml(LitesparkConfig(), tmp_path)
    infinite = tmp_path / "infinite.yaml"
    infinite.write_text("optim:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number, got inf"):
        load_yaml(LitesparkConfig(), infinite)


def test_validate_refuses_non_finite_numbers_set_in_code():
    cfg = get_preset("tiny")
    cfg.optim.clip_grad = float("nan")
    with pytest.raises(ConfigError, match="optim.clip_grad must be a finite number, got nan"):
        validate(cfg)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "litespark.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "parallel.tensor_parallel=3"], "parallel.tensor_parallel (3) does not divide"),
        (["--set", "model.bogus=1"], "unknown config key 'model.bogus'"),
        (["--preset", "llama-7b"], "unknown preset 'llama-7b'"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    ],
)
def test_cli_config_errors_are_one_line_and_exit_2(args, message):
    proc = _cli(*args, "--print-config")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [f"litespark.train: error: {errors[0].split('error: ', 1)[1]}"]
    assert message in errors[0]


@pytest.mark.slow
def test_cli_print_config_llama_3b():
    proc = _cli("--preset", "llama-3b", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "hidden_size: 3072" in proc.stdout
    assert "parameters: 2,917,051,392 (2.92 B)" in proc.stdout
    printed = yaml.safe_load(proc.stdout)  # the config as given, then its plan (``plan:``)
    assert printed["kernels"]["backend"] == "auto" and printed["data"]["micro_batch_size"] is None
    plan = printed["plan"]
    assert plan["backend"] == "te"  # what a GPU host runs, even when printed on CPU
    # The automatic micro-batch as planned for an H200, and the graphs and fp32 gradients it implies.
    assert plan["micro_batch_size"] == 8 and "H200" in plan["micro_batch_source"] and "H200" in proc.stderr
    assert plan["cuda_graphs"] is False and plan["fp32_grad_accumulation"] is True
    # llama-30b fits no single GPU: printed without a plan, not refused; for the 32 processes of its
    # job script (WORLD_SIZE, as slurm/pretrain_common.sh passes it) it is planned.
    alone = _cli("--preset", "llama-30b", "--print-config")
    assert alone.returncode == 0, alone.stderr
    printed = yaml.safe_load(alone.stdout)
    assert printed["plan"] is None and printed["data"]["micro_batch_size"] is None
    assert "world size (1)" in alone.stderr
    planned = yaml.safe_load(_cli("--preset", "llama-30b", "--print-config", env={"WORLD_SIZE": "32"}).stdout)
    assert planned["plan"]["micro_batch_size"] == 2 and planned["plan"]["data_parallel"] == 8
    small = _cli("--preset", "llama-3b", "--print-config", "--set", "data.micro_batch_size=2")
    assert small.returncode == 0, small.stderr
    printed = yaml.safe_load(small.stdout)
    assert printed["plan"]["cuda_graphs"] is True and printed["kernels"]["cuda_graphs"] is None


def test_resolve_refuses_what_this_host_cannot_run(monkeypatch):
    import litespark.environment
    import litespark.planner.gpus

    monkeypatch.setattr(litespark.environment, "te_available", lambda: False)
    cfg = get_preset("llama-3b")  # fp8 with backend auto
    with pytest.raises(ConfigError, match="precision.fp8=true needs Transformer Engine on a CUDA host"):
        resolve(cfg)
    assert resolve(cfg, backend="te", gpu=GPUS["h200"]).backend == "te"  # a named host's backend is taken
    cfg = apply_overrides(
        get_preset("llama-3b"), ["precision.fp8=false", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]
    )
    with pytest.raises(ConfigError, match="parallel.sequence_parallel=true needs Transformer Engine"):
        resolve(cfg, 2)
    monkeypatch.setattr(litespark.environment, "te_available", lambda: True)
    cfg = apply_overrides(get_preset("llama-3b"), ["data.micro_batch_size=2"])
    plan = resolve(cfg)
    assert (plan.backend, plan.micro_batch_size, plan.micro_batch_source) == ("te", 2, "data.micro_batch_size")
    assert cfg.kernels.backend == "auto" and plan.config.kernels.backend == "auto"  # the config is not changed
    monkeypatch.setattr(litespark.planner.gpus, "gpu_of_this_host", lambda: None)  # a host without a CUDA device
    cfg = get_preset("llama-3b")
    with pytest.raises(ConfigError, match="data.micro_batch_size=null .automatic. needs a CUDA device"):
        resolve(cfg)  # the automatic micro-batch plans for this host's GPU
    plan = resolve(cfg, gpu=GPUS["h200"])
    assert plan.micro_batch_size == 8 and "H200" in plan.micro_batch_source
    assert cfg.kernels.backend == "auto" and cfg.data.micro_batch_size is None


@pytest.mark.parametrize(
    "overrides, graphs",
    [
        (["kernels.backend=te", "data.micro_batch_size=2"], True),
        (["kernels.backend=te", "data.micro_batch_size=1", "data.global_batch_size=1"], True),
        (["kernels.backend=te", "data.micro_batch_size=4"], False),  # kernel-bound: no gain measured
        (["kernels.backend=te", "data.micro_batch_size=2", "parallel.tensor_parallel=2"], False),
        (["kernels.backend=te", "data.micro_batch_size=2", "parallel.zero_stage=3"], False),
        (["kernels.backend=torch", "data.micro_batch_size=2"], False),
        (["kernels.backend=te", "data.micro_batch_size=2", "kernels.cuda_graphs=false"], False),
        (["kernels.backend=te", "data.micro_batch_size=4", "kernels.cuda_graphs=true"], True),
    ],
)
def test_cuda_graphs_auto_resolves_where_they_pay_and_run(overrides, graphs):
    cfg = apply_overrides(get_preset("tiny"), ["data.global_batch_size=8", *overrides])
    setting = None if not any("cuda_graphs" in o for o in overrides) else graphs
    assert cfg.kernels.cuda_graphs is setting
    plan = resolve(cfg, cfg.parallel.tensor_parallel)
    assert plan.cuda_graphs is graphs
    assert plan.cuda_graph_layers == (cfg.model.num_layers if graphs else 0)
    assert cfg.kernels.cuda_graphs is setting and plan.config.kernels.cuda_graphs is setting  # decided in the plan only


@pytest.mark.parametrize(
    "overrides",
    [
        ["kernels.backend=torch"],
        ["kernels.backend=te", "kernels.qkv_rope_kernel=te"],
        ["kernels.backend=te", "kernels.fused_qkv_rope=false"],
    ],
    ids=["torch-backend", "te-kernel", "split-rope"],
)
def test_a_head_dimension_the_triton_rope_cannot_take_is_fine_where_it_does_not_run(overrides):
    resolve(apply_overrides(get_preset("tiny"), ["model.hidden_size=96", *overrides]))


def test_auto_backend_refuses_the_triton_rope_for_such_a_head_dimension_only_when_it_resolves_to_te(monkeypatch):
    import litespark.environment as environment

    for te, refused in ((False, False), (True, True)):
        monkeypatch.setattr(environment, "te_available", lambda te=te: te)
        cfg = apply_overrides(get_preset("tiny"), ["model.hidden_size=96", "kernels.backend=auto"])
        validate(cfg)
        if refused:
            with pytest.raises(ConfigError, match="power-of-two head dimension, got 24"):
                resolve(cfg)
        else:
            assert resolve(cfg).backend == "torch"
        assert cfg.kernels.backend == "auto"


def test_the_fp8_output_layer_switch_is_ignored_without_fp8():
    cfg = apply_overrides(get_preset("tiny"), ["precision.fp8_output_layer=true", "model.tie_embeddings=true"])
    validate(cfg)
    assert fp8_output_layer(cfg) is False
    assert resolve(cfg).fp8_output_layer is False


@pytest.mark.parametrize(
    "setting, tied, micro_batch, expected",
    [
        ("none", False, 8, True),
        ("none", True, 8, False),
        ("false", False, 8, False),
        ("true", False, 8, True),
        # micro-batch 2 resolves to CUDA graphs (the H100's llama-3b run), where it is on as well
        ("none", False, 2, True),
        ("none", True, 2, False),
        ("false", False, 2, False),
    ],
)
def test_the_automatic_fp8_output_layer_is_on_with_fp8_unless_tied(setting, tied, micro_batch, expected):
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "kernels.backend=te",
            "precision.bf16=true",
            "precision.fp8=true",
            f"precision.fp8_output_layer={setting}",
            f"model.tie_embeddings={str(tied).lower()}",
            f"data.micro_batch_size={micro_batch}",
            "data.global_batch_size=8",
        ],
    )
    plan = resolve(cfg)
    assert plan.cuda_graphs is (micro_batch == 2)  # the case covers the path it names
    assert fp8_output_layer(cfg) is expected and plan.fp8_output_layer is expected


@pytest.mark.parametrize(
    "source, setting, expected",
    [
        ("mock", "none", "cudnn"),  # fixed-size rows: cuDNN's graphs, built once
        ("sft", "none", "te"),  # packed rows: a new token count at every micro-batch
        ("dpo", "none", "te"),
        ("sft", "cudnn", "cudnn"),  # an explicit choice stands
        ("mock", "te", "te"),
    ],
)
def test_the_automatic_norm_kernel_avoids_cudnn_graphs_on_packed_rows(source, setting, expected):
    sets = [f"data.source={source}", f"kernels.norm_kernel={setting}", "kernels.cuda_graphs=false"]
    if source != "mock":
        sets.append("sft.data=examples.jsonl")
    cfg = apply_overrides(get_preset("tiny"), sets)
    plan = resolve(cfg, backend="te")
    assert plan.norm_kernel == expected
    assert cfg.kernels.norm_kernel == (None if setting == "none" else setting)  # the config stays as given
