"""The Litespark transformer-layer spec for Megatron-Core's ``TransformerLayer``.

One spec, two backends.  Every layer has the same slots whatever the backend:

    self_attention: SelfAttention
        linear_qkv      RMSNorm fused into the QKV projection (column parallel)
        core_attention  causal softmax attention with GQA
        linear_proj     output projection (row parallel)
    mlp: MLP
        linear_fc1      RMSNorm fused into the gate+up projection (column parallel)
        linear_fc2      down projection (row parallel); SwiGLU in between
    input_layernorm, pre_mlp_layernorm: IdentityOp (the norms live inside the fused slots)

``te`` fills them with Transformer Engine modules (FP8-capable GEMMs, cuDNN fused attention, and,
with ``fused_mlp``, TE's operation fuser for the whole MLP); ``torch`` fills them with
:mod:`litespark.model.modules` and Megatron's own parallel linears, runs on CPU and serves as reference.
Parameter names are identical, so checkpoints move between backends.

Use it in your own Megatron code::

    from litespark.model.layer_spec import get_litespark_layer_spec
    model = GPTModel(config=..., transformer_layer_spec=get_litespark_layer_spec("te"), ...)

or with Megatron-LM: ``pretrain_gpt.py --spec litespark.model.megatron_lm_spec te_layer_spec`` (docs/layer_spec.md).
"""

from __future__ import annotations

from typing import Literal

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from litespark.environment import te_available
from litespark.model.modules import RMSNormColumnParallelLinear, SDPAttention

Backend = Literal["te", "torch"]


def _te_slots(fused_mlp: bool) -> tuple[type, type, type, type, type, type]:
    """(qkv, core_attention, proj, mlp, fc1, fc2) filled by Transformer Engine (the activation slot:
    :func:`_te_activation`)."""
    if not te_available():
        raise RuntimeError(
            "the 'te' layer-spec backend needs transformer-engine and a CUDA device "
            "(pip install -r requirements-gpu.txt); use backend='torch' on CPU"
        )
    from megatron.core.extensions.transformer_engine import (  # mcore 0.16: TE wrappers live here
        TEDotProductAttention,
        TEFusedMLP,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    mlp = TEFusedMLP if fused_mlp else MLP
    return (
        TELayerNormColumnParallelLinear,
        TEDotProductAttention,
        TERowParallelLinear,
        mlp,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )


def _te_activation():
    """TE's SwiGLU module for the MLP's activation slot (Megatron builds ``te.pytorch.ops.SwiGLU`` from
    the config's gated SiLU); needs ``TransformerConfig.use_te_activation_func``."""
    from megatron.core.extensions.transformer_engine import TEActivationOp

    return TEActivationOp


def _torch_slots() -> tuple[type, type, type, type, type, type]:
    """(qkv, core_attention, proj, mlp, fc1, fc2) filled by torch modules (CPU and reference)."""
    return (
        RMSNormColumnParallelLinear,
        SDPAttention,
        RowParallelLinear,
        MLP,
        RMSNormColumnParallelLinear,
        RowParallelLinear,
    )


def get_litespark_layer_spec(backend: Backend = "te", *, fused_mlp: bool = False, te_swiglu: bool = True) -> ModuleSpec:
    """The Litespark ``ModuleSpec`` for one ``TransformerLayer``.

    Args:
        backend: ``"te"`` (Transformer Engine, CUDA, FP8-capable) or ``"torch"`` (runs anywhere).
        fused_mlp: with ``"te"``, run the MLP through TE's operation fuser (``TEFusedMLP``), which
            fuses RMSNorm + FC1, SwiGLU with its FP8 cast, and FC2; same parameters as ``MLP``.
            BF16 or tensorwise FP8 only (see ``KernelConfig.fused_mlp``).  Ignored by the torch backend.
        te_swiglu: with ``"te"`` and the unfused MLP, fill the MLP's activation slot with TE's SwiGLU.
            Megatron's MLP uses the slot only when the TransformerConfig has
            ``use_te_activation_func=True`` (``to_transformer_config`` sets it from
            ``kernels.te_swiglu``); otherwise it runs its own SwiGLU, so the filled slot is safe with
            any config.  A config with the switch on needs the slot filled.  Ignored by the torch backend.
    """
    activation = None
    if backend == "te":
        qkv, core_attention, proj, mlp, fc1, fc2 = _te_slots(fused_mlp)
        if te_swiglu and not fused_mlp:
            activation = _te_activation()
    elif backend == "torch":
        qkv, core_attention, proj, mlp, fc1, fc2 = _torch_slots()
    else:
        raise ValueError(f"unknown layer-spec backend {backend!r} (expected 'te' or 'torch')")
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=qkv,
                    core_attention=core_attention,
                    linear_proj=proj,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp,
            mlp=ModuleSpec(
                module=mlp, submodules=MLPSubmodules(linear_fc1=fc1, linear_fc2=fc2, activation_func=activation)
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def get_final_norm_spec(backend: Backend = "te") -> type:
    """Module for the final RMSNorm of the block (the only norm not fused into a linear)."""
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm
