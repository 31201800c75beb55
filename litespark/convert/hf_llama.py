"""Weight mapping between a Litespark model and Hugging Face ``LlamaForCausalLM``.

Pure tensor functions over *unsharded* (TP=1) state dicts; consolidating TP shards and ZeRO
partitions happens before these are called.  The layouts that differ:

* Megatron fuses Q, K and V into one ``linear_qkv.weight`` grouped by KV head: for each of the
  ``g`` query groups, the group's ``heads/g`` query heads, then its key head, then its value head.
* Megatron fuses gate and up projections into ``linear_fc1.weight`` as ``[gate; up]``.
* RMSNorm weights live inside the fused norm+linear slots (``layer_norm_weight``).

RoPE needs no permutation: Megatron's non-interleaved rotary embedding rotates halves exactly as
HF's ``rotate_half`` does.
"""

from __future__ import annotations

from typing import Protocol

import torch

from litespark.config import ModelConfig


class TensorSource(Protocol):
    """Hugging Face tensors by name: a state dict, or the lazily opened shards of ``HFTensors``."""

    def __getitem__(self, name: str) -> torch.Tensor: ...

    def __contains__(self, name: str) -> bool: ...


def _split_qkv(qkv: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, g = m.hidden_size // m.num_attention_heads, m.num_query_groups
    per_group = m.num_attention_heads // g
    grouped = qkv.view(g, (per_group + 2) * d, m.hidden_size)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return (q.reshape(-1, m.hidden_size), k.reshape(-1, m.hidden_size), v.reshape(-1, m.hidden_size))


def _join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    d, g = m.hidden_size // m.num_attention_heads, m.num_query_groups
    per_group = m.num_attention_heads // g
    grouped = torch.cat([q.view(g, per_group * d, -1), k.view(g, d, -1), v.view(g, d, -1)], dim=1)
    return grouped.reshape(-1, m.hidden_size)


def layer_to_hf(sd: dict[str, torch.Tensor], m: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    """HF tensors of decoder layer ``i`` from the Litespark TP=1 tensors of that layer (full names)."""
    src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
    q, k, v = _split_qkv(sd[src + "self_attention.linear_qkv.weight"], m)
    gate, up = torch.chunk(sd[src + "mlp.linear_fc1.weight"], 2, dim=0)
    out = {
        dst + "input_layernorm.weight": sd[src + "self_attention.linear_qkv.layer_norm_weight"],
        dst + "self_attn.q_proj.weight": q,
        dst + "self_attn.k_proj.weight": k,
        dst + "self_attn.v_proj.weight": v,
        dst + "self_attn.o_proj.weight": sd[src + "self_attention.linear_proj.weight"],
        dst + "post_attention_layernorm.weight": sd[src + "mlp.linear_fc1.layer_norm_weight"],
        dst + "mlp.gate_proj.weight": gate,
        dst + "mlp.up_proj.weight": up,
        dst + "mlp.down_proj.weight": sd[src + "mlp.linear_fc2.weight"],
    }
    return {key: t.contiguous() for key, t in out.items()}


def outer_to_hf(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """HF embedding, final norm and LM head (vocabulary padding removed; the head is the embedding
    tensor itself when tied, as HF lists it)."""
    v = m.vocab_size
    out = {
        "model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:v].contiguous(),
        "model.norm.weight": sd["decoder.final_layernorm.weight"],
    }
    out["lm_head.weight"] = (
        out["model.embed_tokens.weight"] if m.tie_embeddings else sd["output_layer.weight"][:v].contiguous()
    )
    return out


def to_hf_state_dict(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama state dict from a Litespark TP=1 model state dict (vocab padding removed)."""
    out = outer_to_hf(sd, m)
    for i in range(m.num_layers):
        out.update(layer_to_hf(sd, m, i))
    return out


def layer_from_hf(hf: TensorSource, m: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    """Litespark TP=1 tensors of decoder layer ``i`` from the HF tensors of that layer."""
    src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {
        dst + "self_attention.linear_qkv.layer_norm_weight": hf[src + "input_layernorm.weight"],
        dst + "self_attention.linear_qkv.weight": _join_qkv(
            hf[src + "self_attn.q_proj.weight"],
            hf[src + "self_attn.k_proj.weight"],
            hf[src + "self_attn.v_proj.weight"],
            m,
        ),
        dst + "self_attention.linear_proj.weight": hf[src + "self_attn.o_proj.weight"],
        dst + "mlp.linear_fc1.layer_norm_weight": hf[src + "post_attention_layernorm.weight"],
        dst + "mlp.linear_fc1.weight": torch.cat([hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]]),
        dst + "mlp.linear_fc2.weight": hf[src + "mlp.down_proj.weight"],
    }
    return {key: t.contiguous() for key, t in out.items()}


def outer_from_hf(hf: TensorSource, m: ModelConfig, padded_vocab: int) -> dict[str, torch.Tensor]:
    """Litespark embedding, final norm and (untied) output layer; padded vocabulary rows are zero."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = padded_vocab - t.shape[0]
        return torch.cat([t, t.new_zeros(extra, t.shape[1])]) if extra else t.contiguous()

    out = {
        "embedding.word_embeddings.weight": pad(hf["model.embed_tokens.weight"]),
        "decoder.final_layernorm.weight": hf["model.norm.weight"].contiguous(),
    }
    if not m.tie_embeddings:
        out["output_layer.weight"] = pad(hf["lm_head.weight"])
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor], m: ModelConfig, padded_vocab: int) -> dict[str, torch.Tensor]:
    """Litespark TP=1 state dict from an HF Llama state dict; padded vocab rows are zero."""
    out = outer_from_hf(hf, m, padded_vocab)
    for i in range(m.num_layers):
        out.update(layer_from_hf(hf, m, i))
    return out


LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The Llama 3 RoPE scaling parameters Megatron-Core's ``RotaryEmbedding`` fixes (every Llama 3.x
checkpoint has these); only the factor varies."""


def to_hf_rope_parameters(m: ModelConfig) -> dict:
    """HF's ``rope_parameters`` (transformers 5) for ``m``: ``default`` or ``llama3`` with its factor."""
    if m.rope_scaling_factor is None:
        return {"rope_type": "default", "rope_theta": m.rotary_base}
    return {"rope_type": "llama3", "factor": m.rope_scaling_factor, **LLAMA3_ROPE_FIXED, "rope_theta": m.rotary_base}


def to_transformers4_rope(rope_parameters: dict) -> dict:
    """``rope_parameters`` as transformers 4 writes and reads RoPE: ``rope_theta`` and ``rope_scaling``
    (None for plain RoPE)."""
    scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    return {
        "rope_theta": rope_parameters["rope_theta"],
        "rope_scaling": None if scaling["rope_type"] == "default" else scaling,
    }


def to_llama_config_kwargs(kwargs: dict) -> dict:
    """``kwargs`` (from :func:`to_hf_config_kwargs`) as this ``transformers``' ``LlamaConfig`` takes
    RoPE: ``rope_parameters`` (transformers 5), or ``rope_theta`` and ``rope_scaling`` (4, whose
    ``LlamaConfig`` would keep ``rope_parameters`` as an unused attribute and default the others)."""
    import inspect

    from transformers import LlamaConfig

    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        return kwargs
    out = dict(kwargs)
    return {**out, **to_transformers4_rope(out.pop("rope_parameters"))}


def to_hf_config_kwargs(m: ModelConfig) -> dict:
    """The HF Llama config describing the same model, RoPE as transformers 5's ``rope_parameters``
    (pass it through :func:`to_llama_config_kwargs` for ``LlamaConfig`` itself)."""
    return {
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "max_position_embeddings": m.seq_length,
        "rms_norm_eps": m.norm_epsilon,
        "rope_parameters": to_hf_rope_parameters(m),
        "tie_word_embeddings": m.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": m.init_method_std,
    }
