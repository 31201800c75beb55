"""``build_model``: a Megatron-Core ``GPTModel`` with the Litespark layer spec.

Only what the model *is* lives here; how it is wrapped for training (DeepSpeed, FP8 autocast) is
the engine's job.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

import megatron_patches
from litespark.config import ConfigError, LitesparkConfig, ModelConfig, RunPlan
from litespark.log import get_logger
from litespark.model.layer_spec import get_final_norm_spec, get_litespark_layer_spec
from litespark.model.transformer_config import to_transformer_config
from megatron_patches import qkv_rope as qkv_rope_patch


def padded_vocab_size(cfg: LitesparkConfig) -> int:
    """Vocabulary rounded up to ``make_vocab_size_divisible_by x TP`` (as Megatron-LM pads it)."""
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor_parallel
    return -(-cfg.model.vocab_size // multiple) * multiple


def build_model(plan: RunPlan) -> GPTModel:
    """The Litespark Llama of ``plan`` on this rank's TP shard (needs :func:`init_distributed`).

    Weights stay on the CPU in ``params_dtype``; the engine moves them to the device.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError(
            "build_model needs Megatron's parallel_state: call litespark.runtime.distributed.init_distributed first"
        )
    megatron_patches.apply_all()
    cfg, backend = plan.config, plan.backend
    if backend == "te":
        select_te_norm_kernels(plan.norm_kernel)
    _select_qkv_rope_kernel(cfg, backend)
    layer = get_litespark_layer_spec(backend, fused_mlp=cfg.kernels.fused_mlp, te_swiglu=cfg.kernels.te_swiglu)
    block = TransformerBlockSubmodules(
        layer_specs=[layer] * cfg.model.num_layers, layer_norm=get_final_norm_spec(backend)
    )
    model = GPTModel(
        config=to_transformer_config(plan),
        transformer_layer_spec=block,
        vocab_size=padded_vocab_size(cfg),
        max_sequence_length=cfg.model.seq_length,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=cfg.model.tie_embeddings,
        parallel_output=True,
        **rope_kwargs(cfg.model),
    )
    if backend == "te" and plan.fp8_output_layer:
        from litespark.model.modules.fp8_output_layer import use_fp8_output_layer

        use_fp8_output_layer(model)
    mask_padded_vocab(model, cfg)
    return model


PADDED_LOGIT = -1.0e4
"""The logit of a padded vocabulary entry: no probability (exp(-1e4) is 0 in any float format)."""


def mask_padded_vocab(model: GPTModel, cfg: LitesparkConfig) -> None:
    """Give the vocabulary rows added by :func:`padded_vocab_size` no probability.

    Megatron computes the softmax over the padded vocabulary: rows of a converted model are zero, so
    every padded entry gets logit 0 and takes probability from the real tokens (log-probabilities 1%
    lower than the Hugging Face model's on a small vocabulary, which DPO's and SFT's comparisons with
    it see), and a model trained from scratch spends steps learning to push them down.  A hook on the
    output layer sets this rank's padded logits to :data:`PADDED_LOGIT` instead; nothing is done when
    the vocabulary needs no padding (Llama 3's 128,256 at TP 1 and 2).
    """
    padded, vocab = padded_vocab_size(cfg), cfg.model.vocab_size
    if padded == vocab:
        return
    per_rank = padded // cfg.parallel.tensor_parallel
    real = min(max(vocab - parallel_state.get_tensor_model_parallel_rank() * per_rank, 0), per_rank)
    if real == per_rank:
        return

    def hook(module, args, output):
        logits, bias = output
        keep = torch.arange(per_rank, device=logits.device) < real
        return logits.masked_fill(~keep, PADDED_LOGIT), bias

    model.output_layer.register_forward_hook(hook)


def rope_kwargs(m: ModelConfig) -> dict:
    """``GPTModel``'s rotary-embedding arguments for ``m``: RoPE with its base and, for Llama 3.x, its
    scaling factor.  Megatron-LM's own GPT builder passes ``rope_scaling`` without the factor, so any
    factor trains as 8; the factor is passed here."""
    scaled = m.rope_scaling_factor is not None
    return {
        "position_embedding_type": "rope",
        "rotary_base": m.rotary_base,
        "rope_scaling": scaled,
        "rope_scaling_factor": m.rope_scaling_factor if scaled else 8.0,
    }


TE_CUDNN_NORM_SWITCHES = ("NVTE_NORM_FWD_USE_CUDNN", "NVTE_NORM_BWD_USE_CUDNN")
"""Transformer Engine's environment switches for cuDNN's RMSNorm / LayerNorm, read once per process."""


def select_te_norm_kernels(kernel: str) -> None:
    """Set TE's normalization switches for ``kernels.norm_kernel`` (``"te"`` or ``"cudnn"``).

    TE reads them at the first normalization it runs in the process, so this must happen before any
    forward pass; :func:`build_model` calls it.  A switch the user set to the other value is
    overridden, with a warning: the config is the single source.
    """
    if kernel not in ("te", "cudnn"):
        raise ValueError(f"kernels.norm_kernel must be 'te' or 'cudnn', got {kernel!r}")
    value = "1" if kernel == "cudnn" else "0"
    for name in TE_CUDNN_NORM_SWITCHES:
        found = os.environ.get(name)
        if found is not None and found != value:
            get_logger(__name__).warning(
                "%s=%s in the environment overridden by kernels.norm_kernel=%s", name, found, kernel
            )
        os.environ[name] = value


_qkv_rope_choice: str | None = None
"""The ``kernels.qkv_rope_kernel`` that the last model calling Megatron's single-QKV RoPE chose."""


def _select_qkv_rope_kernel(cfg: LitesparkConfig, backend: str) -> None:
    """Bind Megatron's single-QKV RoPE to the kernels ``kernels.qkv_rope_kernel`` names (process-wide).

    Only a model that calls that name (TE backend, rope_fusion, fused_qkv_rope) moves the binding; a
    torch-backend or split-RoPE model leaves it to the models already built.  A second model choosing
    the other kernel switches the first one too, so that is logged.
    """
    global _qkv_rope_choice
    from litespark.config.automatic import fused_qkv_rope

    k = cfg.kernels
    if not fused_qkv_rope(cfg, backend):
        return
    if _qkv_rope_choice not in (None, k.qkv_rope_kernel):
        get_logger(__name__).warning(
            "kernels.qkv_rope_kernel=%s replaces %s for every model in this process (it is one binding "
            "in megatron.core.transformer.attention)",
            k.qkv_rope_kernel,
            _qkv_rope_choice,
        )
    if k.qkv_rope_kernel == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError(
                "kernels.qkv_rope_kernel=triton needs the triton package (it ships with CUDA builds of "
                "torch): install it or set kernels.qkv_rope_kernel=te"
            )
        qkv_rope_patch.apply()
    else:
        qkv_rope_patch.remove()
    _qkv_rope_choice = k.qkv_rope_kernel


def position_ids_for(tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] positions 0..s-1 for a batch of token ids."""
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
