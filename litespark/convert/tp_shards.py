"""Split a Litespark (Megatron) state dict into tensor-parallel shards and merge them back.

Megatron's rules, by parameter: the vocabulary-parallel embedding and output layer are split along
rows; column-parallel linears (QKV, FC1) along rows, row-parallel linears (output projection, FC2)
along columns; norm weights are replicated.  Two fused layouts need care:

* ``linear_qkv`` is grouped by KV head, so a plain row split hands each rank whole groups
  (``num_query_groups`` is a multiple of TP by validation);
* ``linear_fc1`` is ``[gate; up]`` on *every* rank, so rank r holds ``[gate_r; up_r]``, not a
  contiguous row block of the TP=1 tensor.

Transformer Engine's ``_extra_state`` entries (FP8 scaling metadata) are not weights and are dropped.
"""

from __future__ import annotations

import torch

from litespark.config import ConfigError

_COLUMN = (".linear_qkv.weight", "embedding.word_embeddings.weight", "output_layer.weight")
_ROW = (".linear_proj.weight", ".linear_fc2.weight")
_REPLICATED = ("layer_norm_weight", "final_layernorm.weight")
_GATED = ".linear_fc1.weight"


def is_weight(name: str) -> bool:
    """True for real parameters (not TE's ``_extra_state``)."""
    return not name.endswith("_extra_state")


def _kind(name: str) -> str:
    if name.endswith(_GATED):
        return "gated"
    if name.endswith(_REPLICATED):
        return "replicated"
    if name.endswith(_COLUMN):
        return "column"
    if name.endswith(_ROW):
        return "row"
    raise ConfigError(f"checkpoint: unexpected tensor {name!r} (not a Litespark Llama parameter)")


def merge_tensor(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """The TP=1 tensor ``name`` from its per-rank shards (rank order)."""
    kind = _kind(name)
    if len(shards) == 1:
        return shards[0]
    if kind == "replicated":
        return shards[0]
    if kind == "column":
        return torch.cat(shards, dim=0)
    if kind == "row":
        return torch.cat(shards, dim=1)
    gates, ups = zip(*(torch.chunk(s, 2, dim=0) for s in shards))
    return torch.cat([*gates, *ups], dim=0)


def split_tensor(name: str, full: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Per-rank shards of the TP=1 tensor ``name`` (contiguous copies)."""
    kind = _kind(name)
    if tp == 1 or kind == "replicated":
        return [full.contiguous() for _ in range(tp)] if tp > 1 else [full]
    if kind == "column":
        return [t.contiguous() for t in torch.chunk(full, tp, dim=0)]
    if kind == "row":
        return [t.contiguous() for t in torch.chunk(full, tp, dim=1)]
    gate, up = torch.chunk(full, 2, dim=0)
    return [torch.cat([g, u], dim=0) for g, u in zip(torch.chunk(gate, tp, dim=0), torch.chunk(up, tp, dim=0))]


def merge_state_dicts(shards: list[dict[str, torch.Tensor]], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """TP=1 state dict (only ``names`` when given) from the per-rank state dicts."""
    keys = [k for k in shards[0] if is_weight(k)] if names is None else names
    out = {}
    for key in keys:
        missing = [r for r, sd in enumerate(shards) if key not in sd]
        if missing:
            raise ConfigError(f"checkpoint: tensor {key!r} missing from TP rank {missing[0]}")
        out[key] = merge_tensor(key, [sd[key] for sd in shards])
    return out


def split_state_dict(full: dict[str, torch.Tensor], tp: int) -> list[dict[str, torch.Tensor]]:
    """Per-rank state dicts of a TP=1 state dict."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for key, tensor in full.items():
        for r, shard in enumerate(split_tensor(key, tensor, tp)):
            out[r][key] = shard
    return out
