"""``build_model``: a Megatron-Core ``GPTModel`` with the Litespark layer spec.

Only what the model *is* lives here; how it is wrapped for training (DeepSpeed, FP8 autocast) is
the engine's job.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

import megatron_patches
from litespark.config import LitesparkConfig
from litespark.layer_spec import get_final_norm_spec, get_litespark_layer_spec
from litespark.transformer_config import to_transformer_config


def padded_vocab_size(cfg: LitesparkConfig) -> int:
    """Vocabulary rounded up to ``make_vocab_size_divisible_by x TP`` (as Megatron-LM pads it)."""
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor_parallel
    return -(-cfg.model.vocab_size // multiple) * multiple


def build_model(cfg: LitesparkConfig) -> GPTModel:
    """The Litespark Llama for ``cfg`` on this rank's TP shard (needs :func:`init_distributed`).

    Weights stay on the CPU in ``params_dtype``; the engine moves them to the device.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_model needs Megatron's parallel_state: call litespark.distributed.init_distributed first")
    megatron_patches.apply_all()
    backend = cfg.kernels.backend
    layer = get_litespark_layer_spec(backend, fused_mlp=cfg.kernels.fused_mlp, te_swiglu=cfg.kernels.te_swiglu)
    block = TransformerBlockSubmodules(
        layer_specs=[layer] * cfg.model.num_layers, layer_norm=get_final_norm_spec(backend))
    model = GPTModel(
        config=to_transformer_config(cfg),
        transformer_layer_spec=block,
        vocab_size=padded_vocab_size(cfg),
        max_sequence_length=cfg.model.seq_length,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=cfg.model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.model.rotary_base,
        parallel_output=True,
    )
    return model


def position_ids_for(tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] positions 0..s-1 for a batch of token ids."""
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
