"""The Litespark ModuleSpec: same slots for both backends, clear errors, Megatron-LM entry point."""

from __future__ import annotations

import pytest
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer

from litespark.environment import te_available
from litespark.model.layer_spec import get_litespark_layer_spec
from litespark.model.modules import RMSNormColumnParallelLinear, SDPAttention


def test_torch_spec_slots():
    spec = get_litespark_layer_spec("torch")
    assert isinstance(spec, ModuleSpec) and spec.module is TransformerLayer
    sub = spec.submodules
    assert sub.input_layernorm is IdentityOp and sub.pre_mlp_layernorm is IdentityOp  # norms are fused
    attn = sub.self_attention.submodules
    assert attn.linear_qkv is RMSNormColumnParallelLinear
    assert attn.core_attention is SDPAttention
    assert attn.linear_proj is RowParallelLinear
    assert sub.mlp.module is MLP
    assert sub.mlp.submodules.linear_fc1 is RMSNormColumnParallelLinear
    assert sub.mlp.submodules.linear_fc2 is RowParallelLinear


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown layer-spec backend 'cuda'"):
        get_litespark_layer_spec("cuda")


@pytest.mark.skipif(te_available(), reason="checks the message on hosts without Transformer Engine")
def test_te_backend_without_te_says_what_to_do():
    with pytest.raises(RuntimeError, match="needs transformer-engine and a CUDA device"):
        get_litespark_layer_spec("te")


@pytest.mark.skipif(te_available(), reason="checks the message on hosts without Transformer Engine")
def test_megatron_lm_spec_module_needs_te():
    from megatron.core.transformer.spec_utils import import_module

    with pytest.raises(RuntimeError, match="needs transformer-engine"):
        import_module(("litespark.model.megatron_lm_spec", "te_layer_spec"))


def test_te_swiglu_fills_only_the_te_mlp_activation_slot():
    from litespark.model.layer_spec import get_litespark_layer_spec

    assert get_litespark_layer_spec("torch", te_swiglu=True).submodules.mlp.submodules.activation_func is None
    assert get_litespark_layer_spec("torch").submodules.mlp.submodules.activation_func is None


def test_te_swiglu_sets_megatrons_switch_only_with_te():
    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.model.transformer_config import to_transformer_config

    plan = resolve(apply_overrides(get_preset("tiny"), ["kernels.backend=torch", "kernels.te_swiglu=true"]))
    assert to_transformer_config(plan).use_te_activation_func is False
    plan = resolve(
        apply_overrides(
            get_preset("tiny"), ["kernels.backend=te", "kernels.rope_fusion=false", "kernels.te_swiglu=true"]
        )
    )
    assert to_transformer_config(plan).use_te_activation_func is True
    plan = resolve(
        apply_overrides(
            get_preset("tiny"), ["kernels.backend=te", "kernels.rope_fusion=false", "kernels.te_swiglu=false"]
        )
    )
    assert (
        to_transformer_config(plan).use_te_activation_func is False
        and to_transformer_config(plan).bias_activation_fusion
    )
    plan = resolve(
        apply_overrides(
            get_preset("tiny"), ["kernels.backend=te", "kernels.rope_fusion=false", "kernels.fused_mlp=true"]
        )
    )
    assert to_transformer_config(plan).use_te_activation_func is False  # the fused MLP has its own SwiGLU
