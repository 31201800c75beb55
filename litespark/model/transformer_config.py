"""``to_transformer_config``: the Megatron ``TransformerConfig`` of a run plan (pure)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from litespark.config import RunPlan
from litespark.config.automatic import fused_qkv_rope


def to_transformer_config(plan: RunPlan) -> TransformerConfig:
    """Megatron's config for the model of ``plan``.

    Llama semantics are fixed here: RMSNorm, SwiGLU (``gated_linear_unit`` + SiLU), no biases, no
    dropout, RoPE with ``rotary_base``.  ``gradient_accumulation_fusion`` stays off: it would also send
    Megatron's own output layer through APEX's fused kernel; the TE linears get the same fusion into
    DeepSpeed's fp32 buffers from :mod:`litespark.runtime.fp32_grads` (``precision.fp32_grad_accumulation``).
    """
    cfg = plan.config
    m, par, prec, k = cfg.model, cfg.parallel, cfg.precision, cfg.kernels
    te = plan.backend == "te"
    # TE's SwiGLU in the MLP's activation slot (layer_spec, te_swiglu; the fused MLP has its own).
    te_activation = te and k.te_swiglu and not k.fused_mlp
    fp8 = {}
    if prec.fp8:
        fp8 = {
            "fp8": prec.fp8_format,
            "fp8_recipe": prec.fp8_recipe,
            "fp8_margin": prec.fp8_margin,
            "fp8_amax_history_len": prec.fp8_amax_history_len,
            "fp8_amax_compute_algo": prec.fp8_amax_compute_algo,
            "fp8_dot_product_attention": k.fp8_attention,
        }
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=par.tensor_parallel,
        sequence_parallel=par.sequence_parallel,
        bf16=prec.bf16,
        params_dtype=torch.bfloat16 if prec.bf16 else torch.float32,
        # Full weights are drawn on the CPU from one seed, then split: TP=N reproduces TP=1 exactly.
        use_cpu_initialization=True,
        gradient_accumulation_fusion=False,
        # Fused kernels exist only with CUDA (TE or Megatron's JIT fusions).  Megatron's compiled
        # SwiGLU (bias_activation_fusion) and TE's (use_te_activation_func) exclude each other.
        bias_activation_fusion=te and not te_activation,
        bias_dropout_fusion=te,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=te and k.rope_fusion,
        fused_single_qkv_rope=fused_qkv_rope(cfg, plan.backend),
        cross_entropy_loss_fusion=te,
        cross_entropy_fusion_impl="te" if te and k.te_cross_entropy else "native",
        use_te_activation_func=te_activation,
        **fp8,
    )
