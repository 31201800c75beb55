"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

Fills the ``core_attention`` slot of Megatron's ``SelfAttention`` in the torch backend.  Megatron's
own local ``DotProductAttention`` materialises the b x heads x s x s score tensor (baddbmm, masked
softmax, bmm), copies K and V once per query head for GQA, and takes a CUDA-only causal mask and
memory buffer.  SDPA instead dispatches to a fused kernel (flash or memory-efficient attention on
CUDA, a fused flash kernel on CPU) that never stores the score matrix, applies the causal mask
implicitly and reads grouped K/V directly.  The function computed is the same softmax attention.

Packed rows (Megatron's ``thd`` layout, ``PackedSeqParams`` with ``cu_seqlens``) run one causal
attention per document, so no token attends across a document boundary
(:mod:`litespark.training.packing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    """Drop-in ``core_attention``: [s, b, heads, d] query/key/value in, [s, b, heads * d] out."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism; use the 'te' backend")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale  # None: SDPA uses 1/sqrt(head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support attention bias")
        mask_type = attn_mask_type or self.attn_mask_type
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params, mask_type)
        sq, b, heads, d = query.shape
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if attention_mask is not None:
            # Megatron masks are True where attention is NOT allowed; SDPA's are the opposite.
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=~attention_mask,
                dropout_p=self._dropout(),
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != heads,
            )
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=mask_type == AttnMaskType.causal,
                dropout_p=self._dropout(),
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != heads,
            )
        # [b, n, s, d] -> [s, b, n * d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * d)

    def _packed(self, query, key, value, params, mask_type: AttnMaskType) -> torch.Tensor:
        """``thd`` query/key/value ([t, heads, d]): each document of ``cu_seqlens`` attends causally
        to itself only; [t, heads * d] out."""
        if params.qkv_format != "thd":
            raise ValueError(f"SDPAttention supports packed sequences in the thd format only, not {params.qkv_format}")
        if mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"packed sequences need a causal mask, not {mask_type}")
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_kv = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if not torch.equal(cu_q.cpu(), cu_kv.cpu()) or int(cu_q[-1]) != query.shape[0]:
            raise ValueError(f"cu_seqlens {cu_q.tolist()} do not describe the {query.shape[0]} packed tokens")
        t, heads, d = query.shape
        lengths = (cu_q[1:] - cu_q[:-1]).tolist()
        outs = []
        for q, k, v in zip(*(x.split(lengths) for x in (query, key, value))):
            # [s, n, d] -> [1, n, s, d]
            q, k, v = (x.permute(1, 0, 2)[None] for x in (q, k, v))
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=True,
                dropout_p=self._dropout(),
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != heads,
            )
            outs.append(out[0].permute(1, 0, 2))
        return torch.cat(outs).reshape(t, heads * d)

    def _dropout(self) -> float:
        return self.dropout_p if self.training else 0.0
